"""Height fidelity: how well a generated 3D surface follows its conditioning height map
(Sat2City conditions on a height map; this measures adherence to it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import as_points

__all__ = ["height_fidelity", "rasterize_max_height"]


def rasterize_max_height(
    points: np.ndarray, shape: tuple[int, int], meters_per_pixel: float, origin: Sequence[float]
) -> np.ndarray:
    """Top surface of ``points`` on a raster: per pixel the highest ``z - origin[2]`` of the
    points whose (x, y) falls in the pixel's half-open cell (docs/design.md), NaN where none."""
    ox, oy = float(origin[0]), float(origin[1])
    oz = float(origin[2]) if len(origin) > 2 else 0.0
    col = np.floor((points[:, 0] - ox) / meters_per_pixel).astype(np.int64)
    row = np.floor((points[:, 1] - oy) / meters_per_pixel).astype(np.int64)
    h, w = shape
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    top = np.full(h * w, -np.inf)
    np.maximum.at(top, row[inside] * w + col[inside], points[inside, 2] - oz)
    top[np.isinf(top)] = np.nan
    return top.reshape(h, w)


def height_fidelity(
    points, height_map: np.ndarray, meters_per_pixel: float, origin: Sequence[float] = (0.0, 0.0, 0.0)
) -> dict[str, float]:
    """Compare a generated surface with the height map it was conditioned on.

    ``points`` ``[N, 3]`` (world) are rasterized onto the height map's grid (pixel (i, j) covers
    ``origin + [j, j+1) x [i, i+1) * meters_per_pixel``; the top point of each pixel, relative
    to ``origin[2]`` like ``CityScene.height``). Over the pixels that hold points:
    ``rmse`` and ``mae`` in metres and the Pearson correlation ``pearson`` (NaN when either
    side is constant); ``coverage`` is the fraction of pixels that hold points.
    """
    pts = as_points("points", points).cpu().numpy()
    hm = np.asarray(height_map)
    if hm.ndim != 2 or hm.size == 0:
        raise ValueError(f"height_map must be a non-empty [H, W] array, got shape {hm.shape}")
    if not (np.issubdtype(hm.dtype, np.floating) or np.issubdtype(hm.dtype, np.integer)):
        raise ValueError(f"height_map must be numeric, got dtype {hm.dtype}")
    if not np.isfinite(hm).all():
        raise ValueError("height_map contains NaN or inf values")
    if not np.isfinite(meters_per_pixel) or meters_per_pixel <= 0:
        raise ValueError(f"meters_per_pixel must be a finite number > 0, got {meters_per_pixel}")
    if len(origin) not in (2, 3) or not np.isfinite(np.asarray(origin, dtype=np.float64)).all():
        raise ValueError(f"origin must be 2 or 3 finite numbers, got {origin!r}")
    top = rasterize_max_height(pts, hm.shape, meters_per_pixel, origin)
    hit = np.isfinite(top)
    if not hit.any():
        raise ValueError("no point falls inside the height map's extent")
    gen, ref = top[hit], hm[hit].astype(np.float64)
    err = gen - ref
    if gen.std() > 0 and ref.std() > 0:
        pearson = float(np.corrcoef(gen, ref)[0, 1])
    else:
        pearson = float("nan")
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "pearson": pearson,
        "coverage": float(hit.mean()),
    }
