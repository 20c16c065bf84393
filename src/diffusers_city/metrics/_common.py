"""Input checks shared by the metric functions."""

from __future__ import annotations

import numpy as np
import torch


def _real_tensor(name: str, x, what: str = "array") -> torch.Tensor:
    """``x`` (a numpy array or torch tensor of real numbers) as a torch tensor."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{name} must be a numeric {what}, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    return x


def as_points(name: str, x, *, dtype: torch.dtype = torch.float64, allow_batch: bool = False) -> torch.Tensor:
    """A finite, non-empty ``[N, 3]`` (or ``[B, N, 3]`` with ``allow_batch``) float tensor."""
    x = _real_tensor(name, x)
    ndims = (2, 3) if allow_batch else (2,)
    if x.ndim not in ndims or x.shape[-1] != 3:
        shape = "[N, 3] or [B, N, 3]" if allow_batch else "[N, 3]"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} has no points")
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf coordinates")
    return x


def as_features(name: str, x, *, min_rows: int = 1) -> torch.Tensor:
    """A finite float64 ``[N, D]`` tensor with at least ``min_rows`` rows (a sample set of feature vectors)."""
    x = _real_tensor(name, x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, D] with D >= 1, got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {x.shape[0]}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def as_images(name: str, x) -> torch.Tensor:
    """``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]`` -> float64 ``[B, C, H, W]``."""
    x = _real_tensor(name, x, "image")
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"{name} must be [H, W], [H, W, C] or [B, H, W, C], got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x.permute(0, 3, 1, 2)
