"""Z-buffered point splatting: PNG previews of scenes and ground-truth views of coloured points.

`render_points_preview`: points splatted as small squares with an orthographic camera, the
nearest point wins each pixel, and a hillshade computed from the screen-space depth map gives
the surfaces relief. Pure numpy: about a second for a million points.

`render_points`: the same z-buffer through pinhole `Cameras` (torch, no gradients), each point
a square of about its world ``radius`` in pixels; the ground-truth views of coloured surface
points that texture models are trained on.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .cameras import Cameras
from .gaussians import RenderOutput, _background

_MAX_AUTO_POINT_SIZE = 16  # pixels: a sparse cloud in a large image stays points, not tiles
_LIGHT = np.array([-1.0, -1.0, 1.5]) / np.linalg.norm([-1.0, -1.0, 1.5])


def _height_colors(z: np.ndarray) -> np.ndarray:
    """Blue-green-yellow-white ramp over the height range, for uncoloured clouds."""
    t = (z - z.min()) / max(float(np.ptp(z)), 1e-9)
    stops = np.array([[0.2, 0.3, 0.6], [0.3, 0.6, 0.3], [0.85, 0.8, 0.4], [0.97, 0.97, 0.97]])
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(np.int64), len(stops) - 2)
    f = (pos - i)[:, None]
    return stops[i] * (1 - f) + stops[i + 1] * f


def _point_spacing(pts: np.ndarray, samples: int = 4096) -> float:
    """Median distance from a point to its nearest neighbour (metres), over a fixed sample of points."""
    from scipy.spatial import cKDTree

    if len(pts) < 2:
        return 0.0
    sample = pts[np.linspace(0, len(pts) - 1, min(samples, len(pts))).astype(np.int64)]
    distances, _ = cKDTree(pts).query(sample, k=2)
    return float(np.median(distances[:, 1]))


def _view_axes(view: str, azimuth_deg: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screen right, screen down and viewing direction (world) of the orthographic camera."""
    if view == "top":
        # raster layout: columns follow +x, rows follow +y (docs/design.md), looking down -z
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    forward = -np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return right, down, forward


def _orbit_frame(pts, view, elevation_deg, right, down) -> tuple[tuple[float, float], tuple[float, float]]:
    """Screen centre of the bounding box and the box's largest screen half-extents over all azimuths."""
    lo, hi = pts.min(0), pts.max(0)
    centre = 0.5 * (lo + hi)
    offsets = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) - centre
    half_u = half_v = 0.0
    for az in range(360):  # 1 degree steps: within 4e-5 of the true maximum, well inside the margin
        r, d, _ = _view_axes(view, float(az), elevation_deg)
        half_u, half_v = max(half_u, float(np.abs(offsets @ r).max())), max(half_v, float(np.abs(offsets @ d).max()))
    return (float(centre @ right), float(centre @ down)), (half_u, half_v)


def render_points_preview(
    points,
    colors=None,
    view: Literal["top", "oblique"] = "oblique",
    width: int = 512,
    height: int = 512,
    *,
    point_size: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    shading: bool = True,
    azimuth_deg: float = -135.0,
    elevation_deg: float = 35.0,
    margin: float = 0.03,
    framing: Literal["view", "orbit"] = "view",
) -> Image.Image:
    """Render ``points [N, 3]`` (world metres, z up) with ``colors [N, 3]`` to an RGB image.

    ``view="top"`` looks straight down with columns along +x and rows along +y (the raster
    layout); ``"oblique"`` is an orthographic view from ``azimuth_deg`` (measured from +x
    towards +y, the direction the camera sits in) and ``elevation_deg``. Colours are floats
    in 0..1 or uint8; ``None`` colours by height. The cloud is fitted into the image.
    Each point is a ``point_size`` pixel square; by default as wide as the points' spacing in
    the image (at least 2 px), so a surface sampled on a grid shows no gaps between its rows.
    ``framing="view"`` fits the cloud as seen from this view; ``"orbit"`` centres its bounding
    box and uses the scale that fits that box from every azimuth at ``elevation_deg``, so the
    frames of an orbit (azimuth varied, all else fixed) share one scale and centre.
    """
    if view not in ("top", "oblique"):
        raise ValueError(f"view must be 'top' or 'oblique', got {view!r}")
    if framing not in ("view", "orbit"):
        raise ValueError(f"framing must be 'view' or 'orbit', got {framing!r}")
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    if point_size is not None and (int(point_size) != point_size or point_size < 1):
        raise ValueError(f"point_size must be a positive integer, got {point_size}")
    if hasattr(points, "detach"):
        points = points.detach().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or Inf")
    if colors is None:
        cols = _height_colors(pts[:, 2]) if len(pts) else np.zeros((0, 3))
    else:
        if hasattr(colors, "detach"):
            colors = colors.detach().cpu().numpy()
        cols = np.asarray(colors)
        if cols.shape != pts.shape:
            raise ValueError(f"colors must have shape [N, 3] matching points {pts.shape}, got {cols.shape}")
        cols = cols / 255.0 if cols.dtype == np.uint8 else cols.astype(np.float64)
        if not np.isfinite(cols).all():
            raise ValueError("colors contain NaN or Inf")
    image = np.empty((height, width, 3), dtype=np.float64)
    image[:] = np.asarray(background, dtype=np.float64) / 255.0
    if len(pts) == 0:
        return Image.fromarray(np.round(image * 255).astype(np.uint8))

    right, down, forward = _view_axes(view, azimuth_deg, elevation_deg)
    u, v, depth = pts @ right, pts @ down, pts @ forward
    if framing == "orbit":
        (cu, cv), (half_u, half_v) = _orbit_frame(pts, view, elevation_deg, right, down)
    else:
        cu, cv = 0.5 * (u.min() + u.max()), 0.5 * (v.min() + v.max())
        half_u, half_v = 0.5 * float(np.ptp(u)), 0.5 * float(np.ptp(v))
    span = max(2 * half_u / width, 2 * half_v / height, 1e-9) / (1.0 - 2.0 * margin)  # metres / pixel
    col = (u - cu) / span + 0.5 * width
    row = (v - cv) / span + 0.5 * height
    ci = np.clip(np.floor(col).astype(np.int64), 0, width - 1)
    ri = np.clip(np.floor(row).astype(np.int64), 0, height - 1)
    if point_size is None:
        point_size = int(np.clip(math.ceil(_point_spacing(pts) / span), 2, _MAX_AUTO_POINT_SIZE))

    # splat each point to a point_size x point_size square, nearest (smallest depth) wins
    offsets = np.arange(point_size) - (point_size - 1) // 2
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    rr = (ri[:, None] + oy.reshape(1, -1)).reshape(-1)
    cc = (ci[:, None] + ox.reshape(1, -1)).reshape(-1)
    src = np.repeat(np.arange(len(pts)), point_size * point_size)
    ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    pix, src = rr[ok] * width + cc[ok], src[ok]
    depth_rank = np.empty(len(pts), dtype=np.int64)
    depth_rank[np.argsort(depth, kind="stable")] = np.arange(len(pts))
    order = np.argsort(pix * len(pts) + depth_rank[src], kind="stable")
    pix, src = pix[order], src[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    pix, src = pix[first], src[first]

    flat = image.reshape(-1, 3)
    flat[pix] = cols[src]
    if shading:
        zbuf = np.full(height * width, np.nan)
        zbuf[pix] = -depth[src] / span  # "height" towards the viewer, in pixels
        zbuf = zbuf.reshape(height, width)
        filled = np.where(np.isnan(zbuf), np.nanmedian(zbuf), zbuf)
        gy, gx = np.gradient(filled)
        # ignore gradients across empty pixels
        empty = np.isnan(zbuf)
        nb_empty = empty | np.roll(empty, 1, 0) | np.roll(empty, -1, 0) | np.roll(empty, 1, 1) | np.roll(empty, -1, 1)
        gx[nb_empty], gy[nb_empty] = 0.0, 0.0
        normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        lambert = np.clip(normal @ _LIGHT, 0.0, 1.0).reshape(-1)
        flat[pix] *= (0.45 + 0.55 * lambert[pix] / max(float(_LIGHT[2]), 1e-6)).clip(0.0, 1.25)[:, None]
    return Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))


@torch.no_grad()
def render_points(
    points,
    colors,
    cameras: Cameras,
    *,
    radius: float,
    max_radius_px: int = 4,
    near_plane: float = 0.01,
    background=None,
) -> RenderOutput:
    """Render ``points [N, 3]`` with ``colors [N, 3]`` (0..1) from every camera, nearest point first.

    Each point covers the pixel square of half-size ``round(f * radius / depth)`` pixels
    (at most ``max_radius_px``) around its projection; ties in depth go to the lower point
    index, so the result does not depend on the device or thread count. Returns
    ``RenderOutput(rgb [C, H, W, 3], depth [C, H, W, 1] (camera z, 0 where empty), alpha [C, H, W, 1] in {0, 1})``.
    """
    if not isinstance(cameras, Cameras):
        raise ValueError(f"render_points expects a Cameras, got {type(cameras).__name__}")
    points = torch.as_tensor(points, dtype=torch.float32)
    colors = torch.as_tensor(colors, dtype=torch.float32, device=points.device)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N, 3], got {tuple(points.shape)} and {tuple(colors.shape)}")
    if not bool(torch.isfinite(points).all()) or not bool(torch.isfinite(colors).all()):
        raise ValueError("points / colors contain NaN or Inf")
    if not radius > 0 or int(max_radius_px) != max_radius_px or max_radius_px < 0:
        raise ValueError(f"need radius > 0 and an integer max_radius_px >= 0, got {radius}, {max_radius_px}")
    cameras = cameras.to(device=points.device, dtype=torch.float32)
    C, H, W = len(cameras), cameras.height, cameras.width
    bg = _background(background, C, points.device, torch.float32)
    rgb = bg[:, None, None, :].expand(C, H, W, 3).clone()
    depth = torch.zeros(C, H * W, device=points.device)
    alpha = torch.zeros(C, H * W, device=points.device)
    uv, z = cameras.project(points)
    index = torch.arange(points.shape[0], device=points.device)
    for c in range(C):
        front = z[c] > near_plane
        u, v, zc, idx = uv[c, front, 0], uv[c, front, 1], z[c, front], index[front]
        if zc.numel() == 0:
            continue
        r = (cameras.K[c, 0, 0] * radius / zc).round().clamp(0, max_radius_px).long()
        col, row = u.floor().long(), v.floor().long()
        reach = int(r.max())
        pix, src = [], []
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                rr, cc = row + dy, col + dx
                ok = (r >= max(abs(dx), abs(dy))) & (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
                pix.append(rr[ok] * W + cc[ok])
                src.append(ok.nonzero().squeeze(1))
        pix, src = torch.cat(pix), torch.cat(src)
        zs = zc[src]
        nearest = torch.full((H * W,), float("inf"), device=points.device).scatter_reduce(0, pix, zs, "amin")
        win = zs == nearest[pix]
        first = torch.full((H * W,), points.shape[0], device=points.device, dtype=torch.long)
        first = first.scatter_reduce(0, pix[win], idx[src[win]], "amin")
        hit = first < points.shape[0]
        rgb[c].view(H * W, 3)[hit] = colors[first[hit]]
        depth[c, hit] = nearest[hit]
        alpha[c, hit] = 1.0
    return RenderOutput(rgb=rgb, depth=depth.view(C, H, W, 1), alpha=alpha.view(C, H, W, 1))
