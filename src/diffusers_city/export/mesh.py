"""Triangle meshes with vertex colours (GLB / OBJ) by marching cubes over voxel occupancy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from ..utils.memory import check_memory
from ._checks import check_attribute, check_points, to_uint8
from .atomic import atomic_write, check_destination, resolve_offset, write_georef_sidecar

__all__ = ["mesh_from_points", "mesh_from_voxels", "write_mesh"]

# Rough peak bytes (measured) per voxel of the dense occupancy grid (the grid, marching cubes'
# work and the columns filled below the surface) and per input point or voxel (sorting, indices).
_BYTES_PER_DENSE_VOXEL = 16
_BYTES_PER_INPUT = 96
_MESH_FORMATS = (".glb", ".obj", ".ply")


def _check_grid(dims, num_inputs: int, voxel_size: float, max_memory_gb: float | None) -> None:
    """Refuse a dense grid of ``dims`` voxels whose estimated peak memory exceeds the limit."""
    dims = tuple(int(d) for d in dims)
    need = float(np.prod(np.asarray(dims, dtype=np.float64))) * _BYTES_PER_DENSE_VOXEL + num_inputs * _BYTES_PER_INPUT
    check_memory(
        need,
        max_memory_gb,
        f"meshing a {'x'.join(map(str, dims))} voxel grid at voxel_size {voxel_size:g}",
        hint="use a larger voxel_size",
    )


def mesh_from_voxels(
    coords,
    voxel_size: float,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    colors=None,
    *,
    max_memory_gb: float | None = None,
) -> trimesh.Trimesh:
    """Surface of a set of occupied voxels by marching cubes.

    ``coords`` ``[N, 3]`` integer voxel indices (x, y, z); voxel ``c`` is centred at
    ``origin + c * voxel_size`` (docs/design.md). The occupancy (padded by one empty voxel) is
    contoured at 0.5, so the surface runs half-way between occupied and empty voxel centres.
    ``colors`` ``[N, 3]`` in 0..1 are per-voxel colours; each vertex takes the colour of the
    nearest occupied voxel centre. Returns a mesh in world coordinates. The occupancy is a dense
    grid over the voxels' bounding box: one whose estimated peak memory exceeds ``max_memory_gb``
    (default: the memory available now) is refused with ``MemoryLimitError`` (a ``ValueError``).
    """
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3 or len(c) == 0:
        raise ValueError(f"coords must be a non-empty [N, 3] array, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"coords must be integer voxel indices, got dtype {c.dtype}")
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be a finite number > 0, got {voxel_size}")
    org = np.asarray(origin, dtype=np.float64).reshape(-1)
    if org.shape != (3,) or not np.isfinite(org).all():
        raise ValueError(f"origin must be 3 finite numbers, got {origin!r}")
    cols = check_attribute(colors, len(c), "colors", 3, unit=True)
    lo = c.min(0)
    dims = c.max(0) - lo + 3
    _check_grid(dims, len(c), voxel_size, max_memory_gb)
    grid = np.zeros(dims, dtype=np.float32)
    idx = c - lo + 1
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = 1.0
    verts, faces, _, _ = marching_cubes(grid, level=0.5)
    verts_world = org + (verts - 1 + lo) * voxel_size
    # marching_cubes orients faces towards increasing values (inside); flip them to face outwards
    mesh = trimesh.Trimesh(verts_world, faces[:, ::-1], process=False)
    if cols is not None:
        _, nearest = cKDTree(idx.astype(np.float64)).query(verts)
        mesh.visual.vertex_colors = np.concatenate([to_uint8(cols[nearest]), np.full((len(verts), 1), 255, np.uint8)], 1)
    return mesh


def mesh_from_points(
    points, colors=None, voxel_size: float = 1.0, *, fill_below: bool = True, max_memory_gb: float | None = None
) -> trimesh.Trimesh:
    """Mesh a surface point cloud: voxelize at ``voxel_size``, optionally fill every occupied
    column down to the lowest voxel (a watertight 2.5D city), marching cubes, vertex colours
    from the nearest coloured point. A voxel grid over the points' bounding box whose estimated
    peak memory exceeds ``max_memory_gb`` (default: the memory available now) is refused with
    ``MemoryLimitError`` (a ``ValueError``) before voxelizing."""
    pts = check_points(points)
    cols = check_attribute(colors, len(pts), "colors", 3, unit=True)
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"voxel_size must be a finite number > 0, got {voxel_size}")
    origin = pts.min(0)
    _check_grid(np.floor((pts.max(0) - origin) / voxel_size) + 3, len(pts), voxel_size, max_memory_gb)
    vox = np.unique(np.floor((pts - origin) / voxel_size).astype(np.int64), axis=0)
    if fill_below:
        columns, inverse = np.unique(vox[:, :2], axis=0, return_inverse=True)
        top = np.zeros(len(columns), dtype=np.int64)
        np.maximum.at(top, inverse.reshape(-1), vox[:, 2])
        counts = top + 1
        xy = np.repeat(columns, counts, axis=0)
        z = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        vox = np.concatenate([xy, z[:, None]], axis=1)
    mesh = mesh_from_voxels(vox, voxel_size, origin + voxel_size / 2, max_memory_gb=max_memory_gb)
    if cols is not None:
        _, nearest = cKDTree(pts).query(mesh.vertices)
        mesh.visual.vertex_colors = np.concatenate([to_uint8(cols[nearest]), np.full((len(nearest), 1), 255, np.uint8)], 1)
    return mesh


def write_mesh(
    path: str | os.PathLike,
    mesh: trimesh.Trimesh,
    *,
    crs: str | None = None,
    offset: Sequence[float] | None = None,
) -> Path:
    """Write a mesh as GLB, OBJ or PLY (by suffix) with its vertex colours.

    Vertices are stored as ``world - offset`` (``offset`` as in ``resolve_offset``); the
    offset and CRS go to a ``<file>.geo.json`` / ``.prj`` side file when there is one to record.
    """
    path = check_destination(path)
    suffix = path.suffix.lower()
    if suffix not in _MESH_FORMATS:
        raise ValueError(f"mesh format {path.suffix!r} not supported; use one of {_MESH_FORMATS}")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("mesh must be a trimesh.Trimesh with at least one face")
    verts = check_points(mesh.vertices)
    off = resolve_offset(verts, offset)
    local = mesh.copy()
    local.vertices = verts - off
    with atomic_write(path) as tmp:
        local.export(str(tmp), file_type=suffix[1:])
    write_georef_sidecar(path, crs=crs, offset=off)
    return path
