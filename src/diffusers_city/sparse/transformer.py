"""Conditioned sparse transformer blocks: the DiT block of EarthCrafter's flow models.

The attention primitives live in :mod:`.attention`; this module composes them with the
conditioning a denoiser needs (adaLN-Zero modulation by a per-item embedding, cross-attention to
a per-item condition sequence).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import SparseCrossAttention, _mlp, _self_attention
from .nn import batch_index
from .tensor import SparseTensor, take_rows

__all__ = ["SparseDiTBlock"]


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift`` with each voxel taking its batch item's row of ``shift, scale`` [B, D]."""
    return h * take_rows(1 + scale, rows) + take_rows(shift, rows)


class SparseDiTBlock(nn.Module):
    """DiT block with adaLN-Zero on a ``SparseTensor``:

    - ``x + gate_msa * attn(LN(x) * (1 + scale_msa) + shift_msa)``;
    - ``x + cross_attn(LN'(x), context)`` (only when built with ``context_dim``);
    - ``x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)``.

    Shift, scale and gate come from ``emb`` ``[B, emb_dim]`` (SiLU, Linear), each voxel taking its
    batch item's. Self-attention as in :class:`~.attention.SparseTransformerBlock` (``"window"``
    or ``"serialized"``). Cross-attention (:class:`~.attention.SparseCrossAttention`) has its own
    affine LayerNorm ``LN'`` and is neither modulated nor gated, as with diffusers'
    ``BasicTransformerBlock(norm_type="ada_norm_zero")`` and TRELLIS' sparse cross blocks. The
    modulation Linear starts at zero (DiT) and so does the cross-attention's output projection
    (PixArt), so the block starts as the identity.

    ``forward(x, emb, context=None, context_lengths=None)``: ``context`` ``[M, context_dim]``
    packs the condition tokens of all items one item after another, ``context_lengths`` ``[B]``
    counts them. ``context=None`` skips cross-attention, the same as every item having no
    condition tokens (an item without any is not cross-attended).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        emb_dim: int | None = None,
        context_dim: int | None = None,
        attention: str = "window",
        mlp_ratio: float = 4.0,
        window_size: int | tuple[int, int, int] = 8,
        shift: bool = False,
        patch_size: int = 1024,
        order: str = "z",
        grid_size: int = 1,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.emb_dim = dim if emb_dim is None else emb_dim
        self.attn = _self_attention(dim, num_heads, attention, window_size, shift, patch_size, order, grid_size, qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        if context_dim is None:
            self.norm2 = self.cross_attn = None
        else:
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = SparseCrossAttention(dim, context_dim, num_heads, qkv_bias)
            nn.init.zeros_(self.cross_attn.proj.weight)
            nn.init.zeros_(self.cross_attn.proj.bias)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.mlp = _mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(self.emb_dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(
        self,
        x: SparseTensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_lengths: torch.Tensor | None = None,
    ) -> SparseTensor:
        if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (x.batch_size, self.emb_dim):
            raise ValueError(
                f"emb must have shape [B, emb_dim] = [{x.batch_size}, {self.emb_dim}], got {getattr(emb, 'shape', None)}"
            )
        if (context is None) != (context_lengths is None):
            raise ValueError("pass context and context_lengths together")
        if context is not None and self.cross_attn is None:
            raise ValueError("this block has no cross-attention (built without context_dim); pass context=None")
        if x.feats.dim() != 2 or x.feats.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {list(x.feats.shape)}")
        rows = batch_index(x)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(emb).chunk(6, dim=1)
        h = self.attn(x.replace(_modulate(self.norm1(x.feats), shift_msa, scale_msa, rows))).feats
        h = x.feats + take_rows(gate_msa, rows) * h
        if context is not None:
            h = h + self.cross_attn(x.replace(self.norm2(h)), context, context_lengths).feats
        out = self.mlp(_modulate(self.norm3(h), shift_mlp, scale_mlp, rows))
        return x.replace(h + take_rows(gate_mlp, rows) * out)
