"""Sat2City dense geometry VAE (E_d, D_d): the "dense neck" of the triplet bottleneck (Sec. 3.1).

The sparse-conv encoder downsamples the voxel grid G (features: normals A_N); its bottleneck is
densified, i.e. scattered into the full latent grid so that empty space is explicit, and a dense
conv predicts the posterior of the dense latent X_D. The decoder D_d starts from every latent
voxel and runs the structure-prediction backbone (subdivide, predict occupancy, prune) back to
the input resolution, with a normals head (supplementary 6.1: 20 BCE + 50 L1 + 0.03 KL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ...sparse import SparseTensor
from ..shared.distributions import AutoencoderOutput, DiagonalGaussianDistribution
from ..shared.sparse_vae import SparseEncoder, StructureDecoder, StructureDecoding, full_grid, level_geometry, scatter_to_dense
from .legacy import LegacyScalingMixin


@dataclass
class Sat2CityDenseVAEOutput(BaseOutput):
    """``decoding``: the structure decoder's result; ``latent_dist``: the posterior of X_D;
    ``latent``: the decoded X_D [B, C, X, Y, Z] (a posterior sample or its mean)."""

    decoding: StructureDecoding
    latent_dist: DiagonalGaussianDistribution
    latent: torch.Tensor


class Sat2CityDenseVAE(LegacyScalingMixin, ModelMixin, ConfigMixin):
    """Dense geometry VAE of Sat2City (Sec. 3.1, Fig. 4 "Dense Neck").

    Args:
        in_channels: per-voxel input features (3: normals); a constant occupancy channel is added.
        latent_channels: channels of X_D.
        encoder_channels: encoder widths, fine to coarse; ``len - 1`` stride-2 downsamplings.
        decoder_channels: decoder widths, coarse to fine; must have as many levels.
        layers_per_block: residual blocks per level.
        grid_size: voxels of the training crop (x, y, z); the latent grid is this / 2^(levels-1).
        voxel_size: metres per finest voxel.
        scaling_factor: 1 / the std of X_D measured on training data: diffusion runs on
            ``z * scaling_factor`` and ``decode`` takes ``latents / scaling_factor`` (diffusers' convention).
    """

    _legacy_names = ("DenseGeometryVAE",)
    _legacy_scaling_keys = ("scaling_factor",)

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        encoder_channels: tuple[int, ...] = (16, 32, 64, 64),
        decoder_channels: tuple[int, ...] = (64, 64, 32, 16),
        layers_per_block: int = 1,
        grid_size: tuple[int, int, int] = (128, 128, 32),
        voxel_size: float = 2.34375,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != len(decoder_channels):
            raise ValueError("encoder_channels and decoder_channels must have the same number of levels")
        factor = self.downsample_factor
        if any(int(g) % factor for g in grid_size):
            raise ValueError(f"grid_size {tuple(grid_size)} must be divisible by the downsampling factor {factor}")
        self.encoder = SparseEncoder(in_channels + 1, tuple(encoder_channels), layers_per_block)
        self.quant_conv = nn.Conv3d(encoder_channels[-1], 2 * latent_channels, kernel_size=3, padding=1)
        self.decoder = StructureDecoder(latent_channels, tuple(decoder_channels), 3, layers_per_block)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.encoder_channels) - 1)

    @property
    def fine_origin(self) -> tuple[float, float, float]:
        """Centre of voxel (0, 0, 0): the crop starts at world 0 (Sat2City's o_0 = v_0 / 2)."""
        return (self.config.voxel_size / 2,) * 3

    def latent_shape(self, grid_size: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
        grid = grid_size if grid_size is not None else self.config.grid_size
        return tuple(int(g) // self.downsample_factor for g in grid)

    @apply_forward_hook
    def encode(
        self, x: SparseTensor, grid_size: tuple[int, int, int] | None = None, return_dict: bool = True
    ) -> AutoencoderOutput | tuple[DiagonalGaussianDistribution]:
        """Posterior of X_D (``latent_dist``, over ``[B, C, X/f, Y/f, Z/f]``); ``x.feats`` are normals."""
        ones = x.feats.new_ones(x.num_voxels, 1)
        h = self.encoder(x.replace(torch.cat([x.feats, ones], 1)))
        dense = scatter_to_dense(h, self.latent_shape(grid_size))
        posterior = DiagonalGaussianDistribution(self.quant_conv(dense))
        return AutoencoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, target: SparseTensor | None = None, return_dict: bool = True
    ) -> StructureDecoding | tuple[SparseTensor]:
        """Decode X_D ``[B, C, X, Y, Z]`` (unscaled: ``latents / scaling_factor``) into voxels +
        normals (``.sample``), teacher-forced when ``target`` is given."""
        voxel_size, origin = level_geometry(self.config.voxel_size, self.fine_origin, self.downsample_factor)
        decoding = self.decoder(full_grid(z, voxel_size, origin, self.downsample_factor), target=target)
        return decoding if return_dict else (decoding.sample,)

    def forward(
        self, x: SparseTensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> Sat2CityDenseVAEOutput:
        """Encode, sample and decode teacher-forced on ``x`` (the training pass)."""
        posterior = self.encode(x).latent_dist
        latent = posterior.sample(generator) if sample_posterior else posterior.mode()
        return Sat2CityDenseVAEOutput(decoding=self.decode(latent, target=x), latent_dist=posterior, latent=latent)
