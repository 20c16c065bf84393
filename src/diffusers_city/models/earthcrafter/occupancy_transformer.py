"""EarthCrafter StructFM stage 1: which cells of the coarse (L/8)^3 grid are occupied.

A DiT over the dense grid: ``patch_size``^3 patches become tokens with a 3D positional encoding
(in finest-voxel units, the frame of the condition tokens), adaLN-Zero blocks with full
self-attention and cross-attention to the condition tokens, and an adaLN output layer. It is a
rectified flow on the occupancy field with targets {-1, 1} (occupied where the sample is > 0).
With ``column_condition`` each token also gets the condition map's features at its column.
The blocks are the core's sparse DiT blocks on the full grid (one attention window = the grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ...sparse import SparseDiTBlock, SparseTensor
from .layers import AdaLNOutput, ColumnCondition, FlowTimestepEmbedding, check_condition, pack_tokens, positional_encoding_3d


@dataclass
class EarthCrafterOccupancyTransformerOutput(BaseOutput):
    """``sample``: the predicted velocity ``[B, 1, G, G, G]``."""

    sample: torch.Tensor


class EarthCrafterOccupancyTransformer(ModelMixin, ConfigMixin):
    """Rectified-flow DiT on the dense occupancy grid, conditioned by cross-attention.

    Args:
        grid_size: G, the coarse grid edge (L / 8).
        cell_size: finest voxels per coarse cell (8), placing tokens in the condition's frame.
        in_channels: channels of the field (1: occupancy).
        patch_size: grid cells per token edge (G must be a multiple of it).
        hidden_dim: token width.
        num_layers: DiT blocks.
        num_heads: attention heads.
        context_dim: condition token width (the condition encoder's ``hidden_dim``).
        mlp_ratio: MLP width of the blocks relative to ``hidden_dim``.
        column_condition: add the condition map's features at each token's column
            (:class:`~.layers.ColumnCondition`), next to cross-attention.
    """

    @register_to_config
    def __init__(
        self,
        grid_size: int = 8,
        cell_size: int = 8,
        in_channels: int = 1,
        patch_size: int = 1,
        hidden_dim: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        context_dim: int = 128,
        mlp_ratio: float = 4.0,
        column_condition: bool = True,
    ) -> None:
        super().__init__()
        if grid_size % patch_size:
            raise ValueError(f"grid_size {grid_size} must be a multiple of patch_size {patch_size}")
        self.tokens_per_side = grid_size // patch_size
        self.patch_in = nn.Linear(in_channels * patch_size**3, hidden_dim)
        self.pos_proj = nn.Linear(hidden_dim, hidden_dim)
        self.column = ColumnCondition(context_dim, hidden_dim, self.tokens_per_side) if column_condition else None
        self.time_embed = FlowTimestepEmbedding(hidden_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            SparseDiTBlock(
                hidden_dim,
                num_heads,
                context_dim=context_dim,
                attention="window",
                window_size=self.tokens_per_side,
                mlp_ratio=mlp_ratio,
            )
            for _ in range(num_layers)
        )
        self.out = AdaLNOutput(hidden_dim, hidden_dim, in_channels * patch_size**3)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, G, G, G]`` -> ``[B * n^3, C * p^3]`` tokens, (b, i, j, k) row-major."""
        b, c, p, n = x.shape[0], x.shape[1], self.config.patch_size, self.tokens_per_side
        x = x.reshape(b, c, n, p, n, p, n, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b * n**3, c * p**3)

    def _unpatchify(self, t: torch.Tensor, b: int) -> torch.Tensor:
        c, p, n = self.config.in_channels, self.config.patch_size, self.tokens_per_side
        t = t.reshape(b, n, n, n, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return t.reshape(b, c, n * p, n * p, n * p)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_lengths: torch.Tensor,
        condition_map: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> EarthCrafterOccupancyTransformerOutput | tuple:
        """Velocity of the noisy occupancy ``sample`` ``[B, C, G, G, G]`` at ``timestep`` given the
        condition tokens ``[B, T, context_dim]`` (the first ``encoder_lengths[b]`` of item ``b``) and,
        with ``column_condition``, the condition map ``[B, context_dim, g, g]``."""
        g, c = self.config.grid_size, self.config.in_channels
        if not isinstance(sample, torch.Tensor) or sample.dim() != 5 or tuple(sample.shape[1:]) != (c, g, g, g):
            raise ValueError(f"sample must be [B, {c}, {g}, {g}, {g}], got {getattr(sample, 'shape', None)}")
        b = sample.shape[0]
        check_condition(encoder_hidden_states, encoder_lengths, b, self.config.context_dim, type(self).__name__)
        n, device = self.tokens_per_side, sample.device
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, device=device)] * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = torch.cat([torch.arange(b, device=device).repeat_interleave(n**3)[:, None], grid.repeat(b, 1)], 1)
        scale = self.config.cell_size * self.config.patch_size
        pos = self.pos_proj(positional_encoding_3d((grid + 0.5) * scale, self.config.hidden_dim).to(sample.dtype))
        h = self.patch_in(self._patchify(sample)) + pos.repeat(b, 1)
        if self.column is not None:
            h = h + self.column(condition_map, coords, b, type(self).__name__)
        x = SparseTensor(h, coords.int(), batch_size=b, validate=False)
        emb = self.time_embed(timestep, b, device, h.dtype)
        context = pack_tokens(encoder_hidden_states, encoder_lengths).to(h.dtype)
        for block in self.blocks:
            x = block(x, emb, context, encoder_lengths)
        out = self._unpatchify(self.out(x.feats, emb, coords[:, 0]), b)
        return EarthCrafterOccupancyTransformerOutput(sample=out) if return_dict else (out,)
