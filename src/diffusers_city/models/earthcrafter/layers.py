"""Parts shared by EarthCrafter's condition network and flow models: the 3D positional encoding
that puts condition tokens and latent voxels in one frame, the packing of padded condition tokens
into the per-item sequences sparse cross-attention reads, the condition map's features at each
voxel's column, the timestep embedding and the adaLN-Zero output layer."""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

__all__ = [
    "AdaLNOutput",
    "ColumnCondition",
    "FlowTimestepEmbedding",
    "check_condition",
    "pack_tokens",
    "positional_encoding_3d",
]


def positional_encoding_3d(xyz: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encoding ``[N, dim]`` of positions ``xyz`` ``[N, 3]`` in finest-voxel units.

    Each axis gets ``2 * (dim // 6)`` channels (sin and cos of ``dim // 6`` frequencies from 1 to
    ``1 / max_period`` radians per voxel); the remaining ``dim % 6`` channels are zero.
    """
    n = dim // 6
    if n == 0:
        raise ValueError(f"the 3D positional encoding needs dim >= 6, got {dim}")
    freqs = torch.exp(-math.log(max_period) * torch.arange(n, device=xyz.device, dtype=torch.float32) / n)
    angles = xyz.float()[:, :, None] * freqs  # [N, 3, n]
    enc = torch.cat([angles.sin(), angles.cos()], -1).flatten(1)
    return torch.nn.functional.pad(enc, (0, dim - enc.shape[1]))


def check_condition(
    encoder_hidden_states: torch.Tensor, encoder_lengths: torch.Tensor, batch_size: int, dim: int, model: str
) -> None:
    """``ValueError`` unless the condition is ``[B, T, dim]`` tokens with ``[B]`` lengths in 0..T."""
    shape = getattr(encoder_hidden_states, "shape", None)
    if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.dim() != 3:
        raise ValueError(f"{model}: encoder_hidden_states must be [B, T, {dim}], got {shape}")
    if encoder_hidden_states.shape[0] != batch_size or encoder_hidden_states.shape[2] != dim:
        raise ValueError(f"{model}: encoder_hidden_states must be [{batch_size}, T, {dim}], got {list(shape)}")
    if not isinstance(encoder_lengths, torch.Tensor) or tuple(encoder_lengths.shape) != (batch_size,):
        raise ValueError(
            f"{model}: encoder_lengths must be a [{batch_size}] tensor, got {getattr(encoder_lengths, 'shape', None)}"
        )
    if encoder_lengths.numel() and not 0 <= int(encoder_lengths.min()) <= int(encoder_lengths.max()) <= shape[1]:
        raise ValueError(f"{model}: encoder_lengths must lie in 0..{shape[1]}, got {encoder_lengths.tolist()}")


def pack_tokens(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The first ``lengths[b]`` tokens of each item of ``tokens`` ``[B, T, D]``, item after item: ``[sum(lengths), D]``."""
    keep = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None]
    return tokens[keep]


class ColumnCondition(nn.Module):
    """The condition map's features at each voxel's column, projected to the model's width.

    The map ``[B, D, g, g]`` (rows along y, columns along x, the condition encoder's lifting) is
    average-pooled (or repeated) to the voxels' ``resolution`` x ``resolution`` columns and read at
    each voxel's ``(y, x)``. Cross-attention has to find a voxel's own part of the map through the
    positional encodings; this hands it over directly, so following the map is the easiest thing
    for a flow to learn.
    """

    def __init__(self, context_dim: int, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.proj = nn.Linear(context_dim, dim)

    def forward(self, condition_map: torch.Tensor | None, coords: torch.Tensor, batch_size: int, model: str) -> torch.Tensor:
        """``[N, dim]`` features of the voxels ``coords`` ``[N, 4]`` (batch, x, y, z at ``resolution``)."""
        if condition_map is None:
            raise ValueError(f"{model} was built with column_condition: pass the condition's condition_map")
        d = self.proj.in_features
        if not isinstance(condition_map, torch.Tensor) or condition_map.dim() != 4 or condition_map.shape[:2] != (batch_size, d):
            raise ValueError(
                f"{model}: condition_map must be [{batch_size}, {d}, g, g], got {getattr(condition_map, 'shape', None)}"
            )
        pooled = torch.nn.functional.adaptive_avg_pool2d(condition_map.to(self.proj.weight.dtype), self.resolution)
        b, x, y = coords[:, 0].long(), coords[:, 1].long(), coords[:, 2].long()
        return self.proj(pooled.permute(0, 2, 3, 1)[b, y, x])


class FlowTimestepEmbedding(nn.Module):
    """``timestep`` (diffusers' flow-matching ``sigma * 1000``) -> ``[B, emb_dim]``: sinusoidal
    features then an MLP, broadcasting a scalar timestep over the batch."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embedding = TimestepEmbedding(channels, emb_dim)

    def forward(self, timestep: torch.Tensor | float, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1)
        if t.numel() not in (1, batch_size):
            raise ValueError(f"timestep must be a scalar or [{batch_size}], got {t.numel()} values")
        return self.embedding(self.proj(t.expand(batch_size)).to(dtype))


class AdaLNOutput(nn.Module):
    """DiT's final layer: LayerNorm modulated by the embedding (shift, scale), then a zero-initialised
    Linear, so a fresh model predicts zero velocity."""

    def __init__(self, dim: int, emb_dim: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * dim))
        self.linear = nn.Linear(dim, out_channels)
        for layer in (self.modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``h`` ``[N, dim]`` whose row ``i`` belongs to batch item ``rows[i]`` of ``emb`` ``[B, emb_dim]``."""
        shift, scale = self.modulation(emb).chunk(2, dim=1)
        return self.linear(self.norm(h) * (1 + scale[rows]) + shift[rows])
