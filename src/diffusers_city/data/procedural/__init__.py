"""Procedural cities: the training and test data of every model in diffusers-city.

`procedural_city` lays out districts with rotated street grids, blocks, lots and buildings
(rectangles, L shapes, courtyards, towers on podiums, round towers; flat, gable and hip roofs),
parks, ponds, rivers, parking lots, construction sites, trees, vehicles and gentle terrain
(`layout`), colours them (`texture`), and samples a dense coloured point cloud with normals on
the top surface and on every wall (`surface`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ...utils.memory import check_memory
from ..classes import NUM_CLASSES
from ..noise import hash_u64
from ..scene import CityScene
from .layout import MATERIAL_CLASS, Layout, build_layout
from .style import KIND_NAMES, CityStyle
from .surface import sample_top, sample_walls, wall_classes
from .texture import shade, sun_direction, top_colors, wall_colors

__all__ = ["procedural_city", "estimate_memory_bytes", "CityStyle", "KIND_NAMES"]

# Rough peak bytes (measured): per raster pixel (the layout's maps and their temporaries), per
# aerial image pixel, per surface point; walls give about twice the points of the top surface.
_BYTES_PER_PIXEL = 640
_BYTES_PER_IMAGE_PIXEL = 64
_BYTES_PER_POINT = 200
_POINTS_PER_TOP_POINT = 3


def _check_size(size_m, meters_per_pixel: float) -> tuple[int, int]:
    sizes = (size_m, size_m) if np.isscalar(size_m) else tuple(size_m)
    if len(sizes) != 2:
        raise ValueError(f"size_m must be a number or (size_x, size_y), got {size_m!r}")
    out = []
    for s in sizes:
        try:
            s = float(s)
        except (TypeError, ValueError):
            raise ValueError(f"size_m must be numeric, got {size_m!r}") from None
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"size_m must be finite and > 0, got {size_m!r}")
        n = int(round(s / meters_per_pixel))
        if n < 1:
            raise ValueError(f"size_m {s} is smaller than one pixel of {meters_per_pixel} m")
        out.append(n)
    return out[1], out[0]  # (H, W)


def estimate_memory_bytes(
    shape: tuple[int, int], meters_per_pixel: float, points_per_m2: float, with_points: bool, image_scale: int | None
) -> int:
    """Rough peak memory of a procedural city of ``shape`` pixels (``image_scale``: ``None`` for no image)."""
    pixels = shape[0] * shape[1]
    need = pixels * _BYTES_PER_PIXEL
    if image_scale is not None:
        need += pixels * image_scale**2 * _BYTES_PER_IMAGE_PIXEL
    if with_points:
        need += pixels * meters_per_pixel**2 * points_per_m2 * _POINTS_PER_TOP_POINT * _BYTES_PER_POINT
    return int(need)


def procedural_city(
    seed: int,
    size_m: float | tuple[float, float] = 256.0,
    meters_per_pixel: float = 1.0,
    points_per_m2: float = 4.0,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    with_points: bool = True,
    with_image: bool = True,
    max_memory_gb: float | None = None,
    palette_seed: int | None = None,
    **style,
) -> CityScene:
    """Generate a deterministic procedural city.

    Args:
        seed: any integer; the same seed, size, resolution and style give the same scene.
        size_m: side (or ``(size_x, size_y)``) in metres; the raster has ``round(size / mpp)`` pixels.
        meters_per_pixel: raster resolution.
        points_per_m2: surface point density (top surfaces per m^2 of surface, walls per m^2 of wall).
        origin: world position of the scene corner (x, y) and of height 0 (z).
        with_points / with_image: skip the point cloud or the aerial image when not needed.
        max_memory_gb: refuse (``MemoryLimitError``, a ``ValueError``, with the estimate) a city
            whose estimated peak memory exceeds this many GB (default: the memory available now).
        palette_seed: draw every object's palette and texture (roof, facade, window and car
            colours, district tints) from this seed instead of ``seed``, keeping the geometry,
            classes, instances, point positions and sun: the same city painted as another sample
            of the generator (the "perfect sampler" reference of a colour model). None: ``seed``.
        **style: any `CityStyle` field (district size, height scale, densities, terrain...).

    Returns:
        `CityScene` with height, ground, semantic, instance, points / colors / normals /
        point_classes (walls labelled facade on buildings), the aerial image (top colours with a
        baked sun term) and ``metadata`` recording the generator arguments.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    try:
        mpp = float(meters_per_pixel)
    except (TypeError, ValueError):
        raise ValueError(f"meters_per_pixel must be a number, got {meters_per_pixel!r}") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"meters_per_pixel must be finite and > 0, got {meters_per_pixel!r}")
    if not (isinstance(points_per_m2, (int, float, np.number)) and math.isfinite(points_per_m2) and points_per_m2 > 0):
        raise ValueError(f"points_per_m2 must be finite and > 0, got {points_per_m2!r}")
    shape = _check_size(size_m, mpp)
    origin_arr = np.asarray(origin, dtype=np.float64).reshape(-1)
    if origin_arr.shape != (3,) or not np.isfinite(origin_arr).all():
        raise ValueError(f"origin must be 3 finite numbers, got {origin!r}")
    city_style = CityStyle.from_kwargs(**style)
    seed = int(seed)
    need = estimate_memory_bytes(shape, mpp, float(points_per_m2), with_points, city_style.image_scale if with_image else None)
    check_memory(
        need,
        max_memory_gb,
        f"procedural_city of {shape[1]}x{shape[0]} px at {mpp:g} m/px",
        hint="make it smaller, coarser or sparser",
    )

    if palette_seed is not None and (isinstance(palette_seed, bool) or not isinstance(palette_seed, (int, np.integer))):
        raise ValueError(f"palette_seed must be an integer or None, got {palette_seed!r}")
    layout = build_layout(seed, shape, mpp, city_style)
    if palette_seed is not None:
        layout = _repaint(layout, int(palette_seed))
    sun = sun_direction(seed, city_style.sun_azimuth_deg, city_style.sun_elevation_deg)
    fields: dict = {}
    if with_points:
        fields.update(_points(layout, seed, mpp, float(points_per_m2), city_style, sun, origin_arr))
    if with_image:
        fields["image"] = _image(layout, mpp, city_style.image_scale, sun)
    semantic = layout.semantic
    assert semantic.max() < NUM_CLASSES
    metadata = {
        "generator": "procedural_city",
        "seed": seed,
        "size_m": [shape[1] * mpp, shape[0] * mpp],
        "meters_per_pixel": mpp,
        "points_per_m2": float(points_per_m2),
        "style": city_style.to_json(),
    }
    if palette_seed is not None:
        metadata["palette_seed"] = int(palette_seed)
    return CityScene(
        height=layout.height,
        semantic=semantic,
        meters_per_pixel=mpp,
        origin=tuple(origin_arr),
        ground=layout.ground,
        metadata=metadata,
        **fields,
    )


def _repaint(layout: Layout, palette_seed: int) -> Layout:
    """``layout`` with the object keys and the seed the colours are drawn from replaced (the
    rasters, hence geometry and classes, unchanged)."""
    key = hash_u64(layout.key, palette_seed & 0xFFFFFFFF, 0x9A1E77E)
    return dataclasses.replace(layout, key=key, seed=int(hash_u64(layout.seed, palette_seed & 0xFFFFFFFF) >> np.uint64(33)))


def _points(layout: Layout, seed: int, mpp: float, ppm2: float, style: CityStyle, sun: np.ndarray, origin: np.ndarray) -> dict:
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x9017])
    top_xyz, top_n, top_cell = sample_top(layout.height, layout.gx, layout.gy, mpp, ppm2, rng)
    wall_xyz, wall_n, wall_cell = sample_walls(layout.height, mpp, ppm2, style.wall_min_step_m, rng)
    top_rgb = shade(top_colors(layout, top_xyz[:, 0], top_xyz[:, 1], top_cell), top_n, sun)
    wall_rgb = shade(
        wall_colors(layout, wall_xyz[:, 0], wall_xyz[:, 1], wall_xyz[:, 2], wall_n[:, 0], wall_n[:, 1], wall_cell), wall_n, sun
    )
    material = layout.material.ravel()
    classes = np.concatenate([MATERIAL_CLASS[material[top_cell]], wall_classes(MATERIAL_CLASS[material[wall_cell]])])
    points = np.concatenate([top_xyz, wall_xyz]) + origin
    return {
        "points": points.astype(np.float32),
        "colors": np.concatenate([top_rgb, wall_rgb]).astype(np.float32),
        "normals": np.concatenate([top_n, wall_n]).astype(np.float32),
        "point_classes": classes,
    }


def _image(layout: Layout, mpp: float, scale: int, sun: np.ndarray) -> np.ndarray:
    """Aerial orthophoto: top colours at the centres of a ``scale``-times finer pixel grid."""
    h, w = layout.height.shape
    ii, jj = np.meshgrid(np.arange(h * scale), np.arange(w * scale), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    cell = (ii // scale) * w + (jj // scale)
    x = (jj + 0.5) * (mpp / scale)
    y = (ii + 0.5) * (mpp / scale)
    gx, gy = layout.gx.ravel()[cell].astype(np.float64), layout.gy.ravel()[cell].astype(np.float64)
    normals = np.stack([-gx, -gy, np.ones_like(gx)], axis=1) / np.sqrt(1 + gx * gx + gy * gy)[:, None]
    rgb = shade(top_colors(layout, x, y, cell), normals, sun)
    return (np.round(rgb * 255) / 255.0).astype(np.float32).reshape(h * scale, w * scale, 3)
