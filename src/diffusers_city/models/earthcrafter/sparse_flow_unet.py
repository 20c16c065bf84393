"""The sparse U-Net behind EarthCrafter's StructFM stage 2 and TexFM.

Per level: residual blocks with the timestep embedding, each followed (on attention levels) by an
adaLN-Zero DiT block with window ("swin", shifted every other block) or full self-attention and
cross-attention to the condition tokens; stride-2 sparse convolutions down, inverse convolutions
back onto the skip structures. A 3D positional encoding of the voxel centres (finest-voxel units,
the condition tokens' frame) is added after the input convolution so cross-attention knows where
each voxel lies; with ``column_condition`` the condition map's features at each voxel's column are
added there too (:class:`~.layers.ColumnCondition`). The output layer starts at zero: a fresh model
predicts zero velocity.
:class:`SparseFlowModel` is the diffusers model both flows are: its subclasses only build
``self.unet`` from their own config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ...sparse import SparseDiTBlock, SparseTensor
from ...sparse.nn import SparseConv3d, SparseGroupNorm, SparseInverseConv3d, SparseResBlock, SubMConv3d, group_count
from .layers import ColumnCondition, FlowTimestepEmbedding, check_condition, pack_tokens, positional_encoding_3d

ATTENTION = ("window", "full", "none")


class _Unit(nn.Module):
    """A residual block, then (unless ``attention == "none"``) a conditioned DiT block."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        context_dim: int,
        heads: int,
        window: int,
        shift: bool,
        attention: str,
        kernel: int,
    ):
        super().__init__()
        self.res = SparseResBlock(in_ch, out_ch, emb_dim, kernel_size=kernel)
        self.dit = (
            None
            if attention == "none"
            else SparseDiTBlock(out_ch, heads, emb_dim=emb_dim, context_dim=context_dim, window_size=window, shift=shift)
        )

    def forward(self, x: SparseTensor, emb: torch.Tensor, context: torch.Tensor, lengths: torch.Tensor) -> SparseTensor:
        h = self.res(x, emb)
        return h if self.dit is None else self.dit(h, emb, context, lengths)


class SparseFlowUNet(nn.Module):
    """Conditioned sparse U-Net (see the module docstring).

    Args:
        in_channels / out_channels: latent channels in and velocity channels out.
        resolution: grid edge of the input level (window sizes of "full" levels derive from it).
        cell_size: finest voxels per input voxel (positions in the condition's frame).
        block_channels: widths per level (level 0 = the input resolution, halved each level).
        attention: per level, ``"window"``, ``"full"`` or ``"none"``.
        kernel_sizes: per level, the residual blocks' convolution size (1: per-voxel, spatial mixing
            left to attention and the coarser levels; it keeps the finest level cheap on the CPU).
        window_size: window edge (voxels of that level) of ``"window"`` levels.
        layers_per_block: units per level on the way down (one more on the way up).
        num_heads: attention heads.
        context_dim: condition token width.
        column_condition: add the condition map's features at each voxel's column to the input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        cell_size: int,
        block_channels: Sequence[int],
        attention: Sequence[str],
        kernel_sizes: Sequence[int],
        window_size: int,
        layers_per_block: int,
        num_heads: int,
        context_dim: int,
        column_condition: bool,
    ) -> None:
        super().__init__()
        if len(attention) != len(block_channels) or any(a not in ATTENTION for a in attention):
            raise ValueError(f"attention must name one of {ATTENTION} per level ({len(block_channels)}), got {list(attention)}")
        if len(kernel_sizes) != len(block_channels) or any(k not in (1, 3) for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be 1 or 3 per level ({len(block_channels)}), got {list(kernel_sizes)}")
        if resolution % 2 ** (len(block_channels) - 1):
            raise ValueError(f"resolution {resolution} must be divisible by 2^{len(block_channels) - 1} (one halving per level)")
        self.cell_size = cell_size
        self.context_dim = context_dim
        c0 = block_channels[0]
        emb_dim = 4 * c0
        self.time_embed = FlowTimestepEmbedding(c0, emb_dim)
        self.conv_in = SubMConv3d(in_channels, c0)
        self.pos_proj = nn.Linear(c0, c0)
        self.column = ColumnCondition(context_dim, c0, resolution) if column_condition else None

        def unit(level: int, i: int, ch_in: int, ch_out: int) -> _Unit:
            full = attention[level] == "full"
            window = max(resolution >> level, 1) if full else window_size
            shift = (not full) and i % 2 == 1
            return _Unit(ch_in, ch_out, emb_dim, context_dim, num_heads, window, shift, attention[level], kernel_sizes[level])

        self.down, self.downsamplers, skips, ch = nn.ModuleList(), nn.ModuleList(), [], c0
        for level, out_ch in enumerate(block_channels):
            units = nn.ModuleList()
            for i in range(layers_per_block):
                units.append(unit(level, i, ch, out_ch))
                ch = out_ch
            skips.append(ch)
            self.down.append(units)
            if level + 1 < len(block_channels):
                self.downsamplers.append(SparseConv3d(ch, block_channels[level + 1], kernel_size=2, stride=2))
                ch = block_channels[level + 1]
        self.up, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(block_channels))):
            out_ch = block_channels[level]
            units = nn.ModuleList([unit(level, 1, ch + skips.pop(), out_ch)])
            units.extend(unit(level, i, out_ch, out_ch) for i in range(layers_per_block))
            ch = out_ch
            self.up.append(units)
            if level > 0:
                self.upsamplers.append(SparseInverseConv3d(ch, block_channels[level - 1], kernel_size=2, stride=2))
                ch = block_channels[level - 1]
        self.norm_out = SparseGroupNorm(group_count(ch), ch)
        self.conv_out = nn.Linear(ch, out_channels)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        sample: SparseTensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_lengths: torch.Tensor,
        condition_map: torch.Tensor | None,
        model: str,
    ) -> SparseTensor:
        in_ch = self.conv_in.in_channels
        if not isinstance(sample, SparseTensor) or sample.num_channels != in_ch:
            raise ValueError(f"{model}: sample must be a SparseTensor with {in_ch} channels, got {sample!r}")
        b = sample.batch_size
        check_condition(encoder_hidden_states, encoder_lengths, b, self.context_dim, model)
        emb = self.time_embed(timestep, b, sample.device, sample.dtype)
        context = pack_tokens(encoder_hidden_states, encoder_lengths).to(sample.dtype)
        lengths = encoder_lengths.to(sample.device)
        h = self.conv_in(sample)
        pos = positional_encoding_3d((sample.coords[:, 1:].float() + 0.5) * self.cell_size, self.pos_proj.in_features)
        feats = h.feats + self.pos_proj(pos.to(h.dtype))
        if self.column is not None:
            feats = feats + self.column(condition_map, sample.coords, b, model)
        h = h.replace(feats)
        skips = []
        for level, units in enumerate(self.down):
            for u in units:
                h = u(h, emb, context, lengths)
            skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        for i, units in enumerate(self.up):
            skip = skips.pop()
            h = units[0](skip.replace(torch.cat([h.feats, skip.feats], 1)), emb, context, lengths)
            for u in units[1:]:
                h = u(h, emb, context, lengths)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h, skips[-1])
        out = self.conv_out(F.silu(self.norm_out(h).feats))
        return sample.replace(out)


@dataclass
class EarthCrafterSparseFlowOutput(BaseOutput):
    """``sample``: the predicted velocity on the input voxels."""

    sample: SparseTensor


class SparseFlowModel(ModelMixin, ConfigMixin):
    """The forward shared by EarthCrafter's sparse flows; a subclass's ``__init__`` sets ``self.unet``
    (a :class:`SparseFlowUNet`) from its registered config."""

    unet: SparseFlowUNet

    def forward(
        self,
        sample: SparseTensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_lengths: torch.Tensor,
        condition_map: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> EarthCrafterSparseFlowOutput | tuple:
        """Velocity of the noisy latent ``sample`` at ``timestep`` given the condition tokens
        ``[B, T, context_dim]`` (the first ``encoder_lengths[b]`` of item ``b``) and, for a model
        with ``column_condition``, the condition map ``[B, context_dim, g, g]``."""
        out = self.unet(sample, timestep, encoder_hidden_states, encoder_lengths, condition_map, type(self).__name__)
        return EarthCrafterSparseFlowOutput(sample=out) if return_dict else (out,)
