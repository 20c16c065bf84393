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

from ...sparse.attention import AttentionGroups, SerializedAttention
from ...sparse.tensor import SparseTensor
from .layers import grid_pool

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
        """Pool ``voxels [N, 3]`` of batch items ``batch_index [N]`` ``levels - 1`` times and
        serialize every level as ``attention`` does."""
        coords = [torch.cat([batch_index[:, None], voxels], 1).long()]
        parents, counts = [], []
        for _ in range(levels - 1):
            coarse, parent, count = grid_pool(coords[-1])
            coords.append(coarse)
            parents.append(parent)
            counts.append(count)
        groups = []
        for c in coords:
            probe = SparseTensor(c.new_empty(c.shape[0], 0, dtype=torch.float32), c.to(torch.int32), batch_size=batch_size, validate=False)
            groups.append(attention.groups(probe))
        return cls([c.to(torch.int32) for c in coords], parents, counts, groups, batch_size, attention.cache_key)

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
                counts.append(torch.bincount(parent, minlength=nxt))
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
