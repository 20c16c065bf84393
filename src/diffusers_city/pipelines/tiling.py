"""Tiled generation of areas larger than one model tile: the plan of tiles and the latent hook
every pipeline shares (knows no paper).

The area raster is cut into overlapping square tiles whose starts are multiples of ``align``
pixels (the model's coarsest latent cell), so the latent cells of neighbouring tiles coincide.
Tiles run in four waves by the parity of their (row, column): with an overlap of at most half a
tile, tiles of one wave never overlap, so they are independent (any process may run any of them)
and every tile of a later wave overlaps only finished tiles.

A tile is conditioned on its finished neighbours by RePaint-style replacement (Lugmayr et al.,
CVPR 2022) in the latent space of every stage: after each scheduler step the latents the
neighbours ended with at the same area cells are re-noised to the next timestep by the
scheduler's own forward process (``add_noise``; ``scale_noise`` for flow matching) and written
over the tile's latents there; after the last step they are copied exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..sparse import SparseTensor

__all__ = ["KnownRegion", "Tile", "TileLatents", "TilePlan", "TileStage", "dense_cells", "plan_tiles", "tile_pixels"]

_KEY_BIAS = 1 << 20  # area cells are packed into one int64 key: 21 bits per axis, +-1M cells


@dataclass(frozen=True)
class Tile:
    """One tile: grid index (``row``, ``col``), first pixel (``r0``, ``c0``) of its ``size`` x
    ``size`` window in the padded area raster, and the pixels it owns (``own``: row and column
    ranges ``(r_lo, r_hi, c_lo, c_hi)`` of the area; neighbours split their overlap in the middle)."""

    row: int
    col: int
    r0: int
    c0: int
    size: int
    own: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"tile_{self.row:04d}_{self.col:04d}"

    @property
    def wave(self) -> int:
        return 2 * (self.row % 2) + self.col % 2

    def seed(self, base: int) -> int:
        """The tile's own seed from the run's ``base`` seed and its grid index (never from the
        order or the process it runs in)."""
        digest = hashlib.sha256(f"{int(base)}:{self.row}:{self.col}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class TilePlan:
    """Tiles of ``tile`` px stepping by ``tile - overlap`` px over an area of ``shape`` px."""

    shape: tuple[int, int]
    tile: int
    overlap: int
    align: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles along rows and columns."""
        return tuple(1 if n <= self.tile else math.ceil((n - self.tile) / self.stride) + 1 for n in self.shape)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """The raster the tiles cover exactly (the area, edge-padded at its far sides)."""
        return tuple((g - 1) * self.stride + self.tile for g in self.grid)

    def _owned(self, k: int, count: int, n: int) -> tuple[int, int]:
        lo = 0 if k == 0 else min(n, k * self.stride + self.overlap // 2)
        hi = n if k == count - 1 else min(n, (k + 1) * self.stride + self.overlap // 2)
        return lo, hi

    def tiles(self) -> list[Tile]:
        rows, cols = self.grid
        out = []
        for i in range(rows):
            for j in range(cols):
                own = (*self._owned(i, rows, self.shape[0]), *self._owned(j, cols, self.shape[1]))
                out.append(Tile(i, j, i * self.stride, j * self.stride, self.tile, own))
        return out

    def waves(self) -> list[list[Tile]]:
        """The tiles by wave (row parity, column parity), in order; empty waves left out."""
        tiles = self.tiles()
        return [w for w in ([t for t in tiles if t.wave == k] for k in range(4)) if w]

    def neighbours(self, tile: Tile) -> list[Tile]:
        """The tiles overlapping ``tile`` that run in an earlier wave."""
        return [
            t
            for t in self.tiles()
            if t.wave < tile.wave and abs(t.row - tile.row) <= 1 and abs(t.col - tile.col) <= 1 and t != tile
        ]


def plan_tiles(shape: Sequence[int], tile: int, overlap: int, align: int = 1) -> TilePlan:
    """The :class:`TilePlan` of an area of ``shape`` px (``ValueError`` naming a bad size):
    ``tile`` and ``overlap`` are multiples of ``align`` with ``0 <= overlap <= tile / 2``."""
    for name, value in (("tile", tile), ("align", align)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer of pixels, got {value!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be an integer of pixels in 0..{tile // 2} (half a tile), got {overlap!r}")
    if tile % align or overlap % align:
        raise ValueError(
            f"tile ({tile} px) and overlap ({overlap} px) must be multiples of {align} px (the model's coarsest latent cell)"
        )
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"the area must be a 2D raster of at least 1x1 px, got shape {shape}")
    return TilePlan(shape, int(tile), int(overlap), int(align))


def tile_pixels(extent_m: float, cell_m: float, meters_per_pixel: float, overlap: float = 0.25) -> tuple[int, int, int]:
    """``(tile, overlap, align)`` in pixels for a model tile of ``extent_m`` metres whose coarsest
    latent cell is ``cell_m`` metres, on a map of ``meters_per_pixel``: ``align`` is the fewest
    pixels spanning whole cells, the tile the most aligned pixels within ``extent_m``, the overlap
    about ``overlap`` of it (at least one ``align``, at most half a tile)."""
    limit = int(extent_m / meters_per_pixel + 1e-6)
    align = next(
        (n for n in range(1, limit + 1) if abs(n * meters_per_pixel / cell_m - round(n * meters_per_pixel / cell_m)) < 1e-6), None
    )
    if align is None or 2 * align > limit:
        raise ValueError(
            f"at {meters_per_pixel:g} m/px no tile of whole {cell_m:g} m latent cells fits twice in the model's "
            f"{extent_m:g} m tile; resample the map to a resolution dividing {cell_m:g} m"
        )
    tile = limit // align * align
    lap = min(max(align, round(tile * overlap / align) * align), tile // 2 // align * align)
    return tile, lap, align


def dense_cells(shape: Sequence[int]) -> torch.Tensor:
    """``[X*Y*Z, 3]`` indices of a dense ``(X, Y, Z)`` grid, in the order of ``tensor.reshape``."""
    axes = [torch.arange(n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _keys(cells: torch.Tensor) -> torch.Tensor:
    c = cells.long().cpu() + _KEY_BIAS
    if bool((c < 0).any()) or bool((c >= 2 * _KEY_BIAS).any()):
        raise ValueError(f"area cells beyond +-{_KEY_BIAS} per axis: the area is too large for one latent frame")
    return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]


def _rows(latents: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` rows of a stage's latents: sparse ``[N, C]`` as they are, dense ``[1, C, X, Y, Z]`` cell by cell."""
    return latents if latents.ndim == 2 else latents[0].flatten(1).T


@dataclass
class KnownRegion:
    """The clean latents a stage must agree with where ``mask`` is set (the stage's layout)."""

    latents: torch.Tensor
    mask: torch.Tensor

    def blend(
        self, scheduler: Any, latents: torch.Tensor, next_timestep: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``latents`` with the known region replaced by the known latents re-noised to
        ``next_timestep`` (the known latents themselves after the last step, ``None``)."""
        known = self.latents.to(latents)
        if next_timestep is not None:
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            t = next_timestep.reshape(1).to(latents.device)
            if hasattr(scheduler, "scale_noise"):  # flow matching: (1 - sigma) x0 + sigma noise
                known = scheduler.scale_noise(known, t, noise)
            else:
                known = scheduler.add_noise(known, noise, t)
        return torch.where(self.mask.to(latents.device), known, latents)


class TileLatents:
    """The latents one tile shares with its neighbours, per stage, at integer cells of the area's
    latent frame (cell ``k`` of a stage with cells of ``s`` metres spans ``anchor + k s``).

    ``known``: ``{stage: (cells [M, 3], latents [M, C])}`` the finished neighbours ended with;
    ``recorded``: the same for this tile, filled as its stages finish. ``inpaint=False`` records
    only (tiles generated independently: the baseline of the seam measurement).
    """

    def __init__(self, anchor: Sequence[float], known: dict | None = None, inpaint: bool = True):
        self.anchor = tuple(float(a) for a in anchor)
        self.known = known or {}
        self.inpaint = inpaint
        self.recorded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def offset(self, corner: Sequence[float], cell: float) -> torch.Tensor:
        """Area cell of a tile grid whose cell (0, 0, 0) starts at world ``corner`` (``ValueError``
        unless it lies on the area's cells)."""
        steps = [(c - a) / cell for c, a in zip(corner, self.anchor)]
        if any(abs(s - round(s)) > 1e-4 for s in steps):
            raise ValueError(f"tile corner {tuple(corner)} is not on the area's {cell:g} m latent cells from {self.anchor}")
        return torch.tensor([round(s) for s in steps], dtype=torch.long)

    def snap_z(self, z: float, cell: float) -> float:
        """``z`` lowered onto the area's vertical cells (a tile's base height, shared by neighbours on flat ground)."""
        return self.anchor[2] + math.floor((z - self.anchor[2]) / cell + 1e-6) * cell

    def stage(self, name: str, cells: torch.Tensor) -> TileStage:
        """The hook of one stage whose latents sit at area ``cells`` ``[N, 3]`` (one per latent row)."""
        return TileStage(self, name, cells)

    def dense_stage(self, name: str, shape: Sequence[int], corner: Sequence[float], cell: float) -> TileStage:
        """The hook of a dense stage of latent grid ``shape`` (x, y, z) with ``cell`` metre cells from world ``corner``."""
        return self.stage(name, dense_cells(shape) + self.offset(corner, cell))

    def sparse_stage(self, name: str, voxels: SparseTensor, corner: Sequence[float]) -> TileStage:
        """The hook of a sparse stage on the voxels of ``voxels`` (batch 1, docs/design.md level
        convention: its cell 0 starts at world ``corner``)."""
        return self.stage(name, voxels.coords[:, 1:].long().cpu() + self.offset(corner, voxels.voxel_size))


@dataclass
class TileStage:
    """One stage of a tile: what `pipeline_utils.denoising_loop` asks for its known region and
    gives back when the stage is done."""

    tile: TileLatents
    name: str
    cells: torch.Tensor

    def region(self, latents: torch.Tensor) -> KnownRegion | None:
        """The part of the stage's ``latents`` (sparse ``[N, C]`` or dense ``[1, C, X, Y, Z]``, rows
        in the order of ``cells``) that the neighbours fixed; ``None`` when none is."""
        if not self.tile.inpaint or self.name not in self.tile.known:
            return None
        known_cells, known_latents = self.tile.known[self.name]
        keys, order = torch.sort(_keys(known_cells), stable=True)  # the earliest neighbour wins a shared cell
        query = _keys(self.cells)
        pos = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        hit = keys[pos] == query
        if not bool(hit.any()):
            return None
        rows = _rows(latents)
        values = torch.zeros(rows.shape, dtype=rows.dtype)
        values[hit] = known_latents[order[pos[hit]]].to(rows.dtype)
        mask = hit[:, None]
        if latents.ndim != 2:  # back to [1, C, X, Y, Z]
            values, mask = (v.T.reshape(1, -1, *latents.shape[2:]) for v in (values, mask))
        return KnownRegion(values.to(latents.device), mask.to(latents.device))

    def record(self, latents: torch.Tensor) -> None:
        """Keep the finished stage's latents for the tiles that will overlap this one."""
        self.tile.recorded[self.name] = (self.cells.long().cpu(), _rows(latents).float().cpu())
