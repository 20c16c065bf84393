"""Sat2City sparse-latent denoisers Psi_S and Psi_C: a sparse 3D ADM U-Net (Sec. 3.2).

The 3D ADM backbone (XCube's sparse variant of Dhariwal & Nichol): sparse residual blocks with
a timestep embedding, stride-2 sparse convs down, inverse convs back onto the skip structures,
window self-attention at the coarsest levels, and the condition (the decoded dense grid for
X_S, the pruning decisions ``struct`` for the Re-Hash appearance latent) concatenated with the
noisy latent on the same voxels. Predicts v (v-parameterisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

from ...sparse import SparseTensor
from ...sparse.nn import SparseConv3d, SparseGroupNorm, SparseInverseConv3d, SubMConv3d, group_count
from ..shared.unet_blocks import SparseUNetUnit


@dataclass
class Sat2CitySparseUNet3DOutput(BaseOutput):
    """``sample``: the predicted v on the input voxels."""

    sample: SparseTensor


class Sat2CitySparseUNet3D(ModelMixin, ConfigMixin):
    """Sparse 3D ADM U-Net on a sparse latent, conditioned by concatenation (Sat2City Psi_S / Psi_C).

    Args:
        in_channels: latent channels.
        condition_channels: per-voxel condition channels concatenated at the input.
        out_channels: predicted channels (defaults to ``in_channels``).
        block_channels: widths per level (XCube sparse: 128 x [1, 2, 2, 4]).
        layers_per_block: residual blocks per level.
        attention_levels: levels (0 = finest) with window attention after each residual block.
        num_heads: attention heads.
        attention_window: window edge in voxels of that level.
        dropout: dropout in the residual blocks.
        condition_dropout: training probability of zeroing the condition.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        condition_channels: int = 4,
        out_channels: int | None = None,
        block_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        attention_window: int = 8,
        dropout: float = 0.0,
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        c0 = block_channels[0]
        emb_ch = 4 * c0
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, emb_ch)
        self.conv_in = SubMConv3d(in_channels + condition_channels, c0)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        ch = c0
        skips = []
        for level, out_ch in enumerate(block_channels):
            attn = level in attention_levels
            units = nn.ModuleList()
            for _ in range(layers_per_block):
                units.append(SparseUNetUnit(ch, out_ch, emb_ch, dropout, num_heads, attention_window, attn))
                ch = out_ch
            skips.append(ch)
            self.down.append(units)
            if level + 1 < len(block_channels):
                self.downsamplers.append(SparseConv3d(ch, block_channels[level + 1], kernel_size=2, stride=2))
                ch = block_channels[level + 1]
        self.mid = nn.ModuleList(
            [
                SparseUNetUnit(ch, ch, emb_ch, dropout, num_heads, attention_window, True),
                SparseUNetUnit(ch, ch, emb_ch, dropout, num_heads, attention_window, False),
            ]
        )
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(block_channels))):
            out_ch = block_channels[level]
            attn = level in attention_levels
            units = nn.ModuleList([SparseUNetUnit(ch + skips.pop(), out_ch, emb_ch, dropout, num_heads, attention_window, attn)])
            units.extend(
                SparseUNetUnit(out_ch, out_ch, emb_ch, dropout, num_heads, attention_window, attn)
                for _ in range(layers_per_block - 1)
            )
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
        timestep: torch.Tensor | float | int,
        condition: torch.Tensor,
        return_dict: bool = True,
    ) -> Sat2CitySparseUNet3DOutput | tuple:
        """Predict v for the noisy ``sample`` at ``timestep`` given ``condition`` [N, Cc] on its voxels."""
        if condition.shape != (sample.num_voxels, self.config.condition_channels):
            raise ValueError(
                f"condition must have shape [{sample.num_voxels}, {self.config.condition_channels}], got {tuple(condition.shape)}"
            )
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.batch_size)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        h = self.conv_in(sample.replace(torch.cat([sample.feats, condition.to(sample.dtype)], 1)))
        skips = []
        for level, units in enumerate(self.down):
            for unit in units:
                h = unit(h, emb)
            skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        for unit in self.mid:
            h = unit(h, emb)
        for i, units in enumerate(self.up):
            skip = skips.pop()
            h = units[0](skip.replace(torch.cat([h.feats, skip.feats], 1)), emb)
            for unit in units[1:]:
                h = unit(h, emb)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h, skips[-1])
        out = sample.replace(self.conv_out(F.silu(self.norm_out(h).feats)))
        return Sat2CitySparseUNet3DOutput(sample=out) if return_dict else (out,)
