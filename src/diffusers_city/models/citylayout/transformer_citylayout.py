"""The layout generator's masked-token transformer: diffusers' ``UVit2DModel`` with position embeddings."""

from __future__ import annotations

import torch
from diffusers import UVit2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

__all__ = ["CityLayoutTransformer2DModel"]


class CityLayoutTransformer2DModel(UVit2DModel):
    """``UVit2DModel`` (same config and weights) whose transformer input gets fixed 2D sin-cos
    position embeddings of the token grid.

    ``UVit2DModel`` has none: its only spatial cue is the zero padding of the 3x3 convolutions
    before the transformer, so every masked token more than ``num_res_blocks`` tokens from a
    given token or the window's border gets the same logits (an all-masked window: one
    distribution at every interior position), and the sampler's first steps keep the tokens of
    the most confident codes wherever they fall.
    """

    def forward(
        self, input_ids, encoder_hidden_states, pooled_text_emb, micro_conds, cross_attention_kwargs=None
    ) -> torch.Tensor:
        """``UVit2DModel.forward`` with the position embeddings added after ``project_to_hidden``."""
        encoder_hidden_states = self.encoder_proj_layer_norm(self.encoder_proj(encoder_hidden_states))
        micro_cond_embeds = get_timestep_embedding(
            micro_conds.flatten(), self.config.micro_cond_encode_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        ).reshape((input_ids.shape[0], -1))
        pooled_text_emb = torch.cat([pooled_text_emb, micro_cond_embeds], dim=1).to(dtype=self.dtype)
        pooled_text_emb = self.cond_embed(pooled_text_emb).to(encoder_hidden_states.dtype)
        blocks = {
            "pooled_text_emb": pooled_text_emb,
            "encoder_hidden_states": encoder_hidden_states,
            "cross_attention_kwargs": cross_attention_kwargs,
        }
        hidden_states = self.down_block(self.embed(input_ids), **blocks)

        batch_size, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_size, height * width, channels)
        hidden_states = self.project_to_hidden(self.project_to_hidden_norm(hidden_states))
        positions = get_2d_sincos_pos_embed(
            hidden_states.shape[-1], (height, width), base_size=height, device=hidden_states.device
        )
        hidden_states = hidden_states + positions.to(hidden_states.dtype)
        for layer in self.transformer_layers:
            hidden_states = layer(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs={"pooled_text_emb": pooled_text_emb},
            )
        hidden_states = self.project_from_hidden(self.project_from_hidden_norm(hidden_states))

        hidden_states = hidden_states.reshape(batch_size, height, width, channels).permute(0, 3, 1, 2)
        return self.mlm_layer(self.up_block(hidden_states, **blocks))
