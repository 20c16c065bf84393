"""Building blocks shared by GaussianCity's models (Sec. 3.4): sin/cos positional encoding,
StyleGAN2 modulated linear layers and mean pooling of points into coarser cells."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..shared.encodings import sincos_encoding

__all__ = ["ModulatedLinear", "leaky_relu", "pool_features", "sincos_encoding"]


class ModulatedLinear(nn.Module):
    """StyleGAN2 modulated linear layer (Karras et al. 2020): the weight is scaled per input
    channel by an affine map of the style code, then (optionally) demodulated per output.

    Styles come per batch item (``styles [B, style_dim]``) and points pick theirs with
    ``batch_index [N]``; modulation is applied to the activations, so no per-point weight is built.
    """

    def __init__(self, in_features: int, out_features: int, style_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.affine = nn.Linear(style_dim, in_features)
        nn.init.ones_(self.affine.bias)  # StyleGAN2: styles start around 1
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, styles: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        s = self.affine(styles)  # [B, in]
        out = (x * s[batch_index]) @ self.weight.T
        if self.demodulate:
            demod = torch.rsqrt((s * s) @ (self.weight * self.weight).T + 1e-8)  # [B, out]
            out = out * demod[batch_index]
        return out + self.bias


def pool_features(feats: torch.Tensor, parent: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``feats [N, C]`` per cell: ``[M, C]`` (``M = len(counts)``), the points of cell ``m``
    being those with ``parent == m`` and ``counts[m]`` their number (the pooling of PTv3's encoder)."""
    pooled = torch.zeros(counts.shape[0], feats.shape[1], device=feats.device, dtype=feats.dtype)
    pooled.index_add_(0, parent, feats)
    return pooled / counts.clamp(min=1).to(feats.dtype)[:, None]


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU 0.2, the activation of the modulated MLP."""
    return F.leaky_relu(x, 0.2)
