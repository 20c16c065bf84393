"""EarthCrafter's condition network: a semantic map, an aerial image or nothing -> condition tokens
in the tile's 3D frame, read by both flow models through cross-attention.

Lifting (the convention every EarthCrafter component follows): semantic pixel ``[b, i, j]`` is the
voxel column ``x = j``, ``y = i`` of the tile (rows along y, columns along x, as the rasters of
``data/scene.py``), so a ``patch_size`` x ``patch_size`` patch of the map becomes one token at
voxel position ``((j0 + p/2), (i0 + p/2), dummy_height)``. The image (an orthophoto of the same
footprint, ``image_size`` pixels a side) is patchified on the same token grid and placed at the
same positions; it carries no depth, so it too sits at the dummy height. Mode "none" is a set of
learned null tokens. A learned mode embedding tells the three apart. One checkpoint trained with
condition dropout serves all three; classifier-free guidance uses "none" as its unconditional branch.

Besides the tokens, the encoder returns them as a map on their patch grid (``condition_map``,
zero for "none"): flows built with ``column_condition`` add each voxel's column of it to their
input, next to cross-attention to the tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .layers import positional_encoding_3d

MODES = ("semantic", "image", "none")


class ConditionTokens(NamedTuple):
    """Condition tokens ``[B, T, D]`` (zero-padded past each item's length), ``lengths`` ``[B]`` and
    ``condition_map`` ``[B, D, g, g]``: the map's and image's tokens on their patch grid (rows along
    y; summed when both are given), zero for mode "none"."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    condition_map: torch.Tensor


class EarthCrafterConditionEncoder(ModelMixin, ConfigMixin):
    """Semantic map / aerial image / none -> condition tokens (see the module docstring for the lifting).

    Args:
        resolution: tile edge L in voxels (the semantic map is ``[B, L, L]``).
        voxel_size: metres per voxel (and per semantic map pixel): the tile's scale, which every
            other component of a pipeline follows.
        num_classes: semantic classes (``diffusers_city.data.classes.NUM_CLASSES``).
        image_size: aerial image edge S in pixels (default ``2 * resolution``); must be a multiple of
            ``resolution // patch_size``.
        patch_size: voxel columns per token edge (``resolution`` must be a multiple of it).
        hidden_dim: token width D (the flows' ``context_dim``).
        num_layers: transformer encoder layers over each item's tokens.
        num_heads: attention heads of those layers.
        num_null_tokens: learned tokens of mode "none".
        dummy_height: voxel height z at which the 2D conditions are placed.
        accepts_both: whether one call may pass a semantic map and an image together (their tokens
            are concatenated); a checkpoint trained without such pairs refuses them.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        voxel_size: float = 2.0,
        num_classes: int = 8,
        image_size: int | None = None,
        patch_size: int = 4,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        num_null_tokens: int = 16,
        dummy_height: float = 0.0,
        accepts_both: bool = False,
    ) -> None:
        super().__init__()
        image_size = 2 * resolution if image_size is None else image_size
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} must be a multiple of patch_size {patch_size}")
        grid = resolution // patch_size
        if image_size % grid:
            raise ValueError(f"image_size {image_size} must be a multiple of the token grid {grid} (resolution / patch_size)")
        self.image_size = image_size
        self.grid = grid
        image_patch = image_size // grid
        self.semantic_embed = nn.Conv2d(num_classes, hidden_dim, patch_size, stride=patch_size)
        self.image_embed = nn.Conv2d(3, hidden_dim, image_patch, stride=image_patch)
        self.null_tokens = nn.Parameter(torch.randn(num_null_tokens, hidden_dim) * 0.02)
        self.mode_embed = nn.Embedding(len(MODES), hidden_dim)
        self.pos_proj = nn.Linear(hidden_dim, hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, 4 * hidden_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(hidden_dim)

    def token_positions(self) -> torch.Tensor:
        """Voxel positions ``[grid * grid, 3]`` of the patch tokens (row-major over (i, j))."""
        p = self.config.patch_size
        centre = (torch.arange(self.grid, dtype=torch.float32) + 0.5) * p
        i, j = torch.meshgrid(centre, centre, indexing="ij")
        return torch.stack([j.flatten(), i.flatten(), torch.full_like(j.flatten(), float(self.config.dummy_height))], 1)

    def check_semantic_map(self, semantic_map: torch.Tensor) -> None:
        L, k = self.config.resolution, self.config.num_classes
        if not isinstance(semantic_map, torch.Tensor) or semantic_map.dim() != 3 or tuple(semantic_map.shape[1:]) != (L, L):
            raise ValueError(
                f"semantic_map must be a [B, {L}, {L}] tensor of class ids, got {getattr(semantic_map, 'shape', None)}"
            )
        if semantic_map.is_floating_point() or semantic_map.is_complex() or semantic_map.dtype == torch.bool:
            raise ValueError(f"semantic_map must hold integer class ids, got {semantic_map.dtype}")
        if semantic_map.numel() and not 0 <= int(semantic_map.min()) <= int(semantic_map.max()) < k:
            raise ValueError(f"semantic_map holds class ids outside 0..{k - 1}: {sorted(set(semantic_map.unique().tolist()))}")

    def check_image(self, image: torch.Tensor) -> None:
        S = self.image_size
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or tuple(image.shape[1:]) != (3, S, S):
            raise ValueError(f"image must be a [B, 3, {S}, {S}] RGB tensor, got {getattr(image, 'shape', None)}")
        if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
            raise ValueError("image must be a finite floating-point tensor in 0..1")

    def _patch_tokens(self, feats: torch.Tensor, mode: int) -> torch.Tensor:
        """``[B, D, g, g]`` patch features -> ``[B, g*g, D]`` tokens with position and mode."""
        tokens = feats.flatten(2).transpose(1, 2)
        pos = self.pos_proj(
            positional_encoding_3d(self.token_positions().to(tokens.device), self.config.hidden_dim).to(tokens.dtype)
        )
        return tokens + pos + self.mode_embed.weight[mode]

    def forward(
        self,
        semantic_map: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        batch_size: int | None = None,
        drop: torch.Tensor | None = None,
    ) -> ConditionTokens:
        """Tokens and map of ``semantic_map`` ``[B, L, L]`` and/or ``image`` ``[B, 3, S, S]`` (in
        0..1), or of mode "none" for ``batch_size`` items when both are None. ``drop`` ``[B]`` (bool)
        gives the marked items the "none" tokens and a zero map instead (condition dropout)."""
        dtype = self.null_tokens.dtype
        parts = []
        if semantic_map is not None:
            self.check_semantic_map(semantic_map)
            onehot = F.one_hot(semantic_map.long(), self.config.num_classes).permute(0, 3, 1, 2).to(dtype)
            parts.append(self._patch_tokens(self.semantic_embed(onehot), MODES.index("semantic")))
        if image is not None:
            self.check_image(image)
            parts.append(self._patch_tokens(self.image_embed(image.to(dtype) * 2 - 1), MODES.index("image")))
        if len(parts) == 2 and not self.config.accepts_both:
            raise ValueError("this condition encoder takes a semantic map or an image, not both (accepts_both=False)")
        given = parts[0].shape[0] if parts else batch_size
        if given is None or (batch_size is not None and batch_size != given):
            raise ValueError(f"batch_size must be given for mode 'none' and match the conditions, got {batch_size}")
        if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
            raise ValueError("semantic_map and image must have the same batch size")
        null = (self.null_tokens + self.mode_embed.weight[MODES.index("none")]).expand(given, -1, -1)
        null = self.transformer(null)
        g, d = self.grid, self.config.hidden_dim
        if not parts:
            lengths = torch.full((given,), null.shape[1], dtype=torch.long, device=null.device)
            return ConditionTokens(self.norm_out(null), lengths, null.new_zeros(given, d, g, g))
        cond = self.norm_out(self.transformer(torch.cat(parts, 1)))
        condition_map = sum(cond.split(g * g, 1)).transpose(1, 2).reshape(given, d, g, g)
        lengths = torch.full((given,), cond.shape[1], dtype=torch.long, device=cond.device)
        if drop is not None:
            if not isinstance(drop, torch.Tensor) or drop.dtype != torch.bool or tuple(drop.shape) != (given,):
                raise ValueError(f"drop must be a bool tensor of shape [{given}], got {getattr(drop, 'shape', drop)!r}")
            drop = drop.to(cond.device)
            width = max(cond.shape[1], null.shape[1])
            cond, null = (F.pad(t, (0, 0, 0, width - t.shape[1])) for t in (cond, self.norm_out(null)))
            cond = torch.where(drop[:, None, None], null, cond)
            condition_map = condition_map * ~drop[:, None, None, None]
            lengths = torch.where(drop, self.config.num_null_tokens, lengths)
        keep = torch.arange(cond.shape[1], device=cond.device)[None, :, None] < lengths[:, None, None]
        return ConditionTokens(cond * keep, lengths, condition_map)
