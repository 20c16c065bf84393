"""Sat2City dense-latent denoiser Psi_D: a 3D ADM U-Net (Sec. 3.2, supplementary 6.2).

ADM style (Dhariwal & Nichol): residual blocks with GroupNorm and a scale-shift timestep
embedding, self-attention at the coarsest levels, skip connections, and the condition volume
c(P_h) concatenated with the noisy latent at the input. Predicts v (v-parameterisation).
Downsampling halves an axis only while it is even and > 1, so flat city grids (Z << X) work.
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


@dataclass
class UNet3DOutput(BaseOutput):
    """``sample``: the predicted v, same layout as the input latent."""

    sample: torch.Tensor


def _groups(channels: int, groups: int) -> int:
    while channels % groups:
        groups //= 2
    return max(groups, 1)


class _ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-Conv, scale-shift by the timestep embedding, GN-SiLU-Dropout-Conv."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, groups), in_ch)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over all voxels of a (coarse) dense grid."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).view(b, -1, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return x + self.proj(out).transpose(1, 2).view_as(x)


class _Unit(nn.Module):
    """One residual block, followed by self-attention on attention levels."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, groups: int, dropout: float, heads: int, attn: bool) -> None:
        super().__init__()
        self.res = _ResBlock(in_ch, out_ch, emb_ch, groups, dropout)
        self.attn = _Attention(out_ch, heads, groups) if attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class Sat2CityDenseUNet3D(ModelMixin, ConfigMixin):
    """3D ADM U-Net on the dense latent X_D, conditioned by concatenation (Sat2City Psi_D).

    Args:
        in_channels: latent channels (X_D).
        condition_channels: channels of the condition volume concatenated at the input.
        out_channels: predicted channels (defaults to ``in_channels``).
        block_channels: widths per level (XCube dense: 192 x [1, 2, 4, 4]).
        layers_per_block: residual blocks per level.
        attention_levels: levels (0 = finest) with self-attention after each residual block.
        num_heads: attention heads.
        norm_num_groups: GroupNorm groups.
        dropout: dropout in the residual blocks.
        condition_dropout: training probability of zeroing the condition (for guidance-free robustness).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        condition_channels: int = 16,
        out_channels: int | None = None,
        block_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        c0 = block_channels[0]
        emb_ch = 4 * c0
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, emb_ch)
        self.conv_in = nn.Conv3d(in_channels + condition_channels, c0, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips = [c0]
        ch = c0
        for level, out_ch in enumerate(block_channels):
            layers = nn.ModuleList()
            for _ in range(layers_per_block):
                layers.append(_Unit(ch, out_ch, emb_ch, norm_num_groups, dropout, num_heads, level in attention_levels))
                ch = out_ch
                skips.append(ch)
            self.down.append(layers)
            if level + 1 < len(block_channels):
                self.downsamplers.append(nn.Conv3d(ch, ch, 3, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [
                _Unit(ch, ch, emb_ch, norm_num_groups, dropout, num_heads, True),
                _Unit(ch, ch, emb_ch, norm_num_groups, dropout, num_heads, False),
            ]
        )
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(block_channels))):
            out_ch = block_channels[level]
            layers = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                attn = level in attention_levels
                layers.append(_Unit(ch + skips.pop(), out_ch, emb_ch, norm_num_groups, dropout, num_heads, attn))
                ch = out_ch
            self.up.append(layers)
            if level > 0:
                self.upsamplers.append(nn.Conv3d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch, norm_num_groups), ch)
        self.conv_out = nn.Conv3d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _down_stride(shape: tuple[int, ...]) -> tuple[int, int, int]:
        return tuple(2 if s > 1 and s % 2 == 0 else 1 for s in shape)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        condition: torch.Tensor,
        return_dict: bool = True,
    ) -> UNet3DOutput | tuple:
        """Predict v for ``sample`` [B, C, X, Y, Z] at ``timestep`` given ``condition`` [B, Cc, X, Y, Z]."""
        if condition.shape[2:] != sample.shape[2:]:
            raise ValueError(f"condition grid {tuple(condition.shape[2:])} != latent grid {tuple(sample.shape[2:])}")
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        h = self.conv_in(torch.cat([sample, condition.to(sample.dtype)], 1))
        hs = [h]
        for level, layers in enumerate(self.down):
            for unit in layers:
                h = unit(h, emb)
                hs.append(h)
            if level < len(self.downsamplers):
                stride = self._down_stride(h.shape[2:])
                h = F.avg_pool3d(h, stride) if stride != (1, 1, 1) else h
                h = self.downsamplers[level](h)
                hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for i, layers in enumerate(self.up):
            for unit in layers:
                h = unit(torch.cat([h, hs.pop()], 1), emb)
            if i < len(self.upsamplers):
                h = F.interpolate(h, size=hs[-1].shape[2:], mode="nearest")
                h = self.upsamplers[i](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return UNet3DOutput(sample=out) if return_dict else (out,)
