"""Sat2City sparse VAE (E_s, D_s, D_c): the sparse neck and the Re-Hash neck (Sec. 3.1).

One encoder E_s gives the sparse geometry latent X_S (a diagonal Gaussian, with KL) and the
finest appearance latent X_C0 (deterministic, no KL: supplementary 6.1). X_C0's head starts as a
copy of X_S's head when appearance training begins ("X_C0 copied from X_S", dual-stage training).

- D_s decodes X_S into geometry + normals and records its pruning decisions ``struct``.
- Re-Hash: n coarser levels X_C1..X_Cn, voxel size v_k = 2^k v_0, origin o_k = v_k / 2,
  features by trilinear interpolation from level k-1 (Eq. 1).
- D_c decodes every level on the pruned structure given by ``struct`` (coarse levels are first
  trilinearly re-fitted onto the latent voxels), and inverse sampling reads the decoded features
  at query positions (the training points P_C, or the output voxels), concatenates them over
  levels and maps them to RGB with a small MLP (Eqs. 2, 3).
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
from ...sparse.ops import regrid, trilinear_interpolate
from ..shared.distributions import DiagonalGaussianDistribution
from ..shared.sparse_vae import SparseEncoder, StructureDecoder, StructureDecoding, level_geometry
from .legacy import LegacyScalingMixin


@dataclass
class SparseGeometryEncoding(BaseOutput):
    """What ``encode`` returns: ``latent_dist``, the posterior of X_S (diffusers'
    ``AutoencoderKLOutput``), and the appearance latent X_C0, on the same latent voxels."""

    latent_dist: DiagonalGaussianDistribution
    appearance: SparseTensor


class Sat2CitySparseVAE(LegacyScalingMixin, ModelMixin, ConfigMixin):
    """Sparse geometry + Re-Hash appearance VAE of Sat2City (Sec. 3.1, Fig. 4).

    Args:
        in_channels: per-voxel input features (3: normals); a constant occupancy channel is added.
        latent_channels: channels of X_S and of every Re-Hash level X_Ck.
        encoder_channels: encoder widths, fine to coarse (``len - 1`` downsamplings).
        decoder_channels: D_s widths, coarse to fine.
        appearance_decoder_channels: D_c widths, coarse to fine (same number of levels).
        appearance_channels: per-level feature channels D_c outputs for inverse sampling.
        num_rehash_levels: n, the coarser Re-Hash levels above X_C0 (paper: 4).
        color_hidden_channels: hidden width of the inverse-sampling MLP.
        layers_per_block: residual blocks per level.
        grid_size, voxel_size: training crop in voxels and metres per finest voxel.
        scaling_factor, appearance_scaling_factor: 1 / the measured std of X_S and X_C0: diffusion
            runs on ``z * scaling_factor``, the decoders take ``latents / scaling_factor`` (diffusers' convention).
    """

    _legacy_names = ("SparseGeometryVAE",)
    _legacy_scaling_keys = ("scaling_factor", "appearance_scaling_factor")

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 8,
        encoder_channels: tuple[int, ...] = (16, 32, 64),
        decoder_channels: tuple[int, ...] = (64, 32, 16),
        appearance_decoder_channels: tuple[int, ...] = (32, 16, 16),
        appearance_channels: int = 8,
        num_rehash_levels: int = 4,
        color_hidden_channels: int = 64,
        layers_per_block: int = 1,
        grid_size: tuple[int, int, int] = (128, 128, 32),
        voxel_size: float = 2.34375,
        scaling_factor: float = 1.0,
        appearance_scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if not len(encoder_channels) == len(decoder_channels) == len(appearance_decoder_channels):
            raise ValueError("encoder, decoder and appearance decoder channels must have the same number of levels")
        if num_rehash_levels < 0:
            raise ValueError(f"num_rehash_levels must be >= 0, got {num_rehash_levels}")
        self.encoder = SparseEncoder(in_channels + 1, tuple(encoder_channels), layers_per_block)
        self.geometry_head = nn.Linear(encoder_channels[-1], 2 * latent_channels)
        self.appearance_head = nn.Linear(encoder_channels[-1], latent_channels)
        self.geometry_decoder = StructureDecoder(latent_channels, tuple(decoder_channels), 3, layers_per_block)
        self.appearance_decoder = StructureDecoder(
            latent_channels, tuple(appearance_decoder_channels), appearance_channels, layers_per_block, predict_structure=False
        )
        levels = num_rehash_levels + 1
        self.color_mlp = nn.Sequential(
            nn.Linear(levels * appearance_channels, color_hidden_channels),
            nn.SiLU(),
            nn.Linear(color_hidden_channels, color_hidden_channels),
            nn.SiLU(),
            nn.Linear(color_hidden_channels, 3),
        )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.encoder_channels) - 1)

    @property
    def fine_origin(self) -> tuple[float, float, float]:
        return (self.config.voxel_size / 2,) * 3

    @torch.no_grad()
    def init_appearance_from_geometry(self) -> None:
        """Copy X_S's mean head into X_C0's head: the start of appearance training (epoch E)."""
        c = self.config.latent_channels
        self.appearance_head.weight.copy_(self.geometry_head.weight[:c])
        self.appearance_head.bias.copy_(self.geometry_head.bias[:c])

    @apply_forward_hook
    def encode(self, x: SparseTensor, return_dict: bool = True) -> SparseGeometryEncoding | tuple:
        """Posterior of X_S (``latent_dist``) and the appearance latent X_C0 on the stride-f structure of ``x``."""
        ones = x.feats.new_ones(x.num_voxels, 1)
        h = self.encoder(x.replace(torch.cat([x.feats, ones], 1)))
        posterior = DiagonalGaussianDistribution(h.replace(self.geometry_head(h.feats)))
        appearance = h.replace(self.appearance_head(h.feats))
        return SparseGeometryEncoding(latent_dist=posterior, appearance=appearance) if return_dict else (posterior, appearance)

    def latent_structure(self, coords: torch.Tensor, batch_size: int) -> SparseTensor:
        """Empty-featured latent voxels over given latent coordinates (the sparse stages' domain)."""
        voxel_size, origin = level_geometry(self.config.voxel_size, self.fine_origin, self.downsample_factor)
        feats = torch.zeros(coords.shape[0], 1, device=coords.device, dtype=self.dtype)
        return SparseTensor(
            feats, coords, voxel_size=voxel_size, origin=origin, stride=self.downsample_factor, batch_size=batch_size
        )

    @apply_forward_hook
    def decode(
        self, z: SparseTensor, target: SparseTensor | None = None, return_dict: bool = True
    ) -> StructureDecoding | tuple[SparseTensor]:
        """D_s: X_S (unscaled: ``latents / scaling_factor``) -> voxels + normals (``.sample``),
        recording ``struct`` (teacher-forced when ``target`` is given)."""
        decoding = self.geometry_decoder(z, target=target)
        return decoding if return_dict else (decoding.sample,)

    def rehash(self, appearance: SparseTensor) -> list[SparseTensor]:
        """Re-Hash neck: ``[X_C0, X_C1, ..., X_Cn]``, v_k = 2 v_(k-1), features trilinear from k-1 (Eq. 1)."""
        levels = [appearance]
        for _ in range(self.config.num_rehash_levels):
            prev = levels[-1]
            voxel_size, origin = level_geometry(prev.voxel_size, prev.origin, 2)
            levels.append(regrid(prev, voxel_size, origin))
        return levels

    @apply_forward_hook
    def decode_appearance(self, levels: list[SparseTensor], geometry: StructureDecoding) -> SparseTensor:
        """D_c on every Re-Hash level along the geometry decoder's pruning decisions.

        Returns the finest kept voxels with the per-level decoded features concatenated
        (``(n + 1) * appearance_channels`` channels).
        """
        base = levels[0]
        positions = base.world_positions()
        batch_idx = base.coords[:, 0].long()
        outs = []
        for k, level in enumerate(levels):
            feats = level.feats if k == 0 else trilinear_interpolate(level, positions, batch_idx)
            decoded = self.appearance_decoder(base.replace(feats), struct=geometry.struct, structures=geometry.structures)
            outs.append(decoded.sample.feats)
        return geometry.structures[-1].replace(torch.cat(outs, 1))

    @apply_forward_hook
    def inverse_sample(self, features: SparseTensor, points: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
        """Inverse sampling: trilinear features at ``points`` [M, 3] (world), MLP -> RGB in 0..1 (Eqs. 2, 3)."""
        sampled = trilinear_interpolate(features, points, batch_idx)
        return torch.sigmoid(self.color_mlp(sampled))

    def forward(
        self,
        x: SparseTensor,
        points: torch.Tensor | None = None,
        batch_idx: torch.Tensor | None = None,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> Sat2CitySparseVAEOutput:
        """Training pass: teacher-forced geometry; colours at ``points`` when given (appearance phase)."""
        enc = self.encode(x)
        posterior = enc.latent_dist
        geometry = self.decode(posterior.sample(generator) if sample_posterior else posterior.mode(), target=x)
        colors = None
        if points is not None:
            appearance = self.decode_appearance(self.rehash(enc.appearance), geometry)
            colors = self.inverse_sample(appearance, points, batch_idx)
        return Sat2CitySparseVAEOutput(geometry=geometry, encoding=enc, colors=colors)


@dataclass
class Sat2CitySparseVAEOutput(BaseOutput):
    """Teacher-forced geometry decoding, the encoding, and inverse-sampled colours (or None)."""

    geometry: StructureDecoding
    encoding: SparseGeometryEncoding
    colors: torch.Tensor | None
