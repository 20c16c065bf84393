"""Layers shared by EarthCrafter's two VAEs: input checks, a coordinate positional encoding and a
stack of sparse Swin transformer layers (REFERENCE.md, EarthCrafter: "sparse Swin (window)
attention")."""

from __future__ import annotations

import torch
from torch import nn

from ...sparse import SparseTensor
from ...sparse.attention import SparseTransformerBlock
from ..shared.encodings import sincos_encoding


def positional_channels(num_frequencies: int) -> int:
    """Width of :func:`coord_encoding`: the normalised xyz and a sine and cosine per axis and frequency."""
    return 3 + 6 * num_frequencies


def coord_encoding(coords: torch.Tensor, grid: int, num_frequencies: int, dtype: torch.dtype) -> torch.Tensor:
    """Positional encoding ``[N, 3 + 6F]`` of voxel coordinates ``[N, 4]`` on a ``grid^3`` level:
    the voxel centre ``p = (xyz + 0.5) / grid`` in 0..1 of the tile and ``sin, cos(2^k pi p)``,
    ``k < F``. The same point of the tile gets the same code on every level."""
    return sincos_encoding((coords[:, 1:].to(dtype) + 0.5) / grid, num_frequencies)


def swin_stack(dim: int, num_layers: int, head_dim: int, window_size: int) -> nn.ModuleList:
    """``num_layers`` pre-LN transformer layers with window attention in ``window_size^3`` windows,
    every second one shifted by half a window (Swin). A window as large as the grid is full attention."""
    if dim % head_dim:
        raise ValueError(f"channels ({dim}) must be a multiple of attention_head_dim ({head_dim})")
    return nn.ModuleList(
        SparseTransformerBlock(dim, dim // head_dim, attention="window", window_size=window_size, shift=i % 2 == 1)
        for i in range(num_layers)
    )


def check_voxels(name: str, x: SparseTensor, grid: int, channels: int | None = None) -> None:
    """``ValueError`` naming the problem unless ``x`` is a non-empty SparseTensor with coordinates in
    ``[0, grid)`` (and ``channels`` finite feature channels, when given)."""
    if not isinstance(x, SparseTensor):
        raise ValueError(f"{name} must be a SparseTensor, got {type(x).__name__}")
    if x.num_voxels == 0:
        raise ValueError(f"{name} is empty (no voxels)")
    if channels is not None and x.num_channels != channels:
        raise ValueError(f"{name} must have {channels} feature channels, got {x.num_channels}")
    xyz = x.coords[:, 1:]
    lo, hi = int(xyz.min()), int(xyz.max())
    if lo < 0 or hi >= grid:
        raise ValueError(f"{name} has voxel coordinates in [{lo}, {hi}], outside the grid [0, {grid})")
    if channels is not None and not bool(torch.isfinite(x.feats).all()):
        raise ValueError(f"{name} features contain NaN or Inf")


class CoordinateEmbedding(nn.Module):
    """Adds a learned projection of :func:`coord_encoding` to the features of a ``grid^3`` level, so
    that window attention (blind to where a voxel sits in its window) sees positions."""

    def __init__(self, dim: int, grid: int, num_frequencies: int) -> None:
        super().__init__()
        self.grid = grid
        self.num_frequencies = num_frequencies
        self.proj = nn.Linear(positional_channels(num_frequencies), dim)

    def forward(self, x: SparseTensor) -> SparseTensor:
        pe = coord_encoding(x.coords, self.grid, self.num_frequencies, x.feats.dtype)
        return x.replace(x.feats + self.proj(pe))
