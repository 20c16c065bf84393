"""Sparse U-Net blocks shared by every family's sparse denoisers."""

from __future__ import annotations

import torch
from torch import nn

from ...sparse import SparseTensor
from ...sparse.attention import SparseTransformerBlock
from ...sparse.nn import SparseResBlock

__all__ = ["SparseUNetUnit"]


class SparseUNetUnit(nn.Module):
    """One sparse residual block with a timestep embedding, followed by window self-attention
    on attention levels (3D ADM, XCube's sparse variant)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, heads: int, window: int, attn: bool) -> None:
        super().__init__()
        self.res = SparseResBlock(in_ch, out_ch, emb_ch, dropout=dropout)
        self.attn = SparseTransformerBlock(out_ch, heads, attention="window", window_size=window) if attn else None

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h
