"""Sat2City condition encoder c(P_h) for the dense latent diffusion (supplementary 6.2).

A point encoder maps the height-map point cloud P_h to voxel indices, lifts each point (its
offset inside the voxel and its normalised height) through residual MLP blocks and max-pools
per voxel. Multi-scale sparse convolutions then extract hierarchical features; every scale is
projected and pooled onto the dense latent grid, summed, and refined by a dense conv, giving a
condition volume that is concatenated with the noisy dense latent.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ...sparse import SparseTensor
from ...sparse.kernel_map import unique_coords
from ..shared.sparse_vae import SparseEncoder, scatter_to_dense


class _ResidualMLP(nn.Module):
    """Point-wise ResNet block (LayerNorm, SiLU, Linear) x 2 with a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(channels),
            nn.SiLU(),
            nn.Linear(channels, channels),
            nn.LayerNorm(channels),
            nn.SiLU(),
            nn.Linear(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class HeightFieldEncoder(ModelMixin, ConfigMixin):
    """Point encoder + multi-scale sparse-conv condition encoder (Sat2City supplementary 6.2).

    Args:
        point_channels: width of the per-point ResNet MLP.
        num_point_blocks: residual MLP blocks before the per-voxel max-pool.
        encoder_channels: sparse encoder widths, fine to coarse; its downsampling must equal the
            dense VAE's so that the coarsest scale lands on the dense latent grid.
        condition_channels: channels of the condition volume.
        layers_per_block: residual sparse blocks per scale.
        voxel_size: metres per finest voxel (the dense VAE's).
        point_voxel_stride: P_h is voxelised at ``voxel_size * point_voxel_stride``.
        max_height_m: heights are normalised by this (the vertical extent of the grid).
    """

    @register_to_config
    def __init__(
        self,
        point_channels: int = 32,
        num_point_blocks: int = 2,
        encoder_channels: tuple[int, ...] = (16, 32, 64, 64),
        condition_channels: int = 16,
        layers_per_block: int = 1,
        voxel_size: float = 2.34375,
        point_voxel_stride: int = 1,
        max_height_m: float = 75.0,
    ) -> None:
        super().__init__()
        self.point_in = nn.Linear(4, point_channels)
        self.point_blocks = nn.Sequential(*[_ResidualMLP(point_channels) for _ in range(num_point_blocks)])
        self.encoder = SparseEncoder(point_channels, tuple(encoder_channels), layers_per_block)
        self.scale_proj = nn.ModuleList(nn.Linear(ch, condition_channels) for ch in encoder_channels)
        self.conv_out = nn.Sequential(nn.SiLU(), nn.Conv3d(condition_channels, condition_channels, kernel_size=3, padding=1))

    @property
    def total_stride(self) -> int:
        """Finest-voxel downsampling from the fine grid to the dense latent grid."""
        return self.config.point_voxel_stride * 2 ** (len(self.config.encoder_channels) - 1)

    def voxelize_points(self, points: torch.Tensor, batch_idx: torch.Tensor, batch_size: int) -> SparseTensor:
        """Point encoder: P_h [M, 3] (crop frame, metres) -> max-pooled features per voxel."""
        v = self.config.voxel_size * self.config.point_voxel_stride
        scaled = points / v
        idx = torch.floor(scaled).long()
        local = scaled - idx - 0.5
        height = points[:, 2:3] / self.config.max_height_m
        h = self.point_blocks(self.point_in(torch.cat([local, height], 1).to(self.dtype)))
        unique, inverse = unique_coords(torch.cat([batch_idx.long().unsqueeze(1), idx], 1), batch_size)
        pooled = h.new_full((unique.shape[0], h.shape[1]), float("-inf"))
        pooled = pooled.scatter_reduce(0, inverse.unsqueeze(1).expand_as(h), h, reduce="amax", include_self=True)
        stride = self.config.point_voxel_stride
        return SparseTensor(pooled, unique, voxel_size=v, origin=(v / 2,) * 3, stride=stride, batch_size=batch_size)

    def forward(
        self,
        points: torch.Tensor,
        batch_idx: torch.Tensor,
        latent_shape: tuple[int, int, int],
        batch_size: int,
    ) -> torch.Tensor:
        """Condition volume ``[B, condition_channels, *latent_shape]`` from P_h in the crop frame."""
        x = self.voxelize_points(points, batch_idx, batch_size)
        scales = self.encoder(x, return_all=True)
        cond = None
        for k, (scale, proj) in enumerate(zip(scales, self.scale_proj)):
            factor = 2 ** (len(scales) - 1 - k)
            coords = scale.coords.clone()
            coords[:, 1:] = torch.div(coords[:, 1:], factor, rounding_mode="floor")
            pooled = scatter_to_dense(
                SparseTensor(proj(scale.feats), coords, batch_size=batch_size, validate=False), latent_shape, reduce="mean"
            )
            cond = pooled if cond is None else cond + pooled
        return self.conv_out(cond)
