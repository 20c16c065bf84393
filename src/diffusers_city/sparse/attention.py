"""Sparse attention over variable-length token groups through ``scaled_dot_product_attention``.

Two groupings cover the sparse transformers of the three systems:

- window attention (EarthCrafter's sparse Swin blocks, TRELLIS-style): voxels of one batch item
  inside the same (optionally shifted) cubic window attend to each other;
- serialized attention (GaussianCity's PTv3-like point transformer, Sec. 3.3): points sorted
  along a space-filling curve (:mod:`.serialize`) and cut per batch item into patches of fixed
  size (1024 in GaussianCity); the last patch of an item may be shorter.

Cross-attention (EarthCrafter's flow models) lets the voxels of each batch item attend to that
item's condition tokens, a packed sequence of per-item length (:class:`CrossAttentionGroups`).

On CUDA all groups run unpadded through one varlen call of SDPA's memory-efficient kernel.
Elsewhere, and as the reference on the GPU, groups are packed into padded ``[G, L, heads, dim]``
batches bucketed by padded length (powers of two and their 3/4, so padding stays below 50% of a
group), each bucket one SDPA call with a key-padding mask only where it holds partial groups.
The plan (:class:`AttentionGroups`) depends only on the structure; modules cache it in
``SparseTensor.cache``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .nn import batch_index
from .serialize import ORDERS, serialize

if TYPE_CHECKING:
    from .tensor import SparseTensor

__all__ = [
    "AttentionGroups",
    "CrossAttentionGroups",
    "SerializedAttention",
    "SparseCrossAttention",
    "SparseTransformerBlock",
    "SparseWindowAttention",
    "cross_attention_groups",
    "grouped_attention",
    "grouped_cross_attention",
    "patch_lengths",
    "serialized_attention",
    "serialized_groups",
    "window_attention",
    "window_groups",
]


@dataclass(frozen=True)
class AttentionGroups:
    """Partition of ``N`` tokens into groups that attend within themselves.

    ``order`` lists the tokens group after group; ``lengths`` gives each group's token count. The
    two execution layouts derive from them on first use:

    - varlen (the CUDA path): ``cu_seqlens``, ``max_length`` and ``inverse`` feed one varlen
      attention kernel call;
    - padded buckets (the CPU path, and the reference on the GPU): ``gather_index`` holds bucket
      after bucket; bucket ``(G, L, mask)`` is ``G`` groups of padded length ``L`` (padding repeats
      a group's first token), ``mask`` ``[G, 1, 1, L]`` bool marks real keys, ``None`` when every
      group of the bucket fills it; ``scatter_index`` ``[N]`` is each token's slot.
    """

    order: torch.Tensor
    lengths: torch.Tensor
    length_bound: int | None = None
    """Known upper bound of the group lengths (e.g. the patch size): ``max_length`` without a sync."""

    @property
    def num_tokens(self) -> int:
        return self.order.numel()

    @property
    def num_groups(self) -> int:
        return self.lengths.numel()

    def useful_flops(self, heads: int, head_dim: int) -> int:
        """FLOPs of the unpadded attention: ``4 * sum(L_g^2) * head_dim`` per head."""
        return 4 * int((self.lengths.long() ** 2).sum()) * head_dim * heads

    @cached_property
    def inverse(self) -> torch.Tensor:
        """``[N]`` position of each token in ``order``."""
        return _inverse(self.order)

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """``[G + 1]`` int32 start of each group in ``order`` (and the end): the varlen kernel's
        cumulative sequence lengths."""
        return _cu_seqlens(self.lengths)

    @cached_property
    def max_length(self) -> int:
        """Longest group (one host sync), or ``length_bound`` where given."""
        return self.length_bound if self.length_bound is not None else int(self.lengths.max())

    def device_tensors(self) -> list[torch.Tensor]:
        """``[order, lengths, cu_seqlens, inverse]``: everything the varlen path reads on the device."""
        return [self.order, self.lengths, self.cu_seqlens, self.inverse]

    @classmethod
    def from_device_tensors(cls, tensors: list[torch.Tensor], length_bound: int | None) -> AttentionGroups:
        """Groups over given ``device_tensors`` (e.g. a CUDA graph's static buffers), none recomputed."""
        order, lengths, cu_seqlens, inverse = tensors
        groups = cls(order, lengths, length_bound)
        groups.__dict__.update(cu_seqlens=cu_seqlens, inverse=inverse)  # prime the cached properties
        return groups

    def can_pad(self, num_tokens: int, num_groups: int, max_length: int) -> bool:
        """Whether :meth:`padded` can reach these sizes: at least one filler per extra group, at
        most ``max_length`` per group."""
        fill, extra = num_tokens - self.num_tokens, num_groups - self.num_groups
        return 1 <= extra <= fill and -(-fill // extra) <= max_length

    def padded(self, num_tokens: int, num_groups: int, max_length: int) -> AttentionGroups:
        """These groups plus filler tokens ``N..num_tokens-1`` split over extra groups, to reach
        exactly ``num_tokens`` tokens in ``num_groups`` groups of at most ``max_length`` (static
        shapes for CUDA graphs). Every extra group gets at least one filler token.

        Raises:
            ValueError: if the fillers cannot fill the extra groups within those bounds.
        """
        fill, extra = num_tokens - self.num_tokens, num_groups - self.num_groups
        if not self.can_pad(num_tokens, num_groups, max_length):
            raise ValueError(
                f"cannot pad {self.num_tokens} tokens in {self.num_groups} groups to {num_tokens} tokens in "
                f"{num_groups} groups of at most {max_length}"
            )
        device = self.order.device
        lengths = fill // extra + (torch.arange(extra, device=device) < fill % extra).to(self.lengths.dtype)
        order = torch.cat([self.order, torch.arange(self.num_tokens, num_tokens, device=device, dtype=self.order.dtype)])
        return AttentionGroups(order, torch.cat([self.lengths, lengths]), max_length)

    @cached_property
    def _padded(self) -> tuple[torch.Tensor, tuple[tuple[int, int, torch.Tensor | None], ...], torch.Tensor]:
        return _pack(self.order, self.lengths)

    @property
    def gather_index(self) -> torch.Tensor:
        return self._padded[0]

    @property
    def buckets(self) -> tuple[tuple[int, int, torch.Tensor | None], ...]:
        return self._padded[1]

    @property
    def scatter_index(self) -> torch.Tensor:
        return self._padded[2]


def _inverse(order: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def _cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)


def _padded_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Round up to the ladder 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and their 3/4)."""
    pow2 = torch.ones_like(lengths)
    big = lengths > 1
    pow2[big] = 2 ** torch.ceil(torch.log2(lengths[big].double())).long()
    three_quarters = pow2 * 3 // 4
    return torch.where((pow2 >= 4) & (lengths <= three_quarters), three_quarters, pow2)


def _pack(
    order: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, tuple[tuple[int, int, torch.Tensor | None], ...], torch.Tensor]:
    """Padded-bucket layout ``(gather_index, buckets, scatter_index)`` of groups listed in ``order``."""
    device = order.device
    starts = torch.cumsum(lengths, 0) - lengths
    padded = _padded_lengths(lengths)
    base = torch.empty(lengths.numel(), dtype=torch.long, device=device)
    buckets, slots = [], []
    offset = 0
    for length in torch.unique(padded).tolist():
        members = torch.nonzero(padded == length).squeeze(1)
        count = members.numel()
        base[members] = offset + torch.arange(count, device=device) * length
        offset += count * length
        slot, valid = _slots(starts, lengths, members, length)
        slots.append(slot)
        buckets.append((count, length, None if bool(valid.all()) else valid[:, None, None, :]))
    gather_index = order[torch.cat(slots)] if slots else order
    return gather_index, tuple(buckets), _scatter_index(order, lengths, starts, base)


def _pack_cross(
    q_order: torch.Tensor, q_lengths: torch.Tensor, kv_index: torch.Tensor, kv_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int, int, torch.Tensor | None], ...], torch.Tensor]:
    """Padded-bucket layout ``(q_gather_index, kv_gather_index, buckets, scatter_index)`` of
    :class:`CrossAttentionGroups`: groups bucketed by their pair of padded query and key lengths."""
    device = q_order.device
    q_starts = torch.cumsum(q_lengths, 0) - q_lengths
    kv_starts = torch.cumsum(kv_lengths, 0) - kv_lengths
    pairs, bucket_of = torch.unique(
        torch.stack([_padded_lengths(q_lengths), _padded_lengths(kv_lengths)], 1), dim=0, return_inverse=True
    )
    base = torch.empty(q_lengths.numel(), dtype=torch.long, device=device)
    buckets, q_slots, kv_slots = [], [], []
    offset = 0
    for i, (length_q, length_k) in enumerate(pairs.tolist()):
        members = torch.nonzero(bucket_of == i).squeeze(1)
        count = members.numel()
        base[members] = offset + torch.arange(count, device=device) * length_q
        offset += count * length_q
        q_slots.append(_slots(q_starts, q_lengths, members, length_q)[0])
        slot, valid = _slots(kv_starts, kv_lengths, members, length_k)
        kv_slots.append(slot)
        buckets.append((count, length_q, length_k, None if bool(valid.all()) else valid[:, None, None, :]))
    return (
        q_order[torch.cat(q_slots)],
        kv_index[torch.cat(kv_slots)],
        tuple(buckets),
        _scatter_index(q_order, q_lengths, q_starts, base),
    )


def _slots(starts: torch.Tensor, lengths: torch.Tensor, members: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (in ``order``) filling ``length`` padded slots of each group in ``members``, padding
    repeating a group's first token, and ``valid`` ``[G, length]``: which slots are real."""
    slot = torch.arange(length, device=starts.device)
    valid = slot[None, :] < lengths[members][:, None]
    first = starts[members][:, None]
    return torch.where(valid, first + slot[None, :], first).flatten(), valid


def _scatter_index(order: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``[N]`` padded slot of each token: its group's first slot ``base`` plus its rank in the group."""
    device = order.device
    group_sorted = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    rank = torch.arange(order.numel(), device=device) - starts[group_sorted]
    scatter_index = torch.empty(order.numel(), dtype=torch.long, device=device)
    scatter_index[order] = base[group_sorted] + rank
    return scatter_index


def _as_triple(name: str, value: int | tuple[int, int, int], positive: bool) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or a triple of ints, got {value!r}")
    if positive and any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return values  # type: ignore[return-value]


def _check_index(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be an integer tensor")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def window_groups(
    coords: torch.Tensor, window_size: int | tuple[int, int, int], shift: int | tuple[int, int, int] = 0
) -> AttentionGroups:
    """Group voxels by (batch item, window): window index ``floor((xyz + shift) / window_size)``.

    ``coords`` is ``[N, 4]`` int ``(b, x, y, z)`` in the units ``window_size`` is given in; a
    shifted Swin layer uses ``shift = window_size // 2``.
    """
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must have shape [N, 4] (b, x, y, z), got {getattr(coords, 'shape', None)}")
    _check_index("coords", coords, (coords.shape[0], 4))
    size = torch.tensor(_as_triple("window_size", window_size, positive=True), device=coords.device)
    offset = torch.tensor(_as_triple("shift", shift, positive=False), device=coords.device)
    coords = coords.long()
    n = coords.shape[0]
    if n == 0:
        return AttentionGroups(coords.new_empty(0), coords.new_empty(0))
    windows = torch.div(coords[:, 1:] + offset, size, rounding_mode="floor")
    cells = torch.cat([coords[:, :1], windows], dim=1)
    cells = cells - cells.min(dim=0).values
    extent = (cells.max(dim=0).values + 1).tolist()
    if extent[0] * extent[1] * extent[2] * extent[3] >= 1 << 63:
        raise ValueError("coords span too many windows to index with int64; raise window_size")
    key = ((cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]) * extent[3] + cells[:, 3]
    order = torch.argsort(key, stable=True)
    _, lengths = torch.unique_consecutive(key[order], return_counts=True)
    return AttentionGroups(order, lengths)


def serialized_groups(keys: torch.Tensor, batch_idx: torch.Tensor, patch_size: int) -> AttentionGroups:
    """Group points into patches: sort each batch item's points by ``keys`` (stable) and cut the
    sequence into ``patch_size`` runs; an item's last patch holds the remainder."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if not isinstance(keys, torch.Tensor) or keys.dim() != 1:
        raise ValueError(f"keys must have shape [N], got {getattr(keys, 'shape', None)}")
    _check_index("keys", keys, tuple(keys.shape))
    _check_index("batch_idx", batch_idx, tuple(keys.shape))
    if keys.numel() == 0:
        empty = keys.new_empty(0, dtype=torch.long)
        return AttentionGroups(empty, empty)
    by_key = torch.argsort(keys, stable=True)
    order = by_key[torch.argsort(batch_idx[by_key], stable=True)]
    _, item_counts = torch.unique_consecutive(batch_idx[order], return_counts=True)
    return AttentionGroups(order, patch_lengths(item_counts, patch_size), patch_size)


def patch_lengths(item_counts: torch.Tensor, patch_size: int, num_patches: int | None = None) -> torch.Tensor:
    """Lengths of the patches of consecutive items of ``item_counts`` tokens: each item's full
    ``patch_size`` patches, then its remainder (none where it is zero). ``num_patches``, their
    total where already known, saves the host sync of sizing the result."""
    patches = torch.div(item_counts, patch_size, rounding_mode="floor")
    lengths = torch.stack([torch.full_like(item_counts, patch_size), item_counts - patches * patch_size], 1)
    repeats = torch.stack([patches, (lengths[:, 1] > 0).long()], 1)
    return torch.repeat_interleave(lengths.flatten(), repeats.flatten(), output_size=num_patches)


@dataclass(frozen=True)
class CrossAttentionGroups:
    """Plan of cross-attention from ``N`` query tokens to ``M`` key tokens packed item after item:
    the queries of batch item ``b`` attend to the keys of item ``b`` (built by
    :func:`cross_attention_groups`).

    One group per batch item with queries; items without queries are left out (their keys get
    zero gradient). ``q_order`` lists the queries group after group and ``q_lengths`` counts them;
    ``kv_index`` lists each group's keys as rows of the keys with one zero row appended (row
    ``num_keys``) and ``kv_lengths`` counts them. The group of an item without keys holds that
    zero key and value alone, so its queries get exactly zero output and zero gradient on both
    layouts, where an empty softmax would give NaN; no group is empty on either side.

    Layouts as for :class:`AttentionGroups`: varlen (``cu_seqlens_q``, ``cu_seqlens_k``,
    ``max_length_q``, ``max_length_k``, ``inverse``) and padded buckets: ``q_gather_index`` and
    ``kv_gather_index`` hold bucket after bucket; bucket ``(G, L_q, L_k, mask)`` is ``G`` groups
    of ``L_q`` queries and ``L_k`` keys, padded, with ``mask`` ``[G, 1, 1, L_k]`` marking real
    keys (``None`` where all are); ``scatter_index`` ``[N]`` is each query's slot. A bucket pairs
    a padded query length with a padded key length, so there are at most as many as groups.
    """

    q_order: torch.Tensor
    q_lengths: torch.Tensor
    kv_index: torch.Tensor
    kv_lengths: torch.Tensor
    num_keys: int

    @property
    def num_queries(self) -> int:
        return self.q_order.numel()

    @cached_property
    def inverse(self) -> torch.Tensor:
        """``[N]`` position of each query in ``q_order``."""
        return _inverse(self.q_order)

    @cached_property
    def cu_seqlens_q(self) -> torch.Tensor:
        return _cu_seqlens(self.q_lengths)

    @cached_property
    def cu_seqlens_k(self) -> torch.Tensor:
        return _cu_seqlens(self.kv_lengths)

    @cached_property
    def max_length_q(self) -> int:
        return int(self.q_lengths.max())

    @cached_property
    def max_length_k(self) -> int:
        return int(self.kv_lengths.max())

    @cached_property
    def _padded(self) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int, int, torch.Tensor | None], ...], torch.Tensor]:
        return _pack_cross(self.q_order, self.q_lengths, self.kv_index, self.kv_lengths)

    @property
    def q_gather_index(self) -> torch.Tensor:
        return self._padded[0]

    @property
    def kv_gather_index(self) -> torch.Tensor:
        return self._padded[1]

    @property
    def buckets(self) -> tuple[tuple[int, int, int, torch.Tensor | None], ...]:
        return self._padded[2]

    @property
    def scatter_index(self) -> torch.Tensor:
        return self._padded[3]


def cross_attention_groups(batch_idx: torch.Tensor, context_lengths: torch.Tensor) -> CrossAttentionGroups:
    """Plan cross-attention from queries of batch items ``batch_idx`` ``[N]`` to keys packed item
    after item, ``context_lengths[b]`` ``[B]`` of them for item ``b`` (zero allowed)."""
    for name, t, length in (("batch_idx", batch_idx, "N"), ("context_lengths", context_lengths, "B")):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name} must have shape [{length}], got {getattr(t, 'shape', None)}")
        _check_index(name, t, tuple(t.shape))
    device = batch_idx.device
    batch_idx = batch_idx.long()
    context_lengths = context_lengths.to(device, torch.long)
    num_items = context_lengths.numel()
    if num_items and int(context_lengths.min()) < 0:
        raise ValueError(f"context_lengths must be >= 0, got {context_lengths.tolist()}")
    if batch_idx.numel() and not 0 <= int(batch_idx.min()) <= int(batch_idx.max()) < num_items:
        raise ValueError(f"batch_idx must lie in [0, {num_items}): context_lengths has one entry per batch item")
    q_counts = torch.bincount(batch_idx, minlength=num_items)
    items = torch.nonzero(q_counts).squeeze(1)
    lengths = context_lengths[items]
    kv_lengths = lengths.clamp(min=1)
    num_keys, total = (int(t.sum()) for t in (context_lengths, kv_lengths))
    group = torch.repeat_interleave(torch.arange(items.numel(), device=device), kv_lengths, output_size=total)
    rank = torch.arange(total, device=device) - (torch.cumsum(kv_lengths, 0) - kv_lengths)[group]
    first = (torch.cumsum(context_lengths, 0) - context_lengths)[items]
    kv_index = torch.where(lengths[group] > 0, first[group] + rank, num_keys)
    q_order = torch.argsort(batch_idx, stable=True)
    return CrossAttentionGroups(q_order, q_counts[items], kv_index, kv_lengths, num_keys)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cross: bool = False) -> None:
    """Shapes ``[N, heads, dim]``; ``cross``: ``k, v`` have their own length ``M``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            length = "M" if cross and name != "q" else "N"
            raise ValueError(f"{name} must have shape [{length}, heads, dim], got {getattr(t, 'shape', None)}")
    if cross and k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must have the same M, got {k.shape[0]} and {v.shape[0]}")
    if not cross and not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"q, k, v must have the same N, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if not q.shape[1] == k.shape[1] == v.shape[1]:
        raise ValueError(f"q, k, v must have the same number of heads, got {q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[2]} and {k.shape[2]}")


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: AttentionGroups,
    scale: float | None = None,
    varlen: bool | None = None,
) -> torch.Tensor:
    """Softmax attention inside each group of ``groups``; ``q, k, v`` are ``[N, heads, dim]``,
    returns ``[N, heads, dim_v]``.

    ``varlen`` picks the layout: one varlen call of SDPA's memory-efficient kernel over the
    unpadded groups (CUDA only; the default there) or padded length buckets (the default
    elsewhere, and the reference the varlen path is tested against on the GPU)."""
    _check_qkv(q, k, v)
    if groups.num_tokens != q.shape[0]:
        raise ValueError(f"groups were built for {groups.num_tokens} tokens, q has {q.shape[0]}")
    if q.shape[0] == 0:
        return v.new_empty(v.shape)
    if q.is_cuda if varlen is None else varlen:
        return _varlen_attention(q, k, v, groups, scale)
    # index_select, not q[index]: its backward is an index_add, not a sort-based index_put.
    q, k, v = (t.index_select(0, groups.gather_index) for t in (q, k, v))
    buckets = ((count, length, length, mask) for count, length, mask in groups.buckets)
    return _bucket_attention(q, k, v, buckets, scale).index_select(0, groups.scatter_index)


def _bucket_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    buckets: Iterable[tuple[int, int, int, torch.Tensor | None]],
    scale: float | None,
) -> torch.Tensor:
    """One SDPA call per bucket ``(G, L_q, L_k, mask)`` of gathered ``q`` and ``k, v`` rows (bucket
    after bucket, ``G * L_q`` and ``G * L_k`` rows); returns the packed ``[sum G * L_q, heads, dim_v]``."""
    heads, dim_v = v.shape[1], v.shape[2]
    outputs = []
    q_offset = kv_offset = 0
    for count, length_q, length_k, mask in buckets:
        qb = q[q_offset : q_offset + count * length_q].unflatten(0, (count, length_q)).transpose(1, 2)
        kb, vb = (t[kv_offset : kv_offset + count * length_k].unflatten(0, (count, length_k)).transpose(1, 2) for t in (k, v))
        q_offset += count * length_q
        kv_offset += count * length_k
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        outputs.append(out.transpose(1, 2).reshape(count * length_q, heads, dim_v))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: AttentionGroups, scale: float | None
) -> torch.Tensor:
    """All groups in one varlen call of SDPA's memory-efficient CUDA kernel (no padding)."""
    qs, ks, vs = (t.index_select(0, groups.order) for t in (q, k, v))
    cu, longest = groups.cu_seqlens, groups.max_length
    return _varlen_kernel(qs, ks, vs, cu, cu, longest, longest, scale).index_select(0, groups.inverse)


def _varlen_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float | None,
) -> torch.Tensor:
    """Segment ``i`` of ``q`` (rows ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]``) attends to segment ``i``
    of ``k, v``; ``[T, heads, dim]`` in, ``[T_q, heads, dim_v]`` out.

    This is the op that nested-tensor SDPA dispatches to, called directly: measured on an H200,
    the nested-tensor wrapper cost more host time per layer than the kernel itself."""
    if not q.is_cuda:
        raise ValueError("varlen attention runs on CUDA only; use varlen=False on the CPU")
    needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out = torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu_seqlens_q, cu_seqlens_k, max_q, max_k, 0.0, 0, needs_lse, scale=scale
    )[0]
    return out[0]


def grouped_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: CrossAttentionGroups,
    scale: float | None = None,
    varlen: bool | None = None,
) -> torch.Tensor:
    """Softmax attention of each batch item's queries over that item's keys (see
    :class:`CrossAttentionGroups`): ``q`` ``[N, heads, dim]``, ``k, v`` ``[M, heads, dim]``,
    returns ``[N, heads, dim_v]``, zero for the queries of an item without keys.

    ``varlen`` picks the layout as in :func:`grouped_attention`: one varlen kernel call with
    separate query and key lengths (CUDA only; the default there) or padded buckets."""
    _check_qkv(q, k, v, cross=True)
    if groups.num_queries != q.shape[0]:
        raise ValueError(f"groups were built for {groups.num_queries} queries, q has {q.shape[0]}")
    if groups.num_keys != k.shape[0]:
        raise ValueError(f"groups were built for {groups.num_keys} keys, k has {k.shape[0]}")
    if q.shape[0] == 0:
        return v.new_empty(0, *v.shape[1:])
    k, v = (F.pad(t, (0, 0, 0, 0, 0, 1)) for t in (k, v))  # row M: the zero key/value of items without keys
    if q.is_cuda if varlen is None else varlen:
        qs = q.index_select(0, groups.q_order)
        ks, vs = (t.index_select(0, groups.kv_index) for t in (k, v))
        out = _varlen_kernel(
            qs, ks, vs, groups.cu_seqlens_q, groups.cu_seqlens_k, groups.max_length_q, groups.max_length_k, scale
        )
        return out.index_select(0, groups.inverse)
    q = q.index_select(0, groups.q_gather_index)
    k, v = (t.index_select(0, groups.kv_gather_index) for t in (k, v))
    return _bucket_attention(q, k, v, groups.buckets, scale).index_select(0, groups.scatter_index)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coords: torch.Tensor,
    window_size: int | tuple[int, int, int],
    shift: int | tuple[int, int, int] = 0,
) -> torch.Tensor:
    """(Shifted) window attention: tokens attend within their batch item's window (see
    :func:`window_groups`). ``q, k, v``: ``[N, heads, dim]``, ``coords``: ``[N, 4]`` int."""
    _check_qkv(q, k, v)
    if isinstance(coords, torch.Tensor) and coords.dim() == 2 and coords.shape[0] != q.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but q has N={q.shape[0]}")
    return grouped_attention(q, k, v, window_groups(coords, window_size, shift))


def serialized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor,
    batch_idx: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """Patch attention along a serialization: tokens attend within their ``patch_size`` patch of
    their batch item's ``keys``-sorted sequence (see :func:`serialized_groups`)."""
    _check_qkv(q, k, v)
    if isinstance(keys, torch.Tensor) and keys.dim() == 1 and keys.shape[0] != q.shape[0]:
        raise ValueError(f"keys has {keys.shape[0]} entries but q has N={q.shape[0]}")
    return grouped_attention(q, k, v, serialized_groups(keys, batch_idx, patch_size))


_Plan = TypeVar("_Plan", AttentionGroups, CrossAttentionGroups)


def _cached_groups(x: SparseTensor, key: tuple, build: Callable[[], _Plan]) -> _Plan:
    cache = getattr(x, "cache", None)
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


class _SparseSelfAttention(nn.Module):
    """Fused qkv projection, grouped SDPA and output projection on ``SparseTensor`` features."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads <= 0 or dim <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, x: SparseTensor, groups: AttentionGroups) -> SparseTensor:
        feats = x.feats
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {list(feats.shape)}")
        n = feats.shape[0]
        q, k, v = self.qkv(feats).view(n, 3, self.num_heads, self.dim // self.num_heads).unbind(1)
        out = grouped_attention(q, k, v, groups)
        return x.replace(self.proj(out.reshape(n, self.dim)))


class SparseWindowAttention(_SparseSelfAttention):
    """Multi-head self-attention inside cubic windows of ``window_size`` voxels (EarthCrafter's
    sparse Swin attention); ``shift=True`` offsets the windows by ``window_size // 2``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int, int],
        shift: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.window_size = _as_triple("window_size", window_size, positive=True)
        self.shift = tuple(s // 2 for s in self.window_size) if shift else (0, 0, 0)

    def forward(self, x: SparseTensor) -> SparseTensor:
        groups = _cached_groups(
            x,
            ("attention", "window", self.window_size, self.shift),
            lambda: window_groups(x.coords, self.window_size, self.shift),
        )
        return self.attend(x, groups)


class SerializedAttention(_SparseSelfAttention):
    """Multi-head self-attention inside ``patch_size`` patches of each batch item's points,
    serialized in ``order`` at ``grid_size`` (GaussianCity's point transformer, PTv3-like)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_size: int = 1024,
        order: str = "z",
        grid_size: int = 1,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size <= 0:
            raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
        self.patch_size = patch_size
        self.order = order
        self.grid_size = grid_size

    @property
    def cache_key(self) -> tuple:
        """Key of this layer's groups in ``SparseTensor.cache`` (shared by layers of equal settings)."""
        return ("attention", "serialized", self.order, self.grid_size, self.patch_size)

    def groups(self, x: SparseTensor) -> AttentionGroups:
        """The patches of ``x`` (cached on its structure)."""

        def build() -> AttentionGroups:
            keys = serialize(x.coords, self.order, self.grid_size)
            return serialized_groups(keys, x.coords[:, 0], self.patch_size)

        return _cached_groups(x, self.cache_key, build)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.attend(x, self.groups(x))


class SparseCrossAttention(nn.Module):
    """Multi-head cross-attention from the voxels of a ``SparseTensor`` to a variable-length
    condition sequence per batch item: ``forward(x, context, context_lengths)`` with ``context``
    ``[M, context_dim]`` packing the items' condition tokens one item after another and
    ``context_lengths`` ``[B]`` counting them; the voxels of item ``b`` attend to item ``b``'s.

    The voxels of an item without condition tokens get zero output (not the output projection's
    bias), so a residual around this layer leaves them as they are: no condition tokens, no
    cross-attention. The plan is cached in ``x.cache`` per structure and ``context_lengths``.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads <= 0 or dim <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim <= 0:
            raise ValueError(f"context_dim must be a positive int, got {context_dim!r}")
        self.dim = dim
        self.context_dim = context_dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: SparseTensor, context: torch.Tensor, context_lengths: torch.Tensor) -> SparseTensor:
        feats = x.feats
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {list(feats.shape)}")
        if not isinstance(context, torch.Tensor) or context.dim() != 2 or context.shape[1] != self.context_dim:
            raise ValueError(f"context must have shape [M, {self.context_dim}], got {getattr(context, 'shape', None)}")
        _check_index("context_lengths", context_lengths, (x.batch_size,))
        groups = _cached_groups(
            x,
            ("attention", "cross", tuple(context_lengths.tolist())),
            lambda: cross_attention_groups(batch_index(x), context_lengths),
        )
        if groups.num_keys != context.shape[0]:
            raise ValueError(f"context_lengths sum to {groups.num_keys} but context has {context.shape[0]} rows")
        n, m, head_dim = feats.shape[0], context.shape[0], self.dim // self.num_heads
        q = self.to_q(feats).view(n, self.num_heads, head_dim)
        k, v = self.to_kv(context).view(m, 2, self.num_heads, head_dim).unbind(1)
        out = self.proj(grouped_cross_attention(q, k, v, groups).reshape(n, self.dim))
        has_context = (context_lengths.to(out.device) > 0).index_select(0, batch_index(x))
        return x.replace(out * has_context[:, None])


def _self_attention(
    dim: int,
    num_heads: int,
    attention: str,
    window_size: int | tuple[int, int, int],
    shift: bool,
    patch_size: int,
    order: str,
    grid_size: int,
    qkv_bias: bool,
) -> _SparseSelfAttention:
    """The self-attention layer of a transformer block: ``"window"`` or ``"serialized"``."""
    if attention == "window":
        return SparseWindowAttention(dim, num_heads, window_size, shift, qkv_bias)
    if attention == "serialized":
        return SerializedAttention(dim, num_heads, patch_size, order, grid_size, qkv_bias)
    raise ValueError(f"attention must be 'window' or 'serialized', got {attention!r}")


def _mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    """The MLP of a transformer block: Linear, tanh-GELU, Linear, ``int(dim * mlp_ratio)`` hidden."""
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class SparseTransformerBlock(nn.Module):
    """Pre-LN transformer block on a ``SparseTensor``: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``.

    ``attention="window"`` gives EarthCrafter's sparse Swin layer (``window_size``, ``shift``);
    ``attention="serialized"`` gives a GaussianCity / PTv3 point-transformer layer
    (``patch_size``, ``order``, ``grid_size``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
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
        self.attn = _self_attention(dim, num_heads, attention, window_size, shift, patch_size, order, grid_size, qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = x.feats + self.attn(x.replace(self.norm1(x.feats))).feats
        return x.replace(h + self.mlp(self.norm2(h)))
