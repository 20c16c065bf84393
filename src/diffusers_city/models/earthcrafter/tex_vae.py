"""EarthCrafter TexVAE: per-voxel view features <-> an 8-channel texture latent per voxel ->
one 2D Gaussian splat (surfel) per voxel.

REFERENCE.md (EarthCrafter, "TexVAE"): tube-shaped, no spatial downsampling (channel compression
only; downsampling the texture lost ~3 dB PSNR in the paper's ablation), 12 sparse Swin layers in
encoder and decoder, per-voxel input = features aggregated from the views + RGB + normal, decoded
to 2DGS parameters (offset, scale, opacity, rotation, colour), trained through the rasterizer with
L1 + SSIM (+ LPIPS) on rendered views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ...render import Gaussians
from ...sparse import SparseTensor
from ..shared.distributions import AutoencoderOutput, DiagonalGaussianDistribution
from ._vae_layers import CoordinateEmbedding, check_voxels, swin_stack

# Columns of the decoded per-voxel parameters (raw, activated by ``to_gaussians``).
PARAM_LAYOUT = {
    "offset": slice(0, 3),
    "scale": slice(3, 5),
    "opacity": slice(5, 6),
    "rotation": slice(6, 10),
    "color": slice(10, 13),
}
NUM_PARAMS = 13


@dataclass
class TexDecoderOutput(BaseOutput):
    """What ``decode`` returns (diffusers' ``DecoderOutput``): ``sample``, the raw splat parameters
    ``[N, 13]`` on the input voxels (layout ``PARAM_LAYOUT``)."""

    sample: SparseTensor


class EarthCrafterTexVAE(ModelMixin, ConfigMixin):
    """Texture VAE of EarthCrafter: per-voxel features -> latent per voxel -> 2DGS per voxel.

    Encoder and decoder are the same tube: a linear embedding plus a learned positional encoding of
    the voxel coordinates, ``num_layers`` Swin transformer layers (window ``window_size``, every
    second shifted) at the full resolution, a LayerNorm and a linear head (``2 * latent_channels``
    for the posterior; ``13`` splat parameters for the decoder). The voxels never change.

    ``to_gaussians(params)`` activates the parameters of one batch item into world-space 2D
    Gaussians: mean = voxel centre + ``max_offset * tanh(offset)`` voxels, the two in-plane scales
    ``max_scale * sigmoid(.)`` voxels (``init_scale`` voxels at a zero output), the third
    ``flat_scale`` voxels (a flat splat for 3DGS viewers; 2DGS ignores it), opacity sigmoid,
    rotation the normalised quaternion ``(1, 0, 0, 0) + rotation`` (identity at zero), colour
    sigmoid. Raw zeros thus give a grey, half-opaque, half-voxel surfel at the voxel centre.

    Args:
        resolution: tile edge L in voxels (input coordinates must lie in ``[0, L)``).
        in_channels: per-voxel input features (default 10: mean RGB 3, RGB std 3, normal 3,
            visibility 1; the layout of ``data``'s view aggregation).
        latent_channels: texture latent channels per voxel (paper: 8).
        model_channels: transformer width.
        num_layers: Swin layers in the encoder and in the decoder (paper: 12).
        attention_head_dim: channels per attention head.
        window_size: Swin window edge in voxels.
        num_frequencies: octaves of the coordinate positional encoding.
        max_offset, max_scale, init_scale, flat_scale: splat bounds in voxels (see above).
        scaling_factor: 1 / std of the latent: flows run on ``z * scaling_factor``.

    Presets (``pipelines/earthcrafter/presets``), the defaults being ``small`` (L = 64):

    - tiny: ``resolution=16, model_channels=32, num_layers=2, attention_head_dim=16, window_size=4,
      num_frequencies=4``
    - paper: ``resolution=256, model_channels=384, num_layers=12, attention_head_dim=64,
      window_size=8, num_frequencies=8``
    """

    # the submodules of ``encode``: frozen to fine-tune the decoder without moving the latent space
    encoder_modules = ("encoder_in", "encoder_pos", "encoder_blocks", "encoder_norm", "quant")

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        in_channels: int = 10,
        latent_channels: int = 8,
        model_channels: int = 96,
        num_layers: int = 6,
        attention_head_dim: int = 32,
        window_size: int = 8,
        num_frequencies: int = 6,
        max_offset: float = 1.0,
        max_scale: float = 2.0,
        init_scale: float = 0.5,
        flat_scale: float = 1e-3,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 < init_scale < max_scale:
            raise ValueError(f"need 0 < init_scale < max_scale, got {init_scale}, {max_scale}")
        if max_offset <= 0 or flat_scale <= 0:
            raise ValueError(f"max_offset and flat_scale must be positive, got {max_offset}, {flat_scale}")
        self.encoder_in = nn.Linear(in_channels, model_channels)
        self.encoder_pos = CoordinateEmbedding(model_channels, resolution, num_frequencies)
        self.encoder_blocks = swin_stack(model_channels, num_layers, attention_head_dim, window_size)
        self.encoder_norm = nn.LayerNorm(model_channels)
        self.quant = nn.Linear(model_channels, 2 * latent_channels)
        self.decoder_in = nn.Linear(latent_channels, model_channels)
        self.decoder_pos = CoordinateEmbedding(model_channels, resolution, num_frequencies)
        self.decoder_blocks = swin_stack(model_channels, num_layers, attention_head_dim, window_size)
        self.decoder_norm = nn.LayerNorm(model_channels)
        self.head = nn.Linear(model_channels, NUM_PARAMS)

    @staticmethod
    def _tube(x: SparseTensor, embed: nn.Module, pos: nn.Module, blocks: nn.ModuleList, norm: nn.Module) -> torch.Tensor:
        h = pos(x.replace(embed(x.feats)))
        for block in blocks:
            h = block(h)
        return norm(h.feats)

    @apply_forward_hook
    def encode(self, x: SparseTensor, return_dict: bool = True) -> AutoencoderOutput | tuple:
        """Posterior over the per-voxel latent of ``x`` (features ``[N, in_channels]``), same voxels."""
        check_voxels("x", x, self.config.resolution, self.config.in_channels)
        h = self._tube(x, self.encoder_in, self.encoder_pos, self.encoder_blocks, self.encoder_norm)
        posterior = DiagonalGaussianDistribution(x.replace(self.quant(h)))
        return AutoencoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, z: SparseTensor, return_dict: bool = True) -> TexDecoderOutput | tuple[SparseTensor]:
        """Latent (unscaled: ``latents / scaling_factor``) -> raw splat parameters per voxel."""
        check_voxels("z", z, self.config.resolution, self.config.latent_channels)
        h = self._tube(z, self.decoder_in, self.decoder_pos, self.decoder_blocks, self.decoder_norm)
        params = z.replace(self.head(h))
        return TexDecoderOutput(sample=params) if return_dict else (params,)

    def forward(
        self,
        x: SparseTensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> TexDecoderOutput | tuple[SparseTensor]:
        """Encode and decode ``x``."""
        posterior = self.encode(x).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def to_gaussians(self, params: SparseTensor) -> Gaussians:
        """World-space 2D Gaussians, one per voxel in row order, of one batch item's decoded
        ``params`` (iterate a batch: ``[vae.to_gaussians(p) for p in params]``). Differentiable."""
        if not isinstance(params, SparseTensor) or params.num_channels != NUM_PARAMS:
            raise ValueError(f"params must be a SparseTensor with {NUM_PARAMS} channels (decode's sample)")
        if params.batch_size != 1:
            raise ValueError(f"to_gaussians takes one batch item, got batch_size {params.batch_size}")
        cfg, p, v = self.config, params.feats, params.voxel_size
        part = {name: p[:, cols] for name, cols in PARAM_LAYOUT.items()}
        means = params.world_positions().to(p.dtype) + cfg.max_offset * v * torch.tanh(part["offset"])
        bias = math.log(cfg.init_scale / (cfg.max_scale - cfg.init_scale))  # sigmoid(bias) * max = init
        planar = cfg.max_scale * v * torch.sigmoid(part["scale"] + bias)
        scales = torch.cat([planar, planar.new_full((len(p), 1), cfg.flat_scale * v)], 1)
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=p.dtype, device=p.device)
        quats = part["rotation"] + identity
        quats = torch.where(quats.norm(dim=1, keepdim=True) > 1e-6, F.normalize(quats, dim=1, eps=1e-6), identity)
        return Gaussians(
            means=means,
            quats=quats,
            scales=scales,
            opacities=torch.sigmoid(part["opacity"][:, 0]),
            colors=torch.sigmoid(part["color"]),
        )
