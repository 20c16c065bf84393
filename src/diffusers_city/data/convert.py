"""Conversions between point clouds, rasters and sparse voxel grids.

- `points_to_height_map` / `points_to_scene`: max-z rasterisation (holes filled from the
  nearest valid cell), the class and colour of each cell taken from its highest point.
- `height_map_to_points`: Sat2City's condition point cloud P_h (each pixel lifted to 3D).
- `splat_normals` / `points_to_voxels`: the sparse voxel grid G of the points with trilinearly
  splatted normals A_N (Sat2City Sec. 3), as numpy arrays or a `diffusers_city.sparse.SparseTensor`.
Scene -> tiles is `CityScene.tiles`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .classes import FACADE, GROUND, ROOF, check_class_ids
from .noise import height_from_gray
from .scene import CityScene


def _check_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3], got shape {points.shape}")
    if points.shape[0] == 0:
        raise ValueError(f"{name} holds no points")
    if not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {points.dtype}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} holds NaN/inf values")
    return points.astype(np.float64)


def _check_per_point(values, n: int, name: str, cols: int | None) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    expected = (n,) if cols is None else (n, cols)
    if values.shape != expected:
        raise ValueError(f"{name} must have shape {expected} like points, got {values.shape}")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN/inf values")
    return values


def _check_mpp(meters_per_pixel: float, name: str = "meters_per_pixel") -> float:
    try:
        mpp = float(meters_per_pixel)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {meters_per_pixel!r}") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {meters_per_pixel!r}")
    return mpp


def _highest_per_cell(points: np.ndarray, mpp: float, origin, shape):
    """Flat cell index and point index of the highest point of every non-empty cell."""
    h, w = shape
    col = np.floor((points[:, 0] - origin[0]) / mpp).astype(np.int64)
    row = np.floor((points[:, 1] - origin[1]) / mpp).astype(np.int64)
    inside = np.flatnonzero((row >= 0) & (row < h) & (col >= 0) & (col < w))
    if inside.size == 0:
        raise ValueError(f"no point falls inside the {h}x{w} raster at origin {tuple(origin[:2])}")
    cell = row[inside] * w + col[inside]
    order = np.lexsort((points[inside, 2], cell))
    sorted_cells = cell[order]
    last = np.flatnonzero(np.r_[sorted_cells[1:] != sorted_cells[:-1], True])
    return sorted_cells[last], inside[order[last]]


def _grid_from_points(points, mpp, origin, shape):
    if origin is None:
        origin = (math.floor(points[:, 0].min() / mpp) * mpp, math.floor(points[:, 1].min() / mpp) * mpp, 0.0)
    origin = tuple(float(v) for v in np.asarray(origin, dtype=np.float64).reshape(-1))
    if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
        raise ValueError(f"origin must be 3 finite numbers, got {origin!r}")
    if shape is None:
        shape = (
            max(1, int(math.floor((points[:, 1].max() - origin[1]) / mpp)) + 1),
            max(1, int(math.floor((points[:, 0].max() - origin[0]) / mpp)) + 1),
        )
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be two positive integers (H, W), got {shape!r}")
    return origin, shape


def _fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.all():
        return values
    _, (ri, rj) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return values[ri, rj]


def points_to_height_map(
    points: np.ndarray,
    meters_per_pixel: float,
    origin: Sequence[float] | None = None,
    shape: tuple[int, int] | None = None,
    classes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Rasterise a point cloud by max z per cell (docs/design.md pixel convention).

    Args:
        points: ``[N, 3]`` world points.
        meters_per_pixel: cell size.
        origin: world (x, y, z) of the raster corner and of height 0; default: the points'
            minimum x, y snapped down to the cell size, and z = 0.
        shape: ``(H, W)``; default: just enough cells to hold every point. Points outside are ignored.
        classes: optional ``[N]`` class ids; the cell takes the class of its highest point,
            facade becoming roof (the raster labels building footprints as roof).

    Returns:
        ``(height [H, W] float32 (z - origin z), semantic [H, W] uint8 or None, valid [H, W] bool)``;
        cells without points (``~valid``) copy the nearest valid cell.
    """
    pts = _check_points(points)
    mpp = _check_mpp(meters_per_pixel)
    classes = _check_per_point(classes, pts.shape[0], "classes", None)
    if classes is not None:
        check_class_ids(classes, "classes")
    origin, shape = _grid_from_points(pts, mpp, origin, shape)
    cells, top = _highest_per_cell(pts, mpp, origin, shape)
    valid = np.zeros(shape[0] * shape[1], bool)
    valid[cells] = True
    valid = valid.reshape(shape)
    height = np.zeros(shape[0] * shape[1], np.float64)
    height[cells] = pts[top, 2] - origin[2]
    height = _fill_nearest(height.reshape(shape), valid).astype(np.float32)
    semantic = None
    if classes is not None:
        sem = np.full(shape[0] * shape[1], GROUND, np.uint8)
        cls = classes[top].astype(np.uint8)
        sem[cells] = np.where(cls == FACADE, ROOF, cls)
        semantic = _fill_nearest(sem.reshape(shape), valid)
    return height, semantic, valid


def points_to_scene(
    points: np.ndarray,
    meters_per_pixel: float,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
    shape: tuple[int, int] | None = None,
    crs: str | None = None,
) -> CityScene:
    """A `CityScene` from a (coloured, classified) point cloud; the image is the colour of each
    cell's highest point (holes filled from the nearest cell). Without classes every cell is ground."""
    pts = _check_points(points)
    mpp = _check_mpp(meters_per_pixel)
    colors = _check_per_point(colors, pts.shape[0], "colors", 3)
    normals = _check_per_point(normals, pts.shape[0], "normals", 3)
    classes = _check_per_point(classes, pts.shape[0], "classes", None)
    origin, shape = _grid_from_points(pts, mpp, origin, shape)
    height, semantic, valid = points_to_height_map(pts, mpp, origin, shape, classes)
    image = None
    if colors is not None:
        cells, top = _highest_per_cell(pts, mpp, origin, shape)
        img = np.zeros((shape[0] * shape[1], 3), np.float32)
        img[cells] = colors[top]
        image = _fill_nearest(img.reshape(*shape, 3), valid)
    return CityScene(
        height=height,
        semantic=np.full(shape, GROUND, np.uint8) if semantic is None else semantic,
        meters_per_pixel=mpp,
        origin=origin,
        crs=crs,
        points=pts.astype(np.float32),
        colors=colors,
        normals=normals,
        point_classes=classes,
        image=image,
    )


def height_map_to_points(
    height: np.ndarray,
    meters_per_pixel: float,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    z_range: tuple[float, float] | None = None,
    upsample: int = 1,
    fill_columns: bool = False,
    column_step: float | None = None,
) -> np.ndarray:
    """Sat2City's condition point cloud P_h: every pixel lifted to a 3D point.

    The paper elevates the (noisy) height map to a point cloud, one point per pixel at the
    pixel centre and its height (Sec. 3, Fig. 3; upsampled for display). Options:

    - ``height`` uint8 grayscale needs ``z_range=(z_min, z_max)`` (see `height_from_gray`);
      float heights are metres above ``origin[2]``.
    - ``upsample=k``: k x k points per pixel on a regular sub-grid (same height).
    - ``fill_columns=True``: also fill the vertical gap down to the lowest 4-neighbour with
      points every ``column_step`` metres (default the pixel size), so P_h is a closed shell
      like an extruded height field (the paper does not describe this; off by default).

    Returns ``[N, 3]`` float32 world points.
    """
    height = np.asarray(height)
    if height.ndim != 2 or height.size == 0:
        raise ValueError(f"height must be a non-empty [H, W] array, got shape {height.shape}")
    mpp = _check_mpp(meters_per_pixel)
    if height.dtype == np.uint8:
        if z_range is None:
            raise ValueError("a uint8 grayscale height map needs z_range=(z_min, z_max)")
        height = height_from_gray(height, *z_range)
    elif not (np.issubdtype(height.dtype, np.floating) or np.issubdtype(height.dtype, np.integer)):
        raise ValueError(f"height must be float metres or uint8 gray, got dtype {height.dtype}")
    height = height.astype(np.float64)
    if not np.isfinite(height).all():
        raise ValueError("height holds NaN/inf values")
    if not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}")
    ox, oy, oz = (float(v) for v in np.asarray(origin, dtype=np.float64).reshape(3))
    h, w = height.shape
    k = int(upsample)
    ii, jj = np.meshgrid(np.arange(h * k), np.arange(w * k), indexing="ij")
    z = height[ii // k, jj // k]
    pts = [np.stack([ox + (jj + 0.5) * mpp / k, oy + (ii + 0.5) * mpp / k, oz + z], -1).reshape(-1, 3)]
    if fill_columns:
        step = mpp if column_step is None else _check_mpp(column_step, "column_step")
        padded = np.pad(height, 1, mode="edge")
        low = np.minimum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        n = np.floor((height - low) / step).astype(np.int64)
        cells = np.repeat(np.arange(h * w), n.ravel())
        if cells.size:
            start = np.cumsum(n.ravel()) - n.ravel()
            level = np.arange(cells.size) - np.repeat(start, n.ravel()) + 1
            r, c = np.divmod(cells, w)
            pts.append(np.stack([ox + (c + 0.5) * mpp, oy + (r + 0.5) * mpp, oz + height.ravel()[cells] - level * step], -1))
    return np.concatenate(pts).astype(np.float32)


def voxel_origin_for(points: np.ndarray, voxel_size: float) -> tuple[float, float, float]:
    """Default grid origin: voxel centres on multiples of ``voxel_size`` plus half a voxel, chosen
    so that all voxel indices of ``points`` are >= 0 (Sat2City's o_0 = v_0 / 2 up to a shift)."""
    pts = _check_points(points)
    v = _check_mpp(voxel_size, "voxel_size")
    lo = np.floor(pts.min(axis=0) / v) * v + v / 2
    return tuple(float(c) for c in lo)


def splat_normals(
    points: np.ndarray,
    normals: np.ndarray,
    voxel_size: float,
    origin: Sequence[float] | None = None,
    colors: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sparse voxel grid of a point cloud with trilinearly splatted normals (numpy core).

    Voxel ``c`` has its centre at ``origin + c * voxel_size`` (docs/design.md). A voxel is
    occupied when it holds a point (nearest centre). Each point spreads its normal to the 8
    voxel centres around it with trilinear weights; the sums on occupied voxels, normalised,
    are the voxel normals (a voxel whose splatted normals cancel takes the mean normal of its
    own points, or +z). With ``colors``, each voxel also gets the mean colour of its points.

    Returns ``{"coords": [M, 3] int64, "normals": [M, 3] float32, "counts": [M] int64,
    "origin": [3] float64}`` (+ ``"colors": [M, 3]``), coords sorted lexicographically.
    """
    pts = _check_points(points)
    v = _check_mpp(voxel_size, "voxel_size")
    nrm = _check_per_point(normals, pts.shape[0], "normals", 3).astype(np.float64)
    colors = _check_per_point(colors, pts.shape[0], "colors", 3)
    origin_arr = np.asarray(voxel_origin_for(pts, v) if origin is None else origin, dtype=np.float64).reshape(-1)
    if origin_arr.shape != (3,) or not np.isfinite(origin_arr).all():
        raise ValueError(f"origin must be 3 finite numbers, got {origin!r}")
    q = (pts - origin_arr) / v
    nearest = np.floor(q + 0.5).astype(np.int64)
    lo = nearest.min(axis=0) - 1
    span = nearest.max(axis=0) - lo + 2
    strides = (int(span[1] * span[2]), int(span[2]), 1)

    def keys(c: np.ndarray) -> np.ndarray:
        return (c[:, 0] - lo[0]) * strides[0] + (c[:, 1] - lo[1]) * strides[1] + (c[:, 2] - lo[2])

    # every corner key below lies in [0, prod(span)): base - lo >= 0 and base + 1 - lo < span
    near_keys = keys(nearest)
    volume = int(np.prod(span))
    if volume <= max(1 << 22, 16 * pts.shape[0]):
        # dense key -> voxel table: O(N + volume) instead of sorting and binary searches
        key_counts = np.bincount(near_keys, minlength=volume)
        occ_keys = np.flatnonzero(key_counts)
        counts = key_counts[occ_keys]
        m = occ_keys.size
        table = np.full(volume, m, np.int64)  # m: an extra bin for corners on empty voxels
        table[occ_keys] = np.arange(m)
        owner = table[near_keys]
        lookup = table.__getitem__
    else:
        occ_keys, owner, counts = np.unique(near_keys, return_inverse=True, return_counts=True)
        m = occ_keys.size

        def lookup(ck: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(occ_keys, ck), m - 1)
            return np.where(occ_keys[pos] == ck, pos, m)

    acc = np.zeros((m, 3))
    base = np.floor(q).astype(np.int64)
    base_keys = keys(base)
    nrm_t = np.ascontiguousarray(nrm.T)
    frac = q - base
    sides = [(1 - frac[:, a], frac[:, a]) for a in range(3)]  # trilinear weights per axis and side
    for corner in range(8):
        off = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
        weight = sides[0][off[0]] * sides[1][off[1]] * sides[2][off[2]]
        pos = lookup(base_keys + int(np.dot(off, strides)))
        # summation order per voxel and channel as one bincount per corner over the points in order
        for ch in range(3):
            acc[:, ch] += np.bincount(pos, weights=weight * nrm_t[ch], minlength=m + 1)[:m]
    norm = np.linalg.norm(acc, axis=1)
    weak = norm < 1e-6
    if weak.any():
        own = np.stack([np.bincount(owner, weights=nrm[:, ch], minlength=m) for ch in range(3)], 1)
        acc[weak] = own[weak]
        norm = np.linalg.norm(acc, axis=1)
        still = norm < 1e-6
        acc[still] = (0.0, 0.0, 1.0)
        norm[still] = 1.0
    out = {
        "coords": np.stack(np.unravel_index(occ_keys, tuple(span)), axis=1).astype(np.int64) + lo,
        "normals": (acc / norm[:, None]).astype(np.float32),
        "counts": counts.astype(np.int64),
        "origin": origin_arr,
    }
    if colors is not None:
        out["colors"] = (
            np.stack([np.bincount(owner, weights=colors[:, ch], minlength=m) for ch in range(3)], 1) / counts[:, None]
        ).astype(np.float32)
    return out


def points_to_voxels(
    points: np.ndarray,
    normals: np.ndarray,
    voxel_size: float,
    origin: Sequence[float] | None = None,
    colors: np.ndarray | None = None,
    batch_index: int = 0,
):
    """`splat_normals` wrapped as a `diffusers_city.sparse.SparseTensor`.

    ``feats`` are the unit normals ``[M, 3]`` (followed by the mean colours ``[M, 3]`` when
    ``colors`` is given); ``coords`` are ``(batch_index, x, y, z)`` int32.
    """
    import torch

    from ..sparse import SparseTensor

    grid = splat_normals(points, normals, voxel_size, origin, colors)
    feats = grid["normals"] if colors is None else np.concatenate([grid["normals"], grid["colors"]], 1)
    coords = np.concatenate([np.full((grid["coords"].shape[0], 1), batch_index), grid["coords"]], 1)
    if np.abs(coords).max() >= 2**31:
        raise ValueError("voxel indices overflow int32; use a larger voxel_size or an origin near the points")
    return SparseTensor(
        torch.from_numpy(np.ascontiguousarray(feats)),
        torch.from_numpy(coords.astype(np.int32)),
        voxel_size=float(voxel_size),
        origin=tuple(float(c) for c in grid["origin"]),
    )
