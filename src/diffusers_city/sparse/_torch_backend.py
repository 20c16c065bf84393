"""Pure-torch sparse convolution: cached kernel maps + gather-matmul-scatter per kernel offset.

Runs on any device, differentiates through plain torch ops (``index_select``, ``mm``,
``index_add``), and under autocast multiplies in the autocast dtype while accumulating in fp32.
"""

from __future__ import annotations

import torch

from .backend import compute_dtype
from .kernel_map import KernelMap, down_map, inverse_map, subm_map
from .tensor import SparseTensor


def apply_kernel_map(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap) -> torch.Tensor:
    """``out[o] = bias + sum_k W[k] feats[i]`` over the map's (i, o) pairs of offset k."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in)
    dtype = compute_dtype(feats)
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out = torch.zeros(kmap.num_out, c_out, dtype=acc_dtype, device=feats.device)
    for k, (ii, oi) in enumerate(zip(kmap.in_idx, kmap.out_idx)):
        if ii.numel():
            out.index_add_(0, oi, torch.mm(feats.index_select(0, ii), w[:, k].t()).to(acc_dtype))
    out = out.to(dtype)
    return out if bias is None else out + bias.to(dtype)


class TorchBackend:
    """The reference backend; kernel maps cached on the tensor under ("torch", kind, params)."""

    name = "torch"

    def _subm(self, x: SparseTensor, kernel_size: int) -> KernelMap:
        key = ("torch", "subm", kernel_size)
        if key not in x.cache:
            x.cache[key] = subm_map(x, kernel_size)
        return x.cache[key]

    def _down(self, x: SparseTensor, kernel_size: int, stride: int, padding: int):
        key = ("torch", "down", kernel_size, stride, padding)
        if key not in x.cache:
            x.cache[key] = down_map(x, kernel_size, stride, padding)
        return x.cache[key]

    def build_map(self, x: SparseTensor, kind: str, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        if kind == "subm":
            self._subm(x, kernel_size)
        else:
            self._down(x, kernel_size, stride, padding)

    def subm_conv(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return apply_kernel_map(x.feats, weight, bias, self._subm(x, weight.shape[1]))

    def down_conv(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
        kmap, out_coords, out_index = self._down(x, weight.shape[1], stride, padding)
        return apply_kernel_map(x.feats, weight, bias, kmap), out_coords, {"index": out_index}

    def inverse_conv(
        self,
        x: SparseTensor,
        target: SparseTensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int,
        padding: int,
    ) -> torch.Tensor:
        params = (weight.shape[1], stride, padding)
        down = target.cache.get(("torch", "down", *params))
        if down is not None and down[1] is x.coords:
            kmap = down[0].inverted(target.num_voxels)
        else:
            key = ("torch", "inverse", *params)
            cached = target.cache.get(key)
            if cached is None or cached[0] is not x.coords:
                cached = target.cache[key] = (x.coords, inverse_map(x, target, *params))
            kmap = cached[1]
        return apply_kernel_map(x.feats, weight, bias, kmap)


TORCH_BACKEND = TorchBackend()
