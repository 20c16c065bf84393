"""Image metrics for rendered views: PSNR and Gaussian-window SSIM (Wang et al. 2004), as
reported for GaussianCity / EarthCrafter renders."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._common import as_images

__all__ = ["psnr", "ssim"]


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = as_images("pred", pred), as_images("target", target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)} (as [B, C, H, W])")
    return p, t.to(p.device)


def _reduce(values: torch.Tensor, reduction: str):
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(pred, target, *, data_range: float = 1.0, reduction: Literal["mean", "none"] = "mean"):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` per image, over all
    pixels and channels; ``reduction="none"`` returns one value per image (``inf`` when equal)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    p, t = _pair(pred, target)
    mse = (p - t).square().mean(dim=(1, 2, 3))
    return _reduce(10 * torch.log10(data_range**2 / mse), reduction)


def _gaussian_kernel(sigma: float, truncate: float) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(
    pred,
    target,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Literal["mean", "none"] = "mean",
):
    """Structural similarity with an 11x11 Gaussian window (``sigma=1.5``, truncated at 3.5
    sigma), population statistics, averaged over the valid (unpadded) window positions and the
    channels: the settings of ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)``, which it matches (tested)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    p, t = _pair(pred, target)
    k = _gaussian_kernel(sigma, 3.5).to(p.device)
    if p.shape[-1] < len(k) or p.shape[-2] < len(k):
        raise ValueError(f"images must be at least {len(k)}x{len(k)} pixels for SSIM, got {tuple(p.shape[-2:])}")
    b, c = p.shape[:2]

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(b * c, 1, *x.shape[-2:])
        x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        return x.reshape(b, c, *x.shape[-2:])

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return _reduce(s.mean(dim=(1, 2, 3)), reduction)
