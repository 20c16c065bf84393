"""spconv-triton backend (CUDA): spconv's pair generation and Triton gather-GEMM kernels.

spconv needs non-negative indices inside a ``spatial_shape``. Per structure (cached) the
coordinates are shifted by a per-axis minimum that is a multiple of the conv stride (so
``floor(x / s)`` alignment is kept) with a margin of ``K - 1 - padding`` voxels, and the shape is
padded so that no output site is clipped at the grid border: the output sites are exactly those
of the boundary-free rule in ``kernel_map``, listed in the same (b, x, y, z) order.

Pair tables are cached on the ``SparseTensor`` under ("spconv", kind, params) -- the role
spconv's ``indice_key``/``indice_dict`` plays -- so layers sharing a structure build them once,
and an inverse convolution reuses the strided convolution's tables read backwards. fp32 runs
IEEE dot products unless ``spconv_triton.constants.SPCONV_ALLOW_TF32`` is set; under autocast
the GEMMs run in the autocast dtype (bf16 or fp16) with fp32 accumulation.

Autotuning: spconv-triton sweeps ~37 tile configs for every (kernel volume, channel pair) it
meets, forward and backward. A network with a few dozen distinct layer shapes then compiles for
many minutes before its first step (seen on an H100: no training step in 4 minutes). By default
this backend pins each GEMM autotuner to one config when it is first used;
``DIFFUSERS_CITY_SPCONV_AUTOTUNE=full`` keeps spconv-triton's full sweep (worth it for long runs
of one fixed network; ``benchmarks/sparse_conv.py`` reports both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from spconv_triton.core import ConvAlgo
from spconv_triton.pytorch import ops as spops
from torch.autograd.function import once_differentiable

from .backend import compute_dtype
from .kernel_map import build_index
from .tensor import SparseTensor, take_rows

_ALGO = ConvAlgo.MaskImplicitGemm

# The pinned config of each autotuned GEMM kernel: (kernel name, tile kwargs), 4 warps, 3 stages.
_PINNED_CONFIGS = (
    ("_gather_gemm_kernel", {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_R": 32, "GROUP_SIZE_M": 8}),
    ("_dweight_masked_kernel", {"BLOCK_P": 64, "BLOCK_K": 64, "BLOCK_C": 64}),
)


def configure_autotune(mode: str | None = None) -> str:
    """Pin spconv-triton's GEMM autotuners to one config ("pinned") or keep the sweep ("full").

    ``mode`` defaults to ``$DIFFUSERS_CITY_SPCONV_AUTOTUNE`` or "pinned". Pinning changes only
    the tile shape (so speed and the fp32 summation order), never which products are summed.
    """
    from spconv_triton.pytorch._impl import gemm

    mode = mode or os.environ.get("DIFFUSERS_CITY_SPCONV_AUTOTUNE", "pinned")
    if mode not in ("pinned", "full"):
        raise ValueError(f"DIFFUSERS_CITY_SPCONV_AUTOTUNE must be 'pinned' or 'full', got {mode!r}")
    for name, want in _PINNED_CONFIGS:
        kernel = getattr(gemm, name)
        full = getattr(kernel, "_diffusers_city_full_configs", None) or list(kernel.configs)
        kernel._diffusers_city_full_configs = full
        if mode == "full":
            kernel.configs = full
        else:
            match = [c for c in full if c.kwargs == want and c.num_warps == 4 and c.num_stages == 3]
            kernel.configs = match[:1] or full[:1]
    return mode


configure_autotune()  # once, when the backend is first used


@dataclass
class _Tables:
    """One direction of spconv's implicit-GEMM tables (forward gather + backward gather + masks)."""

    pair_fwd: torch.Tensor
    pair_bwd: torch.Tensor
    mask_fwd: list
    mask_bwd: list
    argsort_fwd: list
    argsort_bwd: list
    masks: list
    num_out: int
    is_subm: bool

    @classmethod
    def from_result(cls, res: tuple, is_subm: bool) -> _Tables:
        return cls(res[2], res[3], res[4], res[5], res[6], res[7], res[8], res[2].shape[1], is_subm)

    def inverted(self) -> _Tables:
        return _Tables(
            self.pair_bwd,
            self.pair_fwd,
            self.mask_bwd,
            self.mask_fwd,
            self.argsort_bwd,
            self.argsort_fwd,
            self.masks,
            self.pair_bwd.shape[1],
            False,
        )


class _ImplicitGemm(torch.autograd.Function):
    """Autograd wrapper over spconv's implicit GEMM (no autocast casting of its own)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, t: _Tables) -> torch.Tensor:
        out, _, _ = spops.implicit_gemm(feats, weight, t.pair_fwd, t.mask_fwd, t.argsort_fwd, t.num_out, t.masks, True, t.is_subm)
        ctx.save_for_backward(feats, weight)
        ctx.tables = t
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        feats, weight = ctx.saved_tensors
        t: _Tables = ctx.tables
        din, dw = spops.implicit_gemm_backward(
            feats,
            weight,
            grad.contiguous(),
            t.pair_fwd,
            t.pair_bwd,
            t.mask_fwd,
            t.mask_bwd,
            t.argsort_fwd,
            t.argsort_bwd,
            mask_output_fwd=torch.Tensor(),
            masks=t.masks,
            mask_width=-1,
            is_subm=t.is_subm,
        )
        return din, dw, None


def _gemm(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, t: _Tables) -> torch.Tensor:
    dtype = compute_dtype(feats)
    feats = feats.to(dtype).contiguous()
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    if torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        out = _ImplicitGemm.apply(feats, weight, t)
        return out if bias is None else out + bias
    out, _, _ = spops.implicit_gemm(
        feats, weight, t.pair_fwd, t.mask_fwd, t.argsort_fwd, t.num_out, t.masks, False, t.is_subm, bias=bias
    )
    return out


def _bounds(x: SparseTensor) -> tuple[list[int], list[int]]:
    index = x.cache.get("index")
    if index is not None:
        return index.lo, index.hi
    bounds = x.cache.get("bounds")
    if bounds is None:
        xyz = x.coords[:, 1:].long()
        bounds = x.cache["bounds"] = tuple(torch.stack([xyz.amin(0), xyz.amax(0)]).tolist())
    return bounds


def _shifted(x: SparseTensor, kernel_size: int, stride: int, padding: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Non-negative int32 indices, spatial shape and the per-axis shift (a multiple of ``stride``)."""
    key = ("spconv", "frame", kernel_size, stride, padding)
    frame = x.cache.get(key)
    if frame is None:
        lo, hi = _bounds(x)
        margin = max(kernel_size - 1 - padding, 0)
        shift = [((l - margin) // stride) * stride for l in lo]
        shape = [h - m + kernel_size + stride for h, m in zip(hi, shift)]
        indices = x.coords.long()
        indices[:, 1:] -= torch.tensor(shift, device=x.device)
        frame = x.cache[key] = (indices.to(torch.int32).contiguous(), shape, shift)
    return frame


class SpconvBackend:
    """spconv-triton on CUDA; same semantics and weights as the torch reference."""

    name = "spconv"

    def _subm(self, x: SparseTensor, kernel_size: int, train: bool) -> _Tables:
        trained = x.cache.get(("spconv", "subm", kernel_size, True))
        if trained is not None or train:
            if trained is None:
                trained = x.cache[("spconv", "subm", kernel_size, True)] = self._subm_build(x, kernel_size, True)
            return trained
        key = ("spconv", "subm", kernel_size, False)
        if key not in x.cache:
            x.cache[key] = self._subm_build(x, kernel_size, False)
        return x.cache[key]

    def _subm_build(self, x: SparseTensor, kernel_size: int, train: bool) -> _Tables:
        indices, shape, _ = _shifted(x, 1, 1, 0)
        k = [kernel_size] * 3
        res = spops.get_indice_pairs_implicit_gemm(
            indices, x.batch_size, shape, _ALGO, k, [1] * 3, [kernel_size // 2] * 3, [1] * 3, [0] * 3,
            subm=True, transpose=False, is_train=train,
        )  # fmt: skip
        return _Tables.from_result(res, True)

    def _down(self, x: SparseTensor, kernel_size: int, stride: int, padding: int) -> tuple[_Tables, torch.Tensor]:
        key = ("spconv", "down", kernel_size, stride, padding)
        entry = x.cache.get(key)
        if entry is None:
            indices, shape, shift = _shifted(x, kernel_size, stride, padding)
            res = spops.get_indice_pairs_implicit_gemm(
                indices, x.batch_size, shape, _ALGO, [kernel_size] * 3, [stride] * 3, [padding] * 3, [1] * 3,
                [0] * 3, subm=False, transpose=False, is_train=True,
            )  # fmt: skip
            out = res[0].long()
            out[:, 1:] += torch.tensor([s // stride for s in shift], device=x.device)
            entry = x.cache[key] = (_Tables.from_result(res, False), out.to(torch.int32))
        return entry

    def build_map(self, x: SparseTensor, kind: str, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        if kind == "subm":
            self._subm(x, kernel_size, torch.is_grad_enabled())
        else:
            self._down(x, kernel_size, stride, padding)

    def subm_conv(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        train = torch.is_grad_enabled() and (x.feats.requires_grad or weight.requires_grad)
        return _gemm(x.feats, weight, bias, self._subm(x, weight.shape[1], train))

    def down_conv(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
        tables, out_coords = self._down(x, weight.shape[1], stride, padding)
        return _gemm(x.feats, weight, bias, tables), out_coords, {}

    def inverse_conv(
        self,
        x: SparseTensor,
        target: SparseTensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int,
        padding: int,
    ) -> torch.Tensor:
        tables, sites = self._down(target, weight.shape[1], stride, padding)
        feats = x.feats
        if sites is not x.coords:
            # x is not the strided output of target: place its features on those output sites
            # (coarse voxels elsewhere reach no target voxel, so they contribute nothing).
            key = ("spconv", "sites_index", weight.shape[1], stride, padding)
            if key not in target.cache:
                target.cache[key] = build_index(sites, target.batch_size)
            rows = target.cache[key].lookup(x.coords)
            found = rows >= 0
            feats = feats.new_zeros(sites.shape[0], feats.shape[1]).index_copy(0, rows[found], take_rows(feats, found))
        return _gemm(feats, weight, bias, tables.inverted())


SPCONV_BACKEND = SpconvBackend()
