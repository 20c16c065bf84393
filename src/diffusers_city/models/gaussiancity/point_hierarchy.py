"""The structure half of GaussianCity's point transformer (Sec. 3.4): the levels of the point U-Net
(grid pooling by 2 per level), each level's serialized attention patches, and the parent index
linking a level to the next. Built once per point set, before any feature is computed, so the
feature pass that follows reads only index tensors: padded to fixed capacities, it has static
shapes and can be replayed as a CUDA graph (``GaussianCityPipeline.enable_cuda_graphs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...sparse.attention import AttentionGroups, SerializedAttention, patch_lengths
from ...sparse.serialize import curve_code, key_bits
from ...sparse.tensor import SparseTensor
from ...utils.device import upload

__all__ = ["HierarchyCapacity", "PointHierarchy"]


@dataclass(frozen=True)
class HierarchyCapacity:
    """Fixed sizes a hierarchy is padded to: ``points[l]`` rows and ``groups[l]`` attention
    patches at level ``l``, patches of at most ``patch_size`` points."""

    points: tuple[int, ...]
    groups: tuple[int, ...]
    patch_size: int

    def grown_for(self, other: HierarchyCapacity) -> HierarchyCapacity:
        """The elementwise larger of two capacities (for the same levels and patch size)."""
        return HierarchyCapacity(
            tuple(map(max, self.points, other.points)), tuple(map(max, self.groups, other.groups)), self.patch_size
        )


@dataclass
class PointHierarchy:
    """Levels of the point U-Net over one point set.

    Attributes:
        coords: per level ``[N_l, 4]`` int32 ``(batch item, x, y, z)``; level 0 are the points.
        parents: per level but the last, ``[N_l]`` index of each point's cell at level ``l + 1``.
        counts: per level but the first, ``[N_l]`` points pooled into each cell.
        groups: per level, its serialized attention patches.
        batch_size: batch items (style codes); padding rows use item ``batch_size``.
        cache_key: the key under which the attention layers look up their patches.
    """

    coords: list[torch.Tensor]
    parents: list[torch.Tensor]
    counts: list[torch.Tensor]
    groups: list[AttentionGroups]
    batch_size: int
    cache_key: tuple

    @classmethod
    def build(
        cls, voxels: torch.Tensor, batch_index: torch.Tensor, batch_size: int, attention: SerializedAttention, levels: int
    ) -> PointHierarchy:
        """Pool ``voxels [N, 3]`` (int) of batch items ``batch_index [N]`` in ``0..batch_size-1``
        ``levels - 1`` times by 2 (PTv3 grid pooling) and cut every level into ``attention``'s
        serialized patches.

        Every level is sorted straight from the points' coarsened coordinates, so the whole build
        waits for the GPU twice (the coordinate range, then all levels' sizes), not a few times
        per level. Level 0 keeps the points' order; a coarser level stores its cells in serialized
        order (ties lexicographic), which gives the patches ``attention.groups`` gives that level.
        """
        if voxels.shape[0] == 0:
            raise ValueError("a point hierarchy needs at least one point")
        batch, voxels = batch_index.long(), voxels.long()
        coords = torch.cat([batch[:, None], voxels], 1)
        lo, hi = torch.stack([coords.amin(0), coords.amax(0)]).tolist()
        if lo[0] < 0 or hi[0] >= batch_size:
            raise ValueError(f"batch_index must lie in [0, {batch_size}), got values in [{lo[0]}, {hi[0]}]")
        patch = attention.patch_size
        rows, orders, item_counts = [], [], []
        for level in range(levels):
            # Cells of this level relative to their minimum, as serialize() shifts them.
            cells = (voxels >> level) - upload(torch.tensor([v >> level for v in lo[1:]]), voxels.device)
            span = max((h >> level) - (v >> level) for v, h in zip(lo[1:], hi[1:]))
            bits = key_bits(span // attention.grid_size, hi[0])
            grid_cells = torch.div(cells, attention.grid_size, rounding_mode="floor")
            keys = (batch << (3 * bits)) | curve_code(grid_cells, attention.order, bits)
            if level == 0:  # every point is a row; equal keys keep the points' order
                order = torch.argsort(keys, stable=True)
                rows.append(torch.arange(len(batch), device=batch.device))
                orders.append(order)
                first = torch.ones_like(batch)
            else:  # one row per occupied cell, rows in serialized order
                lex_bits = key_bits(span, hi[0])
                lex = (batch << (3 * lex_bits)) | curve_code(cells, "grid", lex_bits)
                order = torch.argsort(lex, stable=True)
                order = order[torch.argsort(keys[order], stable=True)]
                sorted_lex = lex[order]
                first = torch.ones_like(sorted_lex)
                first[1:] = (sorted_lex[1:] != sorted_lex[:-1]).long()
                rows.append(torch.empty_like(order).scatter_(0, order, torch.cumsum(first, 0) - 1))
                orders.append(None)
            counts = torch.zeros(batch_size, dtype=torch.long, device=batch.device)
            item_counts.append(counts.index_add_(0, batch[order], first))
        totals = [c.sum() for c in item_counts]
        totals += [torch.div(c + patch - 1, patch, rounding_mode="floor").sum() for c in item_counts]
        totals = torch.stack(totals).tolist()
        sizes, num_patches = totals[:levels], totals[levels:]

        level_coords, parents, counts, groups = [], [], [], []
        for level, (row, size) in enumerate(zip(rows, sizes)):
            cells = torch.cat([batch[:, None], voxels >> level], 1).to(torch.int32)
            level_coords.append(cells if level == 0 else cells.new_empty(size, 4).index_copy_(0, row, cells))
            order = orders[level] if orders[level] is not None else torch.arange(size, device=batch.device)
            groups.append(AttentionGroups(order, patch_lengths(item_counts[level], patch, num_patches[level]), patch))
            if level + 1 < levels:
                parent = row.new_empty(size).index_copy_(0, row, rows[level + 1])
                parents.append(parent)
                counts.append(_cell_counts(parent, sizes[level + 1]))
        return cls(level_coords, parents, counts, groups, batch_size, attention.cache_key)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(c.shape[0] for c in self.coords)

    def level(self, index: int, feats: torch.Tensor) -> SparseTensor:
        """Level ``index`` with features ``feats``, its patches in the cache the attention reads."""
        x = SparseTensor(feats, self.coords[index], batch_size=self.batch_size + 1, validate=False)
        x.cache[self.cache_key] = self.groups[index]
        return x

    def capacity(self, headroom: float = 0.125, align: int = 64) -> HierarchyCapacity:
        """Capacities that fit this hierarchy with ``headroom`` spare rows per level, so frames of
        similar size fit the same capacity. The spare rows form extra patches, one at least."""
        patch = self.groups[0].max_length
        points, groups = [], []
        for n, g in zip(self.sizes, self.groups):
            cap = math.ceil((n * (1 + headroom) + 1) / align) * align
            extra = min(cap - n, math.ceil((cap - n) / patch) + 16)
            points.append(cap)
            groups.append(g.num_groups + extra)
        return HierarchyCapacity(tuple(points), tuple(groups), patch)

    def fits(self, capacity: HierarchyCapacity) -> bool:
        """Whether :meth:`padded` can pad this hierarchy to ``capacity``."""
        if len(capacity.points) != len(self.coords):
            return False
        return all(g.can_pad(n, k, capacity.patch_size) for g, n, k in zip(self.groups, capacity.points, capacity.groups))

    def padded(self, capacity: HierarchyCapacity) -> PointHierarchy:
        """This hierarchy with every level padded to ``capacity`` (see :meth:`fits`): padding rows
        belong to batch item ``batch_size``, pool into the next level's last (padding) row and
        attend only among themselves."""
        if not self.fits(capacity):
            raise ValueError(f"hierarchy of sizes {self.sizes} does not fit capacity {capacity}")
        coords, parents, counts, groups = [], [], [], []
        for i, (c, cap) in enumerate(zip(self.coords, capacity.points)):
            pad = c.new_zeros(cap - c.shape[0], 4)
            pad[:, 0] = self.batch_size
            coords.append(torch.cat([c, pad]))
            groups.append(self.groups[i].padded(cap, capacity.groups[i], capacity.patch_size))
            if i < len(self.parents):
                nxt = capacity.points[i + 1]
                parent = torch.cat([self.parents[i], self.parents[i].new_full((cap - c.shape[0],), nxt - 1)])
                parents.append(parent)
                counts.append(_cell_counts(parent, nxt))
        return PointHierarchy(coords, parents, counts, groups, self.batch_size, self.cache_key)

    def device_tensors(self) -> list[torch.Tensor]:
        """Every index tensor of the hierarchy, in a fixed order (see :meth:`from_device_tensors`)."""
        out = [*self.coords, *self.parents, *self.counts]
        for g in self.groups:
            out.extend(g.device_tensors())
        return out

    def from_device_tensors(self, tensors: Sequence[torch.Tensor]) -> PointHierarchy:
        """A hierarchy shaped like this one over ``tensors`` (e.g. a CUDA graph's static buffers)."""
        levels = len(self.coords)
        it = iter(tensors)
        coords = [next(it) for _ in range(levels)]
        parents = [next(it) for _ in range(levels - 1)]
        counts = [next(it) for _ in range(levels - 1)]
        groups = [AttentionGroups.from_device_tensors([next(it) for _ in range(4)], g.max_length) for g in self.groups]
        return PointHierarchy(coords, parents, counts, groups, self.batch_size, self.cache_key)


def _cell_counts(parent: torch.Tensor, size: int) -> torch.Tensor:
    """Rows pooled into each of ``size`` cells (``bincount`` without its host sync)."""
    return torch.zeros(size, dtype=parent.dtype, device=parent.device).index_add_(0, parent, torch.ones_like(parent))
