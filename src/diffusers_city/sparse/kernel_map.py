"""Vectorized coordinate hashing and kernel maps (pure torch, any device).

Coordinates are hashed to int64 keys ``((b * Ex + x') * Ey + y') * Ez + z'`` relative to the
per-structure bounding box (``x' = x - lo_x``), so any int32 coordinates work as long as
``batch_size * Ex * Ey * Ez`` fits in int64. Keys are sorted once per structure; every lookup is
a ``searchsorted``. Key order is lexicographic in (b, x, y, z), which is also spconv's output
order, so both backends list the output sites of a strided convolution identically.

Convolution semantics (spconv's, without its grid boundary): kernel offset ``k`` in
``[0, K)^3`` (row-major, matching weight ``[out, kx, ky, kz, in]``) links input ``i`` to output
``o`` when
  - submanifold:  ``i = o + k - K // 2`` (outputs = inputs, odd K),
  - strided:      ``i = o * s - p + k`` (outputs = every ``o`` reached by an active input),
  - inverse:      the strided relation read backwards (outputs = the known finer structure).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tensor import SparseTensor

_KEY_LIMIT = 2**62


@dataclass
class CoordIndex:
    """Sorted int64 keys of one structure's coordinates, for O(log N) lookups."""

    lo: list[int]
    hi: list[int]
    batch_size: int
    sorted_keys: torch.Tensor  # [N] int64, ascending
    perm: torch.Tensor  # [N] int64: row of the i-th sorted key

    def extent(self) -> list[int]:
        """Per-axis extent of the key frame (raises if the keys would overflow int64)."""
        ext = [max(h - l + 1, 1) for l, h in zip(self.lo, self.hi)]
        if max(self.batch_size, 1) * ext[0] * ext[1] * ext[2] >= _KEY_LIMIT:
            raise ValueError(f"coordinate extent {ext} x batch {self.batch_size} is too large to hash into int64 keys")
        return ext

    def keys(self, coords: torch.Tensor) -> torch.Tensor:
        """int64 keys of ``coords`` [..., 4] that lie inside this index's bounds."""
        ext = self.extent()
        c = coords.long()
        key = c[..., 0]
        for axis in range(3):
            key = key * ext[axis] + (c[..., axis + 1] - self.lo[axis])
        return key

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Row of each query coordinate [..., 4] in this structure, -1 where absent."""
        n = self.sorted_keys.shape[0]
        if n == 0:
            return torch.full(coords.shape[:-1], -1, dtype=torch.long, device=coords.device)
        c = coords.long()
        lo = torch.tensor(self.lo, device=c.device)
        hi = torch.tensor(self.hi, device=c.device)
        xyz = c[..., 1:]
        inside = ((xyz >= lo) & (xyz <= hi)).all(-1) & (c[..., 0] >= 0) & (c[..., 0] < self.batch_size)
        clamped = torch.cat([c[..., :1].clamp(0, max(self.batch_size - 1, 0)), torch.minimum(torch.maximum(xyz, lo), hi)], -1)
        key = self.keys(clamped)
        pos = torch.searchsorted(self.sorted_keys, key).clamp_(max=n - 1)
        found = inside & (self.sorted_keys[pos] == key)
        return torch.where(found, self.perm[pos], torch.full_like(pos, -1))


def build_index(coords: torch.Tensor, batch_size: int) -> CoordIndex:
    """Hash and sort ``coords`` [N, 4] (one host sync for the bounds)."""
    if coords.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=coords.device)
        return CoordIndex([0, 0, 0], [0, 0, 0], batch_size, empty, empty)
    xyz = coords[:, 1:].long()
    lo, hi = torch.stack([xyz.amin(0), xyz.amax(0)]).tolist()
    index = CoordIndex(lo, hi, batch_size, xyz[:0, 0], xyz[:0, 0])
    index.sorted_keys, index.perm = torch.sort(index.keys(coords))
    return index


def coord_index(x: SparseTensor) -> CoordIndex:
    """The cached coordinate index of ``x``'s structure."""
    index = x.cache.get("index")
    if index is None:
        index = x.cache["index"] = build_index(x.coords, x.batch_size)
    return index


def kernel_offsets(kernel_size: int, device: torch.device) -> torch.Tensor:
    """[K^3, 3] int64 offsets in row-major order (the flattening of weight dims kx, ky, kz)."""
    r = torch.arange(kernel_size, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


@dataclass
class KernelMap:
    """Per kernel offset ``k``: input rows ``in_idx[k]`` feed output rows ``out_idx[k]``."""

    in_idx: list[torch.Tensor]
    out_idx: list[torch.Tensor]
    num_out: int

    def inverted(self, num_out: int) -> KernelMap:
        """The same links read the other way (for the inverse convolution)."""
        return KernelMap(self.out_idx, self.in_idx, num_out)


def _split_pairs(in_rows: torch.Tensor, num_out: int) -> KernelMap:
    """KernelMap of a ``[kv, M]`` table: ``in_rows[k, j]`` (or -1) feeds output ``j``."""
    valid = in_rows >= 0
    counts = valid.sum(1).tolist()
    _, out_rows = valid.nonzero(as_tuple=True)
    ins = in_rows[valid]
    return KernelMap(list(ins.split(counts)), list(out_rows.split(counts)), num_out)


def subm_map(x: SparseTensor, kernel_size: int) -> KernelMap:
    """Submanifold map: output ``o`` (every input site) gathers input ``o + k - K // 2``."""
    index = coord_index(x)
    offs = kernel_offsets(kernel_size, x.device) - kernel_size // 2
    q = x.coords.long().unsqueeze(0).repeat(offs.shape[0], 1, 1)
    q[..., 1:] += offs[:, None, :]
    return _split_pairs(index.lookup(q), x.num_voxels)


def down_map(x: SparseTensor, kernel_size: int, stride: int, padding: int) -> tuple[KernelMap, torch.Tensor, CoordIndex]:
    """Strided map: output ``o`` exists iff some active input ``i = o * s - p + k``.

    Returns the map, the output coords [M, 4] int32 sorted by (b, x, y, z), and their index.
    """
    index = coord_index(x)
    offs = kernel_offsets(kernel_size, x.device)
    c = x.coords.long()
    t = c[None, :, 1:] + padding - offs[:, None, :]  # [kv, N, 3]
    valid = (t.remainder(stride) == 0).all(-1)
    o = torch.div(t, stride, rounding_mode="floor")
    lo = [(l + padding - (kernel_size - 1)) // stride for l in index.lo]
    hi = [(h + padding) // stride for h in index.hi]
    out_index = CoordIndex(lo, hi, x.batch_size, c.new_zeros(0), c.new_zeros(0))
    full = torch.cat([c[None, :, :1].expand(offs.shape[0], -1, 1), o], -1)
    keys = out_index.keys(full)
    uniq, inverse = torch.unique(keys[valid], sorted=True, return_inverse=True)
    out_index.sorted_keys = uniq
    out_index.perm = torch.arange(uniq.shape[0], device=x.device)
    rows = torch.full(valid.shape, -1, dtype=torch.long, device=x.device)
    rows[valid] = inverse
    # rows[k, j] = output of input j under offset k; regroup as pairs (input j -> output rows[k, j]).
    valid_k = rows >= 0
    counts = valid_k.sum(1).tolist()
    _, in_rows = valid_k.nonzero(as_tuple=True)
    out_rows = rows[valid_k]
    kmap = KernelMap(list(in_rows.split(counts)), list(out_rows.split(counts)), uniq.shape[0])
    return kmap, _decode(uniq, out_index), out_index


def _decode(keys: torch.Tensor, index: CoordIndex) -> torch.Tensor:
    ext = index.extent()
    out = torch.empty(keys.shape[0], 4, dtype=torch.long, device=keys.device)
    rem = keys
    for axis in (2, 1, 0):
        out[:, axis + 1] = rem % ext[axis] + index.lo[axis]
        rem = rem // ext[axis]
    out[:, 0] = rem
    return out.to(torch.int32)


def inverse_map(x: SparseTensor, target: SparseTensor, kernel_size: int, stride: int, padding: int) -> KernelMap:
    """Inverse map: target site ``i`` gathers coarse voxel ``o`` of ``x`` with ``i = o * s - p + k``."""
    index = coord_index(x)
    offs = kernel_offsets(kernel_size, target.device)
    c = target.coords.long()
    t = c[None, :, 1:] + padding - offs[:, None, :]
    valid = (t.remainder(stride) == 0).all(-1)
    q = torch.cat([c[None, :, :1].expand(offs.shape[0], -1, 1), torch.div(t, stride, rounding_mode="floor")], -1)
    rows = index.lookup(q)
    rows = torch.where(valid, rows, torch.full_like(rows, -1))
    return _split_pairs(rows, target.num_voxels)


def unique_coords(coords: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``coords`` [M, 4] in (b, x, y, z) order (int32) and each row's position among them."""
    lo, hi = [0, 0, 0], [0, 0, 0]
    if coords.shape[0]:
        xyz = coords[:, 1:].long()
        lo, hi = torch.stack([xyz.amin(0), xyz.amax(0)]).tolist()
    empty = coords.new_zeros(0, dtype=torch.long)
    index = CoordIndex(lo, hi, batch_size, empty, empty)
    uniq, inverse = torch.unique(index.keys(coords), sorted=True, return_inverse=True)
    return _decode(uniq, index), inverse
