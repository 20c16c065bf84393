"""EarthCrafter StructVAE: surface voxels at L^3 <-> a 32-channel structure latent on (L/8)^3.

REFERENCE.md (EarthCrafter, "StructVAE"): the input is the voxel coordinates with a positional
encoding; each down step is transformer layers (sparse Swin window attention) then one stride-2
sparse convolution; full attention only at (L/8)^3; the decoder upsamples by sparse pixel-shuffle
(each coarse voxel -> its 8 children, "pseudo-sparse to sparse"), classifies the children's
occupancy and drops the empty ones at every level; the objective is XCube's (occupancy BCE per
level + KL). Reported voxel accuracy: 97.1%.

The decoder is the shared :class:`~diffusers_city.models.shared.sparse_vae.StructureDecoder`
(subdivide -> occupancy head -> prune -> refine) with transformer layers as its refinement.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ...sparse import SparseTensor
from ...sparse.nn import SparseConv3d
from ...sparse.tensor import take_rows
from ..shared.distributions import AutoencoderOutput, DiagonalGaussianDistribution
from ..shared.sparse_vae import StructureDecoder, StructureDecoding
from ._vae_layers import CoordinateEmbedding, check_voxels, coord_encoding, positional_channels, swin_stack

DOWNSAMPLE_FACTOR = 8


class EarthCrafterStructVAE(ModelMixin, ConfigMixin):
    """Structure VAE of EarthCrafter (voxel coordinates -> latent on the (L/8)^3 grid -> voxels).

    ``encode(x)``: ``x`` holds the surface voxels of a tile, coords ``(b, x, y, z)`` in ``[0, L)``
    (its features are ignored: the input is :func:`coord_encoding` of the coordinates). Per level
    L, L/2, L/4: ``layers_per_block`` Swin layers (window ``window_size``), then a kernel-2 stride-2
    sparse conv; at L/8 ``layers_per_block`` full-attention layers and the posterior's head.

    ``decode(z, target=None)``: a :class:`StructureDecoding` over the levels L/8, L/4, L/2, L; at
    each level (after the first) every kept voxel is split into 8 children, a pointwise head
    gives their occupancy ``logits``, and the kept ones are refined by transformer layers (full
    attention at L/8, Swin above). With ``target`` (training) the ground truth decides what is
    kept (teacher forcing) and ``targets`` holds it per level for the BCE; without, logits > 0.
    ``.sample`` is the kept voxels at L, their feature the occupancy probability.

    Metadata follows docs/design.md: the latent has ``voxel_size * 8`` and the origin of that
    coarser level (the strided convs derive it), the decoder inverts it.

    Args:
        resolution: tile edge L in voxels (a multiple of 8).
        latent_channels: structure latent channels (paper: 32).
        encoder_channels: widths of the levels L, L/2, L/4, L/8.
        decoder_channels: widths of the levels L/8, L/4, L/2, L.
        layers_per_block: transformer layers per level (paper: 4).
        attention_head_dim: channels per attention head.
        window_size: Swin window edge in voxels of each level.
        num_frequencies: octaves of the positional encoding.
        scaling_factor: 1 / std of the latent: flows run on ``z * scaling_factor``.

    Presets (``pipelines/earthcrafter/presets``), the defaults being ``small`` (L = 64):

    - tiny: ``resolution=16, latent_channels=8, encoder_channels=(16, 16, 32, 32),
      decoder_channels=(32, 32, 16, 16), layers_per_block=1, attention_head_dim=16,
      window_size=4, num_frequencies=4``
    - paper: ``resolution=256, latent_channels=32, encoder_channels=(64, 128, 256, 512),
      decoder_channels=(512, 256, 128, 64), layers_per_block=4, attention_head_dim=64,
      window_size=8, num_frequencies=8``
    """

    # the submodules of ``encode``: frozen to fine-tune the decoder without moving the latent space
    encoder_modules = ("embed", "encoder_pos", "encoder_blocks", "downsamplers", "norm_out", "quant")

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        latent_channels: int = 32,
        encoder_channels: tuple[int, ...] = (32, 64, 96, 128),
        decoder_channels: tuple[int, ...] = (128, 96, 64, 32),
        layers_per_block: int = 2,
        attention_head_dim: int = 32,
        window_size: int = 8,
        num_frequencies: int = 6,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        levels = 4  # L, L/2, L/4, L/8
        if resolution % DOWNSAMPLE_FACTOR or resolution <= 0:
            raise ValueError(f"resolution must be a positive multiple of {DOWNSAMPLE_FACTOR}, got {resolution}")
        if len(encoder_channels) != levels or len(decoder_channels) != levels:
            raise ValueError(f"encoder_channels and decoder_channels need {levels} widths (L, L/2, L/4, L/8)")
        grids = [resolution >> i for i in range(levels)]  # fine to coarse
        self.embed = nn.Linear(positional_channels(num_frequencies), encoder_channels[0])
        self.encoder_pos = nn.ModuleList(CoordinateEmbedding(ch, g, num_frequencies) for ch, g in zip(encoder_channels, grids))
        self.encoder_blocks = nn.ModuleList(
            swin_stack(ch, layers_per_block, attention_head_dim, window_size if i + 1 < levels else grids[-1])
            for i, ch in enumerate(encoder_channels)
        )
        self.downsamplers = nn.ModuleList(
            SparseConv3d(a, b, kernel_size=2, stride=2) for a, b in zip(encoder_channels[:-1], encoder_channels[1:])
        )
        self.norm_out = nn.LayerNorm(encoder_channels[-1])
        self.quant = nn.Linear(encoder_channels[-1], 2 * latent_channels)

        def make_blocks(level: int, ch: int) -> list[nn.Module]:
            grid = grids[levels - 1 - level]
            window = grid if level == 0 else window_size
            return [CoordinateEmbedding(ch, grid, num_frequencies), *swin_stack(ch, layers_per_block, attention_head_dim, window)]

        self.decoder = StructureDecoder(latent_channels, tuple(decoder_channels), None, make_blocks=make_blocks)

    @property
    def latent_resolution(self) -> int:
        """Edge of the latent grid, L / 8."""
        return self.config.resolution // DOWNSAMPLE_FACTOR

    @apply_forward_hook
    def encode(self, x: SparseTensor, return_dict: bool = True) -> AutoencoderOutput | tuple:
        """Posterior over the latent on the (L/8)^3 cells that hold voxels of ``x``."""
        L = self.config.resolution
        check_voxels("x", x, L)
        pe = coord_encoding(x.coords, L, self.config.num_frequencies, self.dtype)
        h = x.replace(self.embed(pe))
        for i, blocks in enumerate(self.encoder_blocks):
            h = self.encoder_pos[i](h)
            for block in blocks:
                h = block(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
        posterior = DiagonalGaussianDistribution(h.replace(self.quant(self.norm_out(h.feats))))
        return AutoencoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(
        self, z: SparseTensor, target: SparseTensor | None = None, return_dict: bool = True
    ) -> StructureDecoding | tuple[SparseTensor]:
        """Latent (unscaled: ``latents / scaling_factor``) -> occupied voxels at L (``.sample``),
        per-level ``logits`` / ``candidates`` (and ``targets`` when teacher-forced on ``target``)."""
        check_voxels("z", z, self.latent_resolution, self.config.latent_channels)
        if target is not None:
            check_voxels("target", target, self.config.resolution)
            if target.batch_size != z.batch_size:
                raise ValueError(f"target has batch_size {target.batch_size}, z has {z.batch_size}")
        decoding = self.decoder(z, target=target)
        probability = torch.sigmoid(take_rows(decoding.logits[-1], decoding.struct[-1]))[:, None]
        decoding.sample = decoding.sample.replace(probability)
        return decoding if return_dict else (decoding.sample,)

    def forward(
        self,
        x: SparseTensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> StructureDecoding | tuple[SparseTensor]:
        """Encode and decode ``x`` (free-running, thresholded at probability 0.5)."""
        posterior = self.encode(x).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
