"""View consistency of rendered sequences: how much the colour of the same surface point
changes between consecutive frames (flicker). A 3D-consistent renderer keeps a point's colour
as the camera moves; per-frame decoding that resamples appearance does not."""

from __future__ import annotations

import torch

from ..render.cameras import Cameras
from ._common import as_images, as_points

__all__ = ["view_consistency"]


def _sample(frames: torch.Tensor, depths: torch.Tensor | None, cameras: Cameras, points: torch.Tensor, tol: float):
    """Colours ``[F, N, C]`` of ``points`` in every frame (nearest pixel) and where they are visible ``[F, N]``."""
    uv, z = cameras.project(points)
    uv, z = uv.double(), z.double()
    cols = torch.floor(uv[..., 0]).nan_to_num(-1).clamp(-1, cameras.width).long()
    rows = torch.floor(uv[..., 1]).nan_to_num(-1).clamp(-1, cameras.height).long()
    visible = (z > 0) & (cols >= 0) & (cols < cameras.width) & (rows >= 0) & (rows < cameras.height)
    cols, rows = cols.clamp(0, cameras.width - 1), rows.clamp(0, cameras.height - 1)
    f = torch.arange(len(frames))[:, None]
    if depths is not None:
        visible &= (depths[f, rows, cols] - z).abs() <= tol * z
    return frames[f, rows, cols], visible


def view_consistency(frames, cameras: Cameras, points, *, depths=None, depth_tolerance: float = 0.05) -> dict:
    """Mean absolute colour change of surface points between consecutive frames.

    Every world point of ``points [N, 3]`` (e.g. a scene's surface points) is projected into
    every frame with ``cameras`` (the package's OpenCV convention, one camera per frame) and
    takes the colour of the pixel it falls in. A point counts in a pair of consecutive frames
    when it is visible in both: in front of the camera, inside the image and, with ``depths``
    (camera z per pixel, e.g. ``RenderOutput.depth``; 0 where empty), within
    ``depth_tolerance * z`` of the rendered depth, so occluded points are left out. Without
    ``depths`` every point in the frustum counts, occluded or not.

    Args:
        frames: ``[F, H, W, C]`` colours (F >= 2), in the units the result is reported in.
        cameras: ``F`` cameras of the frames' size.
        points: ``[N, 3]`` world points.
        depths: optional ``[F, H, W]`` or ``[F, H, W, 1]`` per-pixel camera z.
        depth_tolerance: relative depth agreement for visibility.

    Returns:
        ``flicker``: the mean over all (pair, point) samples of the channel-mean absolute
        colour change; ``per_pair``: ``[F - 1]`` means per pair (NaN where no point is
        shared); ``shared_fraction``: mean fraction of the points visible in both frames.
    """
    img = as_images("frames", frames).permute(0, 2, 3, 1)  # [F, H, W, C]
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a diffusers_city.render.Cameras, got {type(cameras).__name__}")
    n_frames, height, width, _ = img.shape
    if n_frames < 2:
        raise ValueError(f"view consistency needs at least 2 frames, got {n_frames}")
    if len(cameras) != n_frames or (cameras.height, cameras.width) != (height, width):
        raise ValueError(
            f"cameras ({len(cameras)} of {cameras.width}x{cameras.height}) must match the frames ({n_frames} of {width}x{height})"
        )
    if not depth_tolerance > 0:
        raise ValueError(f"depth_tolerance must be > 0, got {depth_tolerance}")
    pts = as_points("points", points)
    dep = None
    if depths is not None:
        dep = torch.as_tensor(depths)
        dep = as_images("depths", dep[..., None] if dep.ndim == 3 else dep)
        if dep.shape != (n_frames, 1, height, width):
            raise ValueError(f"depths must be [F, H, W] or [F, H, W, 1] matching the frames, got {tuple(depths.shape)}")
        dep = dep[:, 0]
    colors, visible = _sample(img, dep, cameras.to(dtype=torch.float64), pts, depth_tolerance)
    shared = visible[1:] & visible[:-1]  # [F - 1, N]
    change = (colors[1:] - colors[:-1]).abs().mean(-1)  # [F - 1, N]
    counts = shared.sum(1)
    per_pair = torch.where(shared, change, 0).sum(1) / counts
    total = int(counts.sum())
    return {
        "flicker": float(torch.where(shared, change, 0).sum() / total) if total else float("nan"),
        "per_pair": per_pair,
        "shared_fraction": float(shared.double().mean()),
    }
