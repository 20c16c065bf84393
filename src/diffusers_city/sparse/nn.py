"""Sparse 3D layers on ``SparseTensor``: convolutions, subdivide/prune, norms, activations, ResBlock.

Convolution weights are ``.weight`` ``[out, kx, ky, kz, in]`` (the spconv 2.x layout) and
``.bias`` ``[out]``, so a state dict moves between the torch and spconv backends unchanged.
Metadata follows the voxel conventions of docs/design.md (see each layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backend import get_backend
from .tensor import SparseTensor, take_rows


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class _SparseConvBase(nn.Module):
    """Holds the weight ``[out, K, K, K, in]`` and bias, initialised like spconv (kaiming-uniform, a=sqrt(5))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.out_channels = _check_int("out_channels", out_channels, 1)
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**3)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input(self, x: SparseTensor) -> None:
        name = type(self).__name__
        if not isinstance(x, SparseTensor):
            raise ValueError(f"{name} expects a SparseTensor, got {type(x).__name__}")
        if x.num_channels != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} channels, got {x.num_channels}")
        if x.device != self.weight.device:
            raise ValueError(f"{name} weights are on {self.weight.device} but the input is on {x.device}")
        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{name} weights are {self.weight.dtype} but the features are {x.dtype} (no autocast active)")

    def _pointwise(self, feats: torch.Tensor) -> torch.Tensor:
        """Apply the kernel's first offset as a 1x1 map (exact for K=1; shapes empty inputs)."""
        w = self.weight.reshape(self.out_channels, -1, self.in_channels)[:, 0]
        return F.linear(feats, w, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"


class SubMConv3d(_SparseConvBase):
    """Submanifold convolution: outputs on exactly the input voxels, same metadata.

    ``out[o] = bias + sum_k W[k] x[o + k - K // 2]`` over active neighbours (equal to a dense
    ``conv3d`` with padding K // 2 read at the active sites). ``kernel_size`` must be odd.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        if isinstance(kernel_size, int) and kernel_size % 2 == 0:
            raise ValueError(f"SubMConv3d needs an odd kernel_size (centred kernel), got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        if self.kernel_size == 1 or x.num_voxels == 0:
            return x.replace(self._pointwise(x.feats))
        return x.replace(get_backend(x.device).subm_conv(x, self.weight, self.bias))


class SparseConv3d(_SparseConvBase):
    """Strided (downsampling) convolution with spconv's output sites.

    Output voxel ``o`` exists iff some active input ``i = o * stride - padding + k``,
    ``k in [0, K)^3``; ``out[o] = bias + sum_k W[k] x[o * stride - padding + k]`` (a dense
    ``conv3d`` read at those sites, without grid boundaries). Metadata: ``voxel_size * stride``,
    ``stride * stride``, origin = centre of the receptive field of output (0, 0, 0) =
    ``origin + ((K - 1) / 2 - padding) * voxel_size``. With ``kernel_size == stride`` (default 2)
    output voxel ``o`` covers inputs ``2o .. 2o + 1``: the coarser level of docs/design.md.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        stride: int = 2,
        bias: bool = True,
        *,
        padding: int = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.stride = _check_int("stride", stride, 1)
        self.padding = _check_int("padding", padding, 0)
        if padding >= kernel_size:
            raise ValueError(f"padding ({padding}) must be smaller than kernel_size ({kernel_size})")

    def output_metadata(self, x: SparseTensor) -> dict:
        shift = ((self.kernel_size - 1) / 2 - self.padding) * x.voxel_size
        return {
            "voxel_size": x.voxel_size * self.stride,
            "origin": tuple(o + shift for o in x.origin),
            "stride": x.stride * self.stride,
        }

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        meta = self.output_metadata(x)
        if x.num_voxels == 0:
            return x.derive(self._pointwise(x.feats), x.coords, **meta)
        feats, coords, cache = get_backend(x.device).down_conv(x, self.weight, self.bias, self.stride, self.padding)
        out = x.derive(feats, coords, **meta)
        # The output structure is a function of x's (the backend caches its coords on x), so its
        # cache lives on x too: a U-Net run again on x.replace(...) (every DDIM step) reuses the
        # coarse levels' kernel maps and attention plans instead of rebuilding them.
        key = ("child_cache", self.kernel_size, self.stride, self.padding)
        entry = x.cache.get(key)
        if entry is None or entry[0] is not coords:
            entry = x.cache[key] = (coords, cache)
        out.cache = entry[1]
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}"


class SparseInverseConv3d(SparseConv3d):
    """Inverse of ``SparseConv3d`` with the same (kernel_size, stride, padding): back to a known
    finer structure ``target``, whose voxels and metadata the output takes (and whose cache it shares).

    ``out[i] = bias + sum_k W[k] x[o]`` over coarse voxels ``o`` of ``x`` with
    ``i = o * stride - padding + k`` (a dense ``conv_transpose3d`` read at the target sites).
    """

    def forward(self, x: SparseTensor, target: SparseTensor) -> SparseTensor:  # type: ignore[override]
        self._check_input(x)
        if not isinstance(target, SparseTensor):
            raise ValueError(f"target must be a SparseTensor, got {type(target).__name__}")
        if target.batch_size != x.batch_size or target.device != x.device:
            raise ValueError(
                f"target must match x in batch_size and device, got {target.batch_size}/{target.device} "
                f"vs {x.batch_size}/{x.device}"
            )
        if x.num_voxels == 0 or target.num_voxels == 0:
            feats = self._pointwise(x.feats.new_zeros(target.num_voxels, self.in_channels))
            return target.replace(feats)
        backend = get_backend(x.device)
        return target.replace(backend.inverse_conv(x, target, self.weight, self.bias, self.stride, self.padding))


def subdivide(x: SparseTensor) -> SparseTensor:
    """Split every voxel into its 8 children at half size, copying its features.

    Child ``2c + d``, ``d in {0, 1}^3`` (the 8 children of one parent are consecutive rows, ``d``
    row-major). Metadata: ``voxel_size / 2``, ``origin - voxel_size / 4`` (children centres sit at
    the parent centre +- voxel_size / 4, the level convention of docs/design.md), ``stride // 2``
    (at least 1).
    """
    if not isinstance(x, SparseTensor):
        raise ValueError(f"subdivide expects a SparseTensor, got {type(x).__name__}")
    d = torch.stack(torch.meshgrid(*[torch.arange(2, device=x.device)] * 3, indexing="ij"), -1).reshape(8, 3)
    coords = x.coords.repeat_interleave(8, 0)
    coords[:, 1:] = coords[:, 1:] * 2 + d.repeat(x.num_voxels, 1).to(torch.int32)
    return x.derive(
        x.feats.repeat_interleave(8, 0),
        coords,
        voxel_size=x.voxel_size / 2,
        origin=tuple(o - x.voxel_size / 4 for o in x.origin),
        stride=max(x.stride // 2, 1),
    )


def prune(x: SparseTensor, mask: torch.Tensor) -> SparseTensor:
    """Keep the voxels where ``mask`` [N] (bool) is True; metadata and batch_size unchanged."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (x.num_voxels,):
        raise ValueError(f"prune needs a bool mask of shape [{x.num_voxels}], got {getattr(mask, 'shape', mask)!r}")
    if mask.device != x.device:
        raise ValueError(f"mask is on {mask.device} but the tensor is on {x.device}")
    return x.derive(take_rows(x.feats, mask), x.coords[mask])


def batch_index(x: SparseTensor) -> torch.Tensor:
    """Batch index of every voxel as int64 [N] (cached on the structure)."""
    idx = x.cache.get("batch_index")
    if idx is None:
        idx = x.cache["batch_index"] = x.coords[:, 0].long()
    return idx


class SparseGroupNorm(nn.Module):
    """GroupNorm per batch item: statistics over all voxels of one item and the channels of one group."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.num_channels != self.num_channels:
            raise ValueError(f"SparseGroupNorm expects {self.num_channels} channels, got {x.num_channels}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        n, g = x.num_voxels, self.num_groups
        h = x.feats.to(dtype).reshape(n, g, self.num_channels // g)
        b = batch_index(x)
        count = torch.zeros(x.batch_size, dtype=dtype, device=x.device).index_add_(0, b, h.new_ones(n))
        count = (count * h.shape[-1]).clamp_min(1)[:, None]
        zeros = h.new_zeros(x.batch_size, g)
        mean = zeros.index_add(0, b, h.sum(-1)) / count
        centred = h - take_rows(mean, b)[..., None]
        var = zeros.index_add(0, b, centred.square().sum(-1)) / count
        out = (centred * torch.rsqrt(take_rows(var, b) + self.eps)[..., None]).reshape(n, self.num_channels)
        if self.weight is not None:
            out = out * self.weight.to(dtype) + self.bias.to(dtype)
        return x.replace(out.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class SparseLayerNorm(nn.LayerNorm):
    """LayerNorm over each voxel's channels (token-wise, as in transformers); never mixes batch items."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseActivation(nn.Module):
    """Apply any elementwise module (``nn.SiLU()``, ``nn.GELU()``, ...) to the features."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.activation(x.feats))


class SparseSiLU(SparseActivation):
    def __init__(self) -> None:
        super().__init__(nn.SiLU())


class SparseReLU(SparseActivation):
    def __init__(self) -> None:
        super().__init__(nn.ReLU())


class SparseGELU(SparseActivation):
    def __init__(self) -> None:
        super().__init__(nn.GELU())


class SparseLinear(nn.Linear):
    """Per-voxel linear layer on the features."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` dividing ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class SparseResBlock(nn.Module):
    """ADM-style residual block: GroupNorm-SiLU-SubMConv, + projected timestep embedding,
    GroupNorm-SiLU-Dropout-SubMConv (zero-initialised), plus a 1x1 skip when channels differ.

    ``forward(x, emb=None)`` with ``emb`` [B, emb_channels] (one row per batch item).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int | None = None,
        *,
        kernel_size: int = 3,
        num_groups: int = 32,
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.norm1 = SparseGroupNorm(group_count(in_channels, num_groups), in_channels, eps)
        self.conv1 = SubMConv3d(in_channels, out_channels, kernel_size)
        self.emb_proj = nn.Linear(emb_channels, out_channels) if emb_channels else None
        self.norm2 = SparseGroupNorm(group_count(out_channels, num_groups), out_channels, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = SubMConv3d(out_channels, out_channels, kernel_size)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = SubMConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: SparseTensor, emb: torch.Tensor | None = None) -> SparseTensor:
        if (emb is None) != (self.emb_proj is None):
            raise ValueError("pass emb exactly when the block was built with emb_channels")
        if emb is not None and emb.shape != (x.batch_size, self.emb_channels):
            raise ValueError(f"emb must have shape [{x.batch_size}, {self.emb_channels}], got {tuple(emb.shape)}")
        h = self.conv1(x.replace(F.silu(self.norm1(x).feats)))
        if emb is not None:
            h = h.replace(h.feats + take_rows(self.emb_proj(F.silu(emb)), batch_index(x)).to(h.feats.dtype))
        h = self.conv2(h.replace(self.dropout(F.silu(self.norm2(h).feats))))
        skip = x if self.skip is None else self.skip(x)
        return x.replace(skip.feats + h.feats)
