"""The layout generator's masked-token transformer: diffusers' ``UVit2DModel`` with position embeddings."""

from __future__ import annotations

import torch
from diffusers import UVit2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed

__all__ = ["CityLayoutTransformer2DModel"]


class CityLayoutTransformer2DModel(UVit2DModel):
    """``UVit2DModel`` (same config and weights) whose transformer input gets fixed 2D sin-cos
    position embeddings of the token grid.

    ``UVit2DModel`` has none: its only spatial cue is the zero padding of the convolutions before
    the transformer, so every masked token far from given tokens and from the window's border gets
    the same logits (an all-masked window: one distribution at every interior position), and the
    sampler's first steps keep the most confident codes wherever they fall.
    """

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``UVit2DModel.forward``, the embeddings added to ``project_to_hidden``'s output."""
        height, width = input_ids.shape[-2:]
        if self.config.downsample:
            height, width = height // 2, width // 2

        def add_positions(module, inputs, hidden_states: torch.Tensor) -> torch.Tensor:
            positions = get_2d_sincos_pos_embed(
                hidden_states.shape[-1], (height, width), base_size=height, device=hidden_states.device
            )
            return hidden_states + positions.to(hidden_states.dtype)

        handle = self.project_to_hidden.register_forward_hook(add_positions)
        try:
            return super().forward(input_ids, *args, **kwargs)
        finally:
            handle.remove()
