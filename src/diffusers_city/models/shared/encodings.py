"""The sin/cos positional encoding of coordinates shared by GaussianCity's point decoder and
EarthCrafter's VAEs."""

from __future__ import annotations

import math

import torch

__all__ = ["sincos_encoding"]


def sincos_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k < num_freqs``, per value of ``x [N, D]``
    (GaussianCity Eq. 12, NeRF's encoding).

    Returns ``[N, D * (1 + 2 * num_freqs)]``.
    """
    if num_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None] * freqs
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)
