"""Voxel tiles of coloured surface points: structure, ground-truth views and per-voxel view features.

A tile is an ``L^3`` cube of surface voxels (top surfaces and walls) in a `SparseTensor` with
coords ``(b, x, y, z)``, ``0 <= x, y, z < L``; voxel ``(x, y, z)`` has its centre at
``origin + (x, y, z) * voxel_size``. With the tile corner at the origin of its frame and
``origin = (v/2, v/2, v/2)``, column ``(x, y)`` covers the raster pixel ``[row = y, col = x]``
of a `CityScene` raster at ``meters_per_pixel = voxel_size`` (docs/design.md), so a semantic
map ``[L, L]`` lifts to the voxel columns by ``semantic[y, x]``.

Per-voxel view features (`aggregate_view_features`, ``FEATURE_CHANNELS = 10`` channels):

====== ==========================================================================
0:3    mean RGB of the views that see the voxel (0 when no view sees it)
3:6    RGB standard deviation over those views (population std, 0 for one view)
6:9    unit normal of the voxel's surface points (trilinear splat, `splat_normals`)
9      visibility: fraction of the views that see the voxel
====== ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..render import Cameras, render_points
from ..sparse import SparseTensor
from .convert import points_to_voxels

FEATURE_CHANNELS = 10
"""Channels of `aggregate_view_features`: mean RGB 3, RGB std 3, normal 3, visibility 1."""


def voxelize_surface(
    points: np.ndarray,
    normals: np.ndarray,
    colors: np.ndarray | None,
    resolution: int,
    voxel_size: float,
    origin: Sequence[float],
) -> SparseTensor:
    """Surface voxels of a point cloud inside the ``resolution^3`` cube at ``origin`` (centre of voxel 0).

    A voxel is occupied when a point's nearest voxel centre is its centre; voxels outside
    ``[0, resolution)^3`` are dropped. ``feats`` are the unit normals ``[M, 3]`` followed by
    the mean point colours ``[M, 3]`` when ``colors`` is given (see `points_to_voxels`);
    coords ``(0, x, y, z)`` int32, sorted.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    if np.asarray(origin, dtype=np.float64).shape != (3,):
        raise ValueError(f"origin must be 3 numbers (x, y, z), got {origin!r}")
    voxels = points_to_voxels(points, normals, voxel_size, origin=origin, colors=colors)
    xyz = voxels.coords[:, 1:]
    inside = ((xyz >= 0) & (xyz < int(resolution))).all(1)
    if not bool(inside.any()):
        raise ValueError(f"no point falls inside the {resolution}^3 tile at origin {tuple(origin)}")
    return SparseTensor(voxels.feats[inside], voxels.coords[inside], voxel_size=voxels.voxel_size, origin=voxels.origin)


@dataclass
class RenderedViews:
    """Views of one tile: ``images [V, H, W, 3]`` in 0..1, ``depth [V, H, W]`` (camera z, 0 where
    empty), ``alpha [V, H, W]`` (1 where a point was drawn) and their ``cameras``."""

    images: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor
    cameras: Cameras

    def __post_init__(self) -> None:
        if not isinstance(self.cameras, Cameras):
            raise ValueError(f"cameras must be a Cameras, got {type(self.cameras).__name__}")
        v, h, w = len(self.cameras), self.cameras.height, self.cameras.width
        if tuple(self.images.shape) != (v, h, w, 3):
            raise ValueError(f"images must be [{v}, {h}, {w}, 3] for these cameras, got {tuple(self.images.shape)}")
        for name in ("depth", "alpha"):
            if tuple(getattr(self, name).shape) != (v, h, w):
                raise ValueError(f"{name} must be [{v}, {h}, {w}] for these cameras, got {tuple(getattr(self, name).shape)}")


def render_views(points, colors, cameras: Cameras, *, radius: float, max_radius_px: int = 4) -> RenderedViews:
    """Ground-truth views of coloured points: a z-buffered splat (`render.render_points`),
    each point about ``radius`` metres wide (use the point spacing so the surface closes)."""
    out = render_points(points, colors, cameras, radius=radius, max_radius_px=max_radius_px)
    return RenderedViews(images=out.rgb, depth=out.depth[..., 0], alpha=out.alpha[..., 0], cameras=cameras)


def aggregate_view_features(voxels: SparseTensor, views: RenderedViews, *, depth_tolerance: float | None = None) -> SparseTensor:
    """Per-voxel features from the views, same coords as ``voxels`` (layout: module docstring).

    A view sees a voxel when the voxel centre projects inside the image onto a drawn pixel
    whose depth is at most ``depth_tolerance`` (default one voxel) in front of the centre;
    the voxel then takes that pixel's colour. ``voxels.feats[:, :3]`` must be the unit normals
    (as `voxelize_surface` writes them). One tile at a time: ``voxels.batch_size == 1``.
    """
    if not isinstance(voxels, SparseTensor):
        raise ValueError(f"voxels must be a SparseTensor, got {type(voxels).__name__}")
    if not isinstance(views, RenderedViews):
        raise ValueError(f"views must be RenderedViews, got {type(views).__name__}")
    if voxels.num_channels < 3:
        raise ValueError(f"voxels.feats must start with 3 normal channels, got {voxels.num_channels} channels")
    if voxels.batch_size != 1:
        raise ValueError(f"aggregate_view_features takes one tile (batch_size 1), got batch_size {voxels.batch_size}")
    tol = voxels.voxel_size if depth_tolerance is None else float(depth_tolerance)
    if not tol > 0:
        raise ValueError(f"depth_tolerance must be > 0, got {depth_tolerance}")
    cameras = views.cameras
    centres = voxels.world_positions().float()
    uv, z = cameras.project(centres)  # [V, N, 2], [V, N]
    H, W = cameras.height, cameras.width
    front = torch.isfinite(uv).all(-1) & (z > 0)
    col = torch.where(front, uv[..., 0], -1.0).floor().long()
    row = torch.where(front, uv[..., 1], -1.0).floor().long()
    inside = front & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    pix = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).unsqueeze(-1)  # [V, N, 1]
    drawn = views.alpha.reshape(len(cameras), -1, 1).gather(1, pix)[..., 0] > 0
    surface = views.depth.reshape(len(cameras), -1, 1).gather(1, pix)[..., 0]
    seen = inside & drawn & (surface >= z - tol)  # [V, N]
    rgb = views.images.reshape(len(cameras), -1, 3).gather(1, pix.expand(-1, -1, 3))  # [V, N, 3]
    weight = seen.float().unsqueeze(-1)
    count = weight.sum(0)  # [N, 1]
    mean = (rgb * weight).sum(0) / count.clamp_min(1)
    var = (((rgb - mean) ** 2) * weight).sum(0) / count.clamp_min(1)
    normals = voxels.feats[:, :3].float()
    feats = torch.cat([mean, var.sqrt(), normals, count / len(cameras)], 1)
    return voxels.replace(feats.to(voxels.feats.dtype if voxels.feats.is_floating_point() else torch.float32))


__all__ = ["FEATURE_CHANNELS", "RenderedViews", "aggregate_view_features", "render_views", "voxelize_surface"]
