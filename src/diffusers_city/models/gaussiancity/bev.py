"""BEV points: GaussianCity's compact scene representation (Sec. 3.2-3.3).

A layout is a semantic map and a height field (plus an optional ground height). Every pixel is
extruded into a column of points from its ground to its top; a per-class *density map* keeps
only every ``stride``-th pixel and level of a class (road 2, facade 1, roof 1, vegetation 2,
construction 1, water 4, ground 2 px), and only the hollow shell of the extruded solid is kept:
the top surface plus the levels that a lower neighbour (a height change, a map edge) exposes.
Building footprints (roof pixels) become instances by connected components; their exposed walls
are ``facade`` points, their tops ``roof`` points.

Units: a layout is handled in *voxel units* where one unit is ``meters_per_pixel`` metres on all
three axes. Pixel ``(i, j)`` covers ``x in [j, j + 1)``, ``y in [i, i + 1)``; a point at height
level ``k`` sits at ``z = k``. World coordinates follow docs/design.md:
``world = origin + voxel * meters_per_pixel`` (so pixel centres are at ``(j + 0.5, i + 0.5)``).

Frames: BEV points, visibility and everything the decoders see are in the *layout frame*, metres
from the layout's ``origin`` (``voxel * meters_per_pixel``). The decoders encode these positions,
as in training (procedural layouts sit at origin 0), and float32 holds them to the millimetre
where georeferenced world coordinates (6e6 m: ~0.5 m steps) would not. World coordinates enter
and leave through :meth:`BEVLayout.layout_cameras` (world cameras in) and
:meth:`BEVLayout.world_gaussians` (Gaussians out, for export).

Visibility (Eq. 2) casts one ray per image pixel through the extruded solid (a 2D DDA over the
height field, with a pyramid of coarse max-height grids to skip empty space) and keeps the first hit of each
ray; hits are mapped to their BEV point through a hashed (sorted int64 key) set of point columns.
Only a window of the layout around the cameras (bounded by ``max_distance``) is ever moved to the
compute device, and rays are processed in chunks, so memory does not grow with the layout size.
Rays traverse a maximum mipmap of the heights (hierarchical empty-space skipping, ``render.heightfield_march``):
one Triton kernel on CUDA, vectorized lockstep torch elsewhere; the rest is vectorized torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ...data.classes import CLASSES, FACADE, GROUND, NUM_CLASSES, ROAD, ROOF, WATER
from ...render.cameras import Cameras
from ...render.gaussians import Gaussians
from ...render.heightfield_march import march, slab
from ...utils.device import upload

__all__ = [
    "DEFAULT_CLASS_STRIDES",
    "FLAT_CLASSES",
    "BEVLayout",
    "BEVPoints",
    "ViewCache",
    "ViewTables",
    "bev_points",
    "visible_bev_points",
    "visible_bev_points_per_camera",
]

DEFAULT_CLASS_STRIDES: tuple[int, ...] = (2, 2, 1, 1, 2, 4, 1, 1)
"""Sampling stride in pixels per class id (ground/zone 2, road 2, facade 1, roof 1, vegetation 2,
water 4, vehicle 1, construction 1): GaussianCity's binary density map."""

FLAT_CLASSES: tuple[int, ...] = (GROUND, ROAD, WATER)
"""Classes whose Gaussians are thin in z (flat surfaces)."""

_FAR_BELOW = -(1 << 40)
MAX_ABS_HEIGHT_M = 20_000.0
"""Largest height magnitude accepted, in metres: every surface on Earth lies within +-11 km of sea
level, so beyond +-20 km a map is not in metres (or is broken), and its columns of points would
not fit in memory."""


def _as_map(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.array(value, copy=True))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a 2D array, got {type(value).__name__}") from err
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2D [H, W] map, got shape {list(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(t.shape)})")
    return t


def _as_int_map(name: str, value: Any) -> torch.Tensor:
    t = _as_map(name, value)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError(f"{name} must hold integer ids, got non-integer values")
    return t.long()


def _as_height_map(name: str, value: Any) -> torch.Tensor:
    t = _as_map(name, value)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
    t = t.double()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i, j = torch.nonzero(bad)[0].tolist()
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf values (first at row {i}, column {j})")
    far = t.abs() > MAX_ABS_HEIGHT_M
    if bool(far.any()):
        i, j = torch.nonzero(far)[0].tolist()
        raise ValueError(
            f"{name} holds {int(far.sum())} heights beyond +-{MAX_ABS_HEIGHT_M:g} m (first {t[i, j].item():g} at row {i}, "
            f"column {j}): heights must be metres"
        )
    return t


def _label_buildings(semantic: torch.Tensor, instance: torch.Tensor | None) -> torch.Tensor:
    """Building instance ids 1..I on roof pixels (0 elsewhere): the given ids where present, connected
    components (4-connectivity) of the remaining roof pixels otherwise (CityDreamer's Eq. 3)."""
    from scipy import ndimage

    roof = (semantic == ROOF).numpy()
    out = np.zeros(roof.shape, dtype=np.int64)
    next_id = 1
    if instance is not None:
        given = instance.numpy()
        ids = np.unique(given[roof & (given > 0)])
        if ids.size:
            lookup = np.searchsorted(ids, given[roof & (given > 0)])
            out[roof & (given > 0)] = lookup + 1
            next_id = ids.size + 1
        roof = roof & (given <= 0)
    labels, count = ndimage.label(roof)
    out[labels > 0] = labels[labels > 0] + next_id - 1
    return torch.from_numpy(out)


@dataclass
class BEVLayout:
    """A validated BEV layout on the CPU (built with :meth:`from_maps` / :meth:`from_scene`).

    Attributes:
        semantic: ``[H, W]`` long class ids (table ``diffusers_city.data.classes.CLASSES``).
        top: ``[H, W]`` long top level per pixel, ``round(height / meters_per_pixel)``.
        bottom: ``[H, W]`` long lowest level per pixel (ground, never above ``top``).
        instance: ``[H, W]`` long building instance ids (1..I on roof pixels, 0 elsewhere).
        meters_per_pixel: metres per pixel and per height level.
        origin: world position of the layout's corner ``(x, y, z)``.
        class_strides: sampling stride (pixels) per class id.
        instance_min / instance_max: ``[I + 1, 3]`` float bounding boxes in voxel units; row 0
            covers the whole layout (the box of background points).
    """

    semantic: torch.Tensor
    top: torch.Tensor
    bottom: torch.Tensor
    instance: torch.Tensor
    meters_per_pixel: float
    origin: tuple[float, float, float]
    class_strides: tuple[int, ...]
    instance_min: torch.Tensor
    instance_max: torch.Tensor

    @classmethod
    def from_maps(
        cls,
        semantic: Any,
        height: Any,
        ground: Any = None,
        instance: Any = None,
        meters_per_pixel: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        class_strides: Sequence[int] = DEFAULT_CLASS_STRIDES,
    ) -> BEVLayout:
        """Validate the maps (``ValueError`` naming the problem) and precompute instances.

        ``height`` and ``ground`` are in metres; ``ground=None`` extrudes columns from z = 0 (or
        from their top where the top is below 0). ``instance`` ids are used on roof pixels where
        positive; remaining roof pixels are labelled by connected components.
        """
        sem = _as_int_map("semantic_map", semantic)
        hgt = _as_height_map("height_map", height)
        if sem.shape != hgt.shape:
            raise ValueError(f"semantic_map {list(sem.shape)} and height_map {list(hgt.shape)} differ in size")
        bad = (sem < 0) | (sem >= NUM_CLASSES)
        if bool(bad.any()):
            ids = torch.unique(sem[bad])[:8].tolist()
            raise ValueError(f"semantic_map holds unknown class ids {ids}; known: 0..{NUM_CLASSES - 1} {CLASSES}")
        mpp = float(meters_per_pixel)
        if not math.isfinite(mpp) or mpp <= 0:
            raise ValueError(f"meters_per_pixel must be a positive finite number, got {meters_per_pixel!r}")
        org = tuple(float(v) for v in origin)
        if len(org) != 3 or not all(math.isfinite(v) for v in org):
            raise ValueError(f"origin must be 3 finite numbers (x, y, z), got {origin!r}")
        strides = tuple(class_strides)
        if len(strides) != NUM_CLASSES or any(isinstance(s, bool) or int(s) != s or s < 1 for s in strides):
            raise ValueError(f"class_strides must be {NUM_CLASSES} positive ints (one per class), got {class_strides!r}")
        strides = tuple(int(s) for s in strides)
        grd = None
        if ground is not None:
            grd = _as_height_map("ground_map", ground)
            if grd.shape != hgt.shape:
                raise ValueError(f"ground_map {list(grd.shape)} and height_map {list(hgt.shape)} differ in size")
        inst = None
        if instance is not None:
            inst = _as_int_map("instance_map", instance)
            if inst.shape != hgt.shape:
                raise ValueError(f"instance_map {list(inst.shape)} and height_map {list(hgt.shape)} differ in size")
        top = torch.round(hgt / mpp).long()
        bottom = torch.zeros_like(top) if grd is None else torch.round(grd / mpp).long()
        bottom = torch.minimum(bottom, top)
        buildings = _label_buildings(sem, inst)
        inst_min, inst_max = _instance_boxes(buildings, top, bottom)
        return cls(sem, top, bottom, buildings, mpp, org, strides, inst_min, inst_max)  # type: ignore[arg-type]

    @classmethod
    def from_scene(cls, scene: Any, class_strides: Sequence[int] = DEFAULT_CLASS_STRIDES) -> BEVLayout:
        """Layout of a ``diffusers_city.data.CityScene`` (its height, semantic, ground, instance)."""
        return cls.from_maps(
            scene.semantic,
            scene.height,
            ground=getattr(scene, "ground", None),
            instance=getattr(scene, "instance", None),
            meters_per_pixel=scene.meters_per_pixel,
            origin=tuple(scene.origin),
            class_strides=class_strides,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.semantic.shape)  # type: ignore[return-value]

    @property
    def num_instances(self) -> int:
        """Number of building instances (ids 1..num_instances)."""
        return self.instance_min.shape[0] - 1

    @cached_property
    def z_range(self) -> tuple[float, float]:
        """``(lowest bottom, highest top + 1)`` levels: the height slab every ray is clipped to."""
        return float(self.bottom.min()), float(self.top.max()) + 1.0

    @property
    def block(self) -> int:
        """Least common multiple of the strides: windows aligned to it never split a column block."""
        return math.lcm(*self.class_strides)

    def instance_centers(self) -> torch.Tensor:
        """``[I + 1, 3]`` world centres of the instance boxes (row 0: the whole layout)."""
        centre = (self.instance_min + self.instance_max) / 2
        return torch.tensor(self.origin, dtype=torch.float64) + centre * self.meters_per_pixel

    def layout_cameras(self, cameras: Cameras) -> Cameras:
        """World ``cameras`` moved into the layout frame (world minus ``origin``), as visibility and
        rasterization take them. The shift runs in float64 on the host, so float64 cameras keep
        their precision at georeferenced coordinates (float32 ones there are already rounded to
        ~0.5 m); the result has the cameras' device and dtype. At origin 0: ``cameras`` itself."""
        if not any(self.origin):
            return cameras
        to_world = torch.eye(4, dtype=torch.float64)
        to_world[:3, 3] = torch.tensor(self.origin, dtype=torch.float64)
        w2c = cameras.world_to_cam.detach().cpu().double() @ to_world
        w2c = w2c.to(device=cameras.device, dtype=cameras.world_to_cam.dtype)
        return Cameras(K=cameras.K, world_to_cam=w2c, width=cameras.width, height=cameras.height)

    def world_gaussians(self, gaussians: Gaussians) -> Gaussians:
        """Layout-frame ``gaussians`` moved to world coordinates (plus ``origin``), for export and
        world cameras. Away from origin 0 the means become float64 (float32 would round
        georeferenced metres to ~0.5 m); on MPS, which has no float64, the Gaussians move to the
        CPU. At origin 0: ``gaussians`` itself."""
        if not any(self.origin):
            return gaussians
        g = gaussians.to("cpu") if gaussians.device.type == "mps" else gaussians
        means = g.means.double() + torch.tensor(self.origin, dtype=torch.float64, device=g.device)
        return Gaussians(means=means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.colors)


def _instance_boxes(instance: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance ``(min, max)`` voxel-unit boxes: footprint cells in xy, bottom..top in z."""
    h, w = instance.shape
    count = int(instance.max()) + 1
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    lo = torch.stack([jj, ii, bottom.double()], -1).reshape(-1, 3)
    hi = torch.stack([jj + 1, ii + 1, top.double()], -1).reshape(-1, 3)
    idx = instance.reshape(-1, 1).expand(-1, 3)
    inst_min = torch.full((count, 3), math.inf, dtype=torch.float64).scatter_reduce(0, idx, lo, "amin")
    inst_max = torch.full((count, 3), -math.inf, dtype=torch.float64).scatter_reduce(0, idx, hi, "amax")
    inst_min[0] = lo.amin(0)
    inst_max[0] = hi.amax(0)
    return inst_min, inst_max


@dataclass
class BEVPoints:
    """A set of BEV points and their attributes (Sec. 3.3), all tensors on one device.

    Attributes:
        positions: ``[N, 3]`` float layout-frame positions (metres from the layout's origin).
        voxels: ``[N, 3]`` long global voxel indices ``(x = column, y = row, z = level)`` of each
            point's column block corner (used for serialization).
        classes: ``[N]`` long class ids (roof-column walls are ``facade``).
        instances: ``[N]`` long building instance ids (0 for background points).
        strides: ``[N]`` long sampling stride of each point (pixels).
        relative: ``[N, 3]`` float coordinates relative to the instance box, in ``[-1, 1]`` (Eq. 5-6).
        instance_center: ``[N, 3]`` float layout-frame centre of the instance box.
        instance_size: ``[N, 3]`` float size of the instance box (metres).
        meters_per_pixel: voxel size in metres.
    """

    positions: torch.Tensor
    voxels: torch.Tensor
    classes: torch.Tensor
    instances: torch.Tensor
    strides: torch.Tensor
    relative: torch.Tensor
    instance_center: torch.Tensor
    instance_size: torch.Tensor
    meters_per_pixel: float

    def __len__(self) -> int:
        return self.positions.shape[0]

    def _map(self, fn) -> BEVPoints:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return BEVPoints(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to(self, device: torch.device | str) -> BEVPoints:
        return self._map(lambda t: t.to(device))

    def select(self, index: torch.Tensor) -> BEVPoints:
        """The points picked by a bool mask or an index tensor."""
        if index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)  # one host sync, not one per field
        return self._map(lambda t: t.index_select(0, index))

    @property
    def is_building(self) -> torch.Tensor:
        return self.instances > 0

    @staticmethod
    def cat(parts: Sequence[BEVPoints]) -> BEVPoints:
        """Concatenate point sets of one layout (at least one)."""
        if len(parts) == 1:
            return parts[0]
        values = {
            f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(BEVPoints) if f.name != "meters_per_pixel"
        }
        return BEVPoints(**values, meters_per_pixel=parts[0].meters_per_pixel)


@dataclass
class _Columns:
    """Shell columns of a window: one per (stride block, class), with their kept level counts."""

    keys: torch.Tensor  # [M] sorted int64 (block row, block col, class) keys
    top: torch.Tensor  # [M] top level
    count: torch.Tensor  # [M] number of kept levels (top-down)
    offset: torch.Tensor  # [M] index of the column's first point in the expanded shell
    stride: torch.Tensor  # [M]
    cls: torch.Tensor  # [M]
    inst: torch.Tensor  # [M]
    centroid: torch.Tensor  # [M, 2] (x, y) voxel units, global
    block: torch.Tensor  # [M, 2] (x, y) global block corner
    window: tuple[int, int, int, int]  # r0, r1, c0, c1


def _window_maps(layout: BEVLayout, window: tuple[int, int, int, int], device: torch.device):
    """Crop (with a one-pixel halo for the neighbour test) moved to ``device``."""
    r0, r1, c0, c1 = window
    h, w = layout.shape
    top = torch.full((r1 - r0 + 2, c1 - c0 + 2), _FAR_BELOW, dtype=torch.long)
    a0, a1, b0, b1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
    top[a0 - r0 + 1 : a1 - r0 + 1, b0 - c0 + 1 : b1 - c0 + 1] = layout.top[a0:a1, b0:b1]
    crop = (slice(r0, r1), slice(c0, c1))
    return (
        upload(layout.semantic[crop], device),
        upload(top, device),
        upload(layout.bottom[crop], device),
        upload(layout.instance[crop], device),
    )


def _columns(layout: BEVLayout, window: tuple[int, int, int, int], maps: tuple[torch.Tensor, ...]) -> _Columns:
    """Group the window's pixels into shell columns (vectorized); ``maps``: its :func:`_window_maps`."""
    r0, r1, c0, c1 = window
    sem, top_halo, bottom, inst = maps
    device = sem.device
    top = top_halo[1:-1, 1:-1]
    neighbour_min = torch.minimum(
        torch.minimum(top_halo[:-2, 1:-1], top_halo[2:, 1:-1]), torch.minimum(top_halo[1:-1, :-2], top_halo[1:-1, 2:])
    )
    # Level z of a column is on the shell iff z >= the top of one of its pixels or z > a neighbour's top.
    low = torch.minimum(top - 1, neighbour_min).reshape(-1)
    strides = upload(torch.tensor(layout.class_strides), device)[sem].reshape(-1)
    hc, wc = r1 - r0, c1 - c0
    ii = torch.arange(r0, r1, device=device).view(-1, 1).expand(hc, wc).reshape(-1)
    jj = torch.arange(c0, c1, device=device).view(1, -1).expand(hc, wc).reshape(-1)
    bi = torch.div(ii, strides, rounding_mode="floor") * strides
    bj = torch.div(jj, strides, rounding_mode="floor") * strides
    cls = sem.reshape(-1)
    pixel_key = ((bi - r0) * wc + (bj - c0)) * NUM_CLASSES + cls
    keys, inverse = torch.unique(pixel_key, return_inverse=True)
    m = keys.numel()

    def reduce(values: torch.Tensor, how: str, init: float) -> torch.Tensor:
        return torch.full((m,), init, dtype=values.dtype, device=device).scatter_reduce(0, inverse, values, how)

    col_top = reduce(top.reshape(-1), "amax", _FAR_BELOW)
    col_bottom = reduce(bottom.reshape(-1), "amin", -_FAR_BELOW)
    col_low = reduce(low, "amin", -_FAR_BELOW)
    col_inst = reduce(inst.reshape(-1), "amax", 0)
    col_stride = reduce(strides, "amax", 1)
    col_cls = torch.remainder(keys, NUM_CLASSES)
    counts = torch.zeros(m, device=device).index_add_(0, inverse, torch.ones_like(ii, dtype=torch.float32))
    centroid = (
        torch.zeros(m, 2, device=device, dtype=torch.float64).index_add_(0, inverse, torch.stack([jj, ii], -1).double() + 0.5)
        / counts[:, None].double()
    )
    levels = torch.div(col_top - col_bottom, col_stride, rounding_mode="floor") + 1
    exposed = -torch.div(-(col_top - col_low), col_stride, rounding_mode="floor")  # ceil((top - low) / s)
    count = torch.clamp(torch.minimum(levels, exposed), min=1)
    offset = torch.cumsum(count, 0) - count
    cell = torch.div(keys, NUM_CLASSES, rounding_mode="floor")
    block = torch.stack([torch.remainder(cell, wc) + c0, torch.div(cell, wc, rounding_mode="floor") + r0], -1)
    return _Columns(keys, col_top, count, offset, col_stride, col_cls, col_inst, centroid, block, window)


def _points_of(layout: BEVLayout, cols: _Columns, column: torch.Tensor, level: torch.Tensor) -> BEVPoints:
    """Attributes of the points ``(column index, level index)``."""
    device = column.device
    mpp = layout.meters_per_pixel
    z = cols.top[column] - level * cols.stride[column]
    cls = cols.cls[column]
    cls = torch.where((cls == ROOF) & (level > 0), torch.full_like(cls, FACADE), cls)
    inst = cols.inst[column]
    xy = cols.centroid[column]
    vox = torch.cat([xy, z[:, None].double()], 1)
    inst_min = upload(layout.instance_min, device)[inst]
    inst_max = upload(layout.instance_max, device)[inst]
    centre = (inst_min + inst_max) / 2
    half = torch.clamp((inst_max - inst_min) / 2, min=0.5)
    relative = torch.clamp((vox - centre) / half, -1.0, 1.0)
    return BEVPoints(
        positions=(vox * mpp).float(),  # layout frame: no world origin in float32
        voxels=torch.cat([cols.block[column], z[:, None]], 1),
        classes=cls,
        instances=inst,
        strides=cols.stride[column],
        relative=relative.float(),
        instance_center=(centre * mpp).float(),
        instance_size=((inst_max - inst_min) * mpp).float(),
        meters_per_pixel=mpp,
    )


def _aligned_window(layout: BEVLayout, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int] | None:
    h, w = layout.shape
    b = layout.block
    r0, c0 = max(0, (r0 // b) * b), max(0, (c0 // b) * b)
    r1, c1 = min(h, -(-r1 // b) * b), min(w, -(-c1 // b) * b)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1


def bev_points(
    layout: BEVLayout,
    window: tuple[int, int, int, int] | None = None,
    device: torch.device | str = "cpu",
    tile: int = 1024,
) -> BEVPoints:
    """All shell points of the layout, or of ``window = (row0, row1, col0, col1)`` (Eq. 1).

    Windows are widened to whole stride blocks. The work runs tile by tile (``tile`` pixels a
    side) so temporary memory stays bounded; the result holds every point of the window.
    """
    device = torch.device(device)
    h, w = layout.shape
    r0, r1, c0, c1 = (0, h, 0, w) if window is None else window
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"window {window} is empty")
    aligned = _aligned_window(layout, r0, r1, c0, c1)
    if aligned is None:
        raise ValueError(f"window {window} lies outside the layout of shape {list(layout.shape)}")
    r0, r1, c0, c1 = aligned
    tile = max(layout.block, (tile // layout.block) * layout.block)
    parts = []
    for a in range(r0, r1, tile):
        for b in range(c0, c1, tile):
            part = (a, min(a + tile, r1), b, min(b + tile, c1))
            cols = _columns(layout, part, _window_maps(layout, part, device))
            column = torch.repeat_interleave(torch.arange(cols.keys.numel(), device=device), cols.count)
            level = torch.arange(column.numel(), device=device) - cols.offset[column]
            parts.append(_points_of(layout, cols, column, level))
    return BEVPoints.cat(parts)


def _pixel_grid(width: int, height: int, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(u, v)`` every ``step`` pixels."""
    u = torch.arange(0, width, step, device=device, dtype=torch.float64) + 0.5
    v = torch.arange(0, height, step, device=device, dtype=torch.float64) + 0.5
    return u, v


def _camera_rays(
    layout: BEVLayout, K: torch.Tensor, world_to_cam: torch.Tensor, u: torch.Tensor, v: torch.Tensor, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (voxel units) of the rays through image points ``u x v`` of
    one layout-frame camera (``K [3, 3]``, ``world_to_cam [4, 4]``) or of ``C`` (``[C, 3, 3]``,
    ``[C, 4, 4]``: camera after camera, ``C * len(u) * len(v)`` rays).

    The 3 x 3 algebra runs where ``K`` lies (host cameras: no device sync), the rays on ``device``."""
    rot = world_to_cam[..., :3, :3].double()
    origin = -(rot.transpose(-1, -2) @ world_to_cam[..., :3, 3:].double())[..., 0] / layout.meters_per_pixel
    kinv, rot, origin = (upload(t, device) for t in (torch.linalg.inv(K.double()), rot, origin))
    vv, uu = torch.meshgrid(upload(v, device), upload(u, device), indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(-1, 3)
    dirs = (pix @ kinv.transpose(-1, -2)) @ rot  # R^T K^-1 p for row vectors
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return origin[..., None, :].expand_as(dirs).reshape(-1, 3), dirs.reshape(-1, 3)


def _view_window(layout: BEVLayout, cameras: Any, max_distance: float | None) -> tuple[int, int, int, int] | None:
    """Aligned layout window holding every ray segment of the cameras inside the height slab."""
    h, w = layout.shape
    zlo, zhi = layout.z_range
    lo = torch.tensor([0.0, 0.0, zlo], dtype=torch.float64)
    hi = torch.tensor([float(w), float(h), zhi], dtype=torch.float64)
    tmax = math.inf if max_distance is None else max_distance / layout.meters_per_pixel
    # A 17 x 17 grid of rays from image border to image border bounds each frustum's footprint.
    u = torch.linspace(0.0, float(cameras.width), 17, dtype=torch.float64)
    v = torch.linspace(0.0, float(cameras.height), 17, dtype=torch.float64)
    o, d = _camera_rays(layout, cameras.K.cpu(), cameras.world_to_cam.cpu(), u, v, "cpu")
    tn, tf = slab(o, d, lo, hi)
    tn = tn.clamp(min=0.0)
    tf = tf.clamp(max=tmax)
    ok = tf > tn
    if not bool(ok.any()):
        return None
    ends = torch.cat([o[ok] + d[ok] * tn[ok, None], o[ok] + d[ok] * tf[ok, None]])
    x0, y0 = (ends[:, :2].amin(0) - 2).floor().tolist()
    x1, y1 = (ends[:, :2].amax(0) + 2).ceil().tolist()
    return _aligned_window(layout, int(max(y0, 0)), int(min(y1, h)), int(max(x0, 0)), int(min(x1, w)))


def _max_pyramid(top: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum mipmap of ``top``: level ``k`` holds the max top over ``2^k x 2^k`` blocks (level 0
    is ``top``), for ``k <= levels`` or until one block covers the window. Returns the levels
    flattened into one buffer with each level's offset and width (``[K + 1]`` long)."""
    grid = top.double()
    grids = [grid]
    while len(grids) <= levels and max(grid.shape) > 1:
        h, w = grid.shape
        t = torch.nn.functional.pad(grid[None, None], (0, w % 2, 0, h % 2), value=float(_FAR_BELOW))
        grid = torch.nn.functional.max_pool2d(t, 2)[0, 0]
        grids.append(grid)
    sizes = torch.tensor([g.numel() for g in grids])
    offsets = upload(torch.cumsum(sizes, 0) - sizes, top.device)
    widths = upload(torch.tensor([g.shape[1] for g in grids]), top.device)
    return torch.cat([g.reshape(-1) for g in grids]), offsets, widths


@dataclass
class ViewTables:
    """Device tables of one layout window that visibility marches through: its shell columns,
    tops, classes and max pyramid. Frames whose view window lies inside reuse them."""

    window: tuple[int, int, int, int]  # r0, r1, c0, c1
    cols: _Columns
    top: torch.Tensor  # [h, w] long
    sem: torch.Tensor  # [h * w] long
    pyramid: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @classmethod
    def build(cls, layout: BEVLayout, window: tuple[int, int, int, int], device: torch.device, mip_levels: int) -> ViewTables:
        maps = _window_maps(layout, window, device)  # one upload serves the columns and the march
        top = maps[1][1:-1, 1:-1]
        return cls(window, _columns(layout, window, maps), top, maps[0].reshape(-1), _max_pyramid(top, mip_levels))

    def covers(self, window: tuple[int, int, int, int]) -> bool:
        r0, r1, c0, c1 = self.window
        return r0 <= window[0] and window[1] <= r1 and c0 <= window[2] and window[3] <= c1


class ViewCache:
    """The :class:`ViewTables` of the last view window, for the frames of one trajectory.

    A view window that does not fit the cached one is rebuilt grown by ``margin`` of its size on
    every side, so a moving camera rebuilds every few frames; memory stays bounded by the view
    window (``max_distance``), not the layout. Hits are those of an uncached call: a larger
    window holds the same columns and the rays end where they did.
    """

    def __init__(self, layout: BEVLayout, device: torch.device | str, margin: float = 0.125, mip_levels: int = 4) -> None:
        self.layout, self.device, self.margin, self.mip_levels = layout, torch.device(device), margin, mip_levels
        self.tables: ViewTables | None = None
        self.builds = 0

    def get(self, window: tuple[int, int, int, int]) -> ViewTables:
        if self.tables is None or not self.tables.covers(window):
            r0, r1, c0, c1 = window
            dr, dc = math.ceil((r1 - r0) * self.margin), math.ceil((c1 - c0) * self.margin)
            grown = _aligned_window(self.layout, r0 - dr, r1 + dr, c0 - dc, c1 + dc)
            self.tables = ViewTables.build(self.layout, grown, self.device, self.mip_levels)
            self.builds += 1
        return self.tables


def _first_hits(
    layout: BEVLayout,
    cameras: Any,
    max_distance: float | None,
    ray_step: int,
    ray_chunk: int,
    mip_levels: int,
    device: torch.device | str | None,
    cache: ViewCache | None,
) -> tuple[ViewTables | None, torch.Tensor]:
    """The view window's tables and, per ray (camera after camera), the index of its first hit in
    the window's expanded shell (-1: no hit); no tables and no rays when no ray meets the layout."""
    _check_cameras(cameras)
    if isinstance(ray_step, bool) or int(ray_step) != ray_step or ray_step < 1:
        raise ValueError(f"ray_step must be a positive int, got {ray_step!r}")
    if isinstance(mip_levels, bool) or int(mip_levels) != mip_levels or mip_levels < 0:
        raise ValueError(f"mip_levels must be a non-negative int, got {mip_levels!r}")
    if max_distance is not None and not (max_distance > 0):
        raise ValueError(f"max_distance must be positive or None, got {max_distance!r}")
    device = torch.device(device) if device is not None else cameras.K.device
    if cache is not None and (cache.layout is not layout or cache.device != device):
        raise ValueError(f"cache holds another layout or device ({cache.device}) than this call ({device})")
    window = _view_window(layout, cameras, max_distance)
    if window is None:
        return None, torch.empty(0, dtype=torch.long, device=device)
    view = ViewTables.build(layout, window, device, int(mip_levels)) if cache is None else cache.get(window)
    r0, _, c0, c1 = view.window
    cols, top, sem, pyramid = view.cols, view.top, view.sem, view.pyramid
    strides = upload(torch.tensor(layout.class_strides), device)
    shift = upload(torch.tensor([c0, r0, 0.0], dtype=torch.float64), device)
    tmax = math.inf if max_distance is None else max_distance / layout.meters_per_pixel
    wc = c1 - c0
    u, v = _pixel_grid(int(cameras.width), int(cameras.height), ray_step, device)
    o, d = _camera_rays(layout, cameras.K, cameras.world_to_cam, u, v, device)  # every camera's rays at once
    o = o - shift
    found = []
    for s in range(0, o.shape[0], ray_chunk):
        hit, pixel, level = march(o[s : s + ray_chunk], d[s : s + ray_chunk], top, pyramid, tmax)
        cls = sem[pixel]
        st = strides[cls]
        pi, pj = torch.div(pixel, wc, rounding_mode="floor"), torch.remainder(pixel, wc)
        bi = torch.div(pi + r0, st, rounding_mode="floor") * st - r0
        bj = torch.div(pj + c0, st, rounding_mode="floor") * st - c0
        key = (bi * wc + bj) * NUM_CLASSES + cls
        column = torch.searchsorted(cols.keys, key).clamp(max=cols.keys.numel() - 1)
        ok = hit & (cols.keys[column] == key)
        k = torch.div(cols.top[column] - level, cols.stride[column], rounding_mode="floor")
        k = torch.minimum(torch.clamp(k, min=0), cols.count[column] - 1)
        found.append(torch.where(ok, cols.offset[column] + k, -1))
    return view, torch.cat(found)


def _hit_ids(found: torch.Tensor) -> torch.Tensor:
    """The sorted shell indices hit by any ray of ``found`` (misses are -1)."""
    ids = torch.unique(found)  # sorted, so a miss (-1) comes first
    return ids[ids >= 0]


def _shell_points(layout: BEVLayout, view: ViewTables, ids: torch.Tensor) -> BEVPoints:
    """The points of the window's expanded shell at indices ``ids``."""
    column = torch.searchsorted(view.cols.offset, ids, right=True) - 1
    return _points_of(layout, view.cols, column, ids - view.cols.offset[column])


def visible_bev_points(
    layout: BEVLayout,
    cameras: Any,
    max_distance: float | None = None,
    ray_step: int = 1,
    ray_chunk: int = 1 << 20,
    mip_levels: int = 4,
    device: torch.device | str | None = None,
    cache: ViewCache | None = None,
) -> BEVPoints:
    """The BEV points hit first by one ray per pixel of any of ``cameras`` (Eq. 2): the union of
    the cameras' visible sets.

    Args:
        layout: the BEV layout.
        cameras: ``diffusers_city.render.Cameras`` in the layout frame (``K [C, 3, 3]``,
            ``world_to_cam [C, 4, 4]``, ``width``, ``height``): world cameras go through
            :meth:`BEVLayout.layout_cameras` first.
        max_distance: rays stop after this many metres (``None``: at the layout border). It
            bounds the layout window moved to ``device`` and so the memory of one call.
        ray_step: cast a ray every ``ray_step`` pixels in both directions (1 = every pixel).
        ray_chunk: rays marched at once; bounds the march's temporary memory (the rays
            themselves, 48 bytes each, are built for every camera at once).
        mip_levels: levels of the max-height pyramid used to skip empty space (level ``k``: blocks
            of ``2^k`` pixels; capped where one block covers the view window).
        device: where the work runs (default: the cameras' device).
        cache: a :class:`ViewCache` of this layout and device, reused across calls (frames); its
            ``mip_levels`` apply.

    Returns:
        At most ``ceil(W / ray_step) * ceil(H / ray_step) * C`` points, whatever the layout size;
        an empty set when no ray meets the layout (cameras looking away are valid).
    """
    view, found = _first_hits(layout, cameras, max_distance, ray_step, ray_chunk, mip_levels, device, cache)
    if view is None:
        return _empty_points(layout, found.device)
    return _shell_points(layout, view, _hit_ids(found))


def visible_bev_points_per_camera(
    layout: BEVLayout,
    cameras: Any,
    max_distance: float | None = None,
    ray_step: int = 1,
    ray_chunk: int = 1 << 20,
    mip_levels: int = 4,
    device: torch.device | str | None = None,
    cache: ViewCache | None = None,
) -> tuple[BEVPoints, list[torch.Tensor]]:
    """The union of the cameras' visible BEV points (as :func:`visible_bev_points`) and, per
    camera, the sorted indices into it of the points that camera sees: frames decoded together
    then rasterize each its own points. Arguments as :func:`visible_bev_points`."""
    view, found = _first_hits(layout, cameras, max_distance, ray_step, ray_chunk, mip_levels, device, cache)
    num = cameras.K.shape[0]
    if view is None:
        return _empty_points(layout, found.device), [found] * num
    if num == 1:  # the union is the camera's own set: no (camera, point) pairs to sort
        ids = _hit_ids(found)
        return _shell_points(layout, view, ids), [torch.arange(ids.numel(), device=ids.device)]
    # (camera, point) pairs as one int64 key: camera in the high bits, shell index in the low 40.
    camera = torch.div(torch.arange(found.numel(), device=found.device), found.numel() // num, rounding_mode="floor")
    pairs = torch.unique(torch.where(found >= 0, (camera << 40) | found, -1))  # sorted: camera, then point
    pairs = pairs[pairs >= 0]
    ids, row = torch.unique(pairs & ((1 << 40) - 1), return_inverse=True)
    counts = torch.bincount(pairs >> 40, minlength=num).tolist()
    return _shell_points(layout, view, ids), list(row.split(counts))


def _empty_points(layout: BEVLayout, device: torch.device) -> BEVPoints:
    f = torch.empty(0, 3, device=device)
    i = torch.empty(0, dtype=torch.long, device=device)
    return BEVPoints(f, torch.empty(0, 3, dtype=torch.long, device=device), i, i, i, f, f, f, layout.meters_per_pixel)


def _check_cameras(cameras: Any) -> None:
    for name in ("K", "world_to_cam", "width", "height"):
        if not hasattr(cameras, name):
            raise ValueError(f"cameras must have K, world_to_cam, width and height; missing {name!r}")
    K, w2c = cameras.K, cameras.world_to_cam
    if K.dim() != 3 or K.shape[1:] != (3, 3):
        raise ValueError(f"cameras.K must be [C, 3, 3], got {list(K.shape)}")
    if w2c.dim() != 3 or w2c.shape[1:] != (4, 4) or w2c.shape[0] != K.shape[0]:
        raise ValueError(f"cameras.world_to_cam must be [C, 4, 4] with C = {K.shape[0]}, got {list(w2c.shape)}")
    if int(cameras.width) <= 0 or int(cameras.height) <= 0:
        raise ValueError(f"image size must be positive, got {cameras.width} x {cameras.height}")
    if not bool(torch.isfinite(K).all()) or not bool(torch.isfinite(w2c).all()):
        raise ValueError("cameras hold NaN/inf intrinsics or poses")
