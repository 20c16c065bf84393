"""Statistics of bird's-eye-view city layouts and distances between sets of layouts.

A generated layout (a semantic map plus a height map) has no per-pixel ground truth: another
correct sample puts its streets elsewhere. These functions compare what a layout generator must
get right instead -- how much of the area each class takes, how large and how tall buildings
are, how large the blocks between roads are -- pooled over a set of layouts. A map of i.i.d.
pixels with the right class frequencies matches the class histogram but not the footprint or
block sizes; another sample of the data's own generator matches all of them.

Buildings are the 4-connected components of ``roof`` pixels (rasters never label ``facade``);
blocks are the 4-connected components of the pixels that are neither ``road`` nor ``vehicle``
(vehicles stand on streets and parking lots: counted apart from roads, each would be a block).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from ..data.classes import NUM_CLASSES, ROAD, ROOF, VEHICLE, check_class_ids

__all__ = ["BUILDING_HEIGHT_QUANTILE", "LAYOUT_DISTANCE_METRICS", "layout_distances", "layout_statistics"]

BUILDING_HEIGHT_QUANTILE = 0.9
"""A building's height is this quantile of its footprint pixels' heights (robust to the lower
eaves of gable / hip roofs and to a few mislabelled edge pixels, unlike the maximum)."""

LAYOUT_DISTANCE_METRICS = (
    "class_tv",
    "footprint_log10_area_w1",
    "building_height_w1",
    "block_log10_area_w1",
    "road_fraction_abs",
)
"""Keys of :func:`layout_distances`, in table order."""

# per-component samples of a layout, concatenated when layouts are pooled
_SAMPLE_KEYS = ("footprint_areas_m2", "building_heights_m", "block_areas_m2")
_STAT_KEYS = ("class_fractions", "road_fraction", "num_pixels", *_SAMPLE_KEYS)


def _component_areas(mask: np.ndarray, pixel_area: float) -> tuple[np.ndarray, np.ndarray, int]:
    """4-connected components of ``mask``: (label image, area of each component in m², count)."""
    labels, count = ndimage.label(mask)
    pixels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, pixels.astype(np.float64) * pixel_area, count


def _component_quantile(labels: np.ndarray, values: np.ndarray, count: int, q: float) -> np.ndarray:
    """The ``q`` quantile (linear interpolation, as ``np.quantile``) of ``values`` over each
    component ``1..count`` of ``labels``, vectorised over the components."""
    inside = labels > 0
    lab, val = labels[inside], values[inside].astype(np.float64)
    order = np.lexsort((val, lab))
    val = val[order]
    sizes = np.bincount(lab, minlength=count + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = q * (sizes - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, sizes - 1)
    frac = pos - lo
    return val[starts + lo] * (1 - frac) + val[starts + hi] * frac


def layout_statistics(semantic, height, meters_per_pixel: float, region=None) -> dict:
    """Area, building and block statistics of one layout.

    Args:
        semantic: ``[H, W]`` integer class ids of the class table (building footprints ``roof``).
        height: ``[H, W]`` finite top-surface heights in metres.
        meters_per_pixel: ground sampling distance, finite and > 0.
        region: optional boolean ``[H, W]`` mask; only pixels inside it are counted, and
            footprints and blocks are cut to it (a component split by the mask counts as
            several). Used to compare a band along some lines (seams) with the rest of a map.

    Returns:
        A dict of
        ``class_fractions`` (float64 ``[NUM_CLASSES]``, area fraction of each class, sums to 1),
        ``footprint_areas_m2`` (float64 ``[B]``, area of each building footprint),
        ``building_heights_m`` (float64 ``[B]``, the :data:`BUILDING_HEIGHT_QUANTILE` quantile of
        each footprint's heights, in the same order), ``road_fraction`` (float),
        ``block_areas_m2`` (float64 ``[K]``, area of each block, see the module docstring) and ``num_pixels`` (int, pixels
        counted). Footprints and blocks touching the map (or region) border are kept with their
        truncated area: dropping them would bias large blocks away on small maps, where most
        blocks touch the border, and both sets of a comparison are truncated alike.
    """
    sem = np.asarray(semantic)
    if sem.ndim != 2 or 0 in sem.shape:
        raise ValueError(f"semantic must be a non-empty [H, W] array, got shape {sem.shape}")
    if not np.issubdtype(sem.dtype, np.integer):
        raise ValueError(f"semantic must hold integer class ids, got dtype {sem.dtype}")
    check_class_ids(sem, "semantic")
    hgt = np.asarray(height)
    if hgt.shape != sem.shape:
        raise ValueError(f"height shape {hgt.shape} does not match semantic shape {sem.shape}")
    if not (np.issubdtype(hgt.dtype, np.floating) or np.issubdtype(hgt.dtype, np.integer)):
        raise ValueError(f"height must be real numbers, got dtype {hgt.dtype}")
    if not np.isfinite(hgt).all():
        raise ValueError(f"height holds {int((~np.isfinite(hgt)).sum())} NaN/inf values")
    try:
        mpp = float(meters_per_pixel)
    except (TypeError, ValueError):
        raise ValueError(f"meters_per_pixel must be a number, got {meters_per_pixel!r}") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"meters_per_pixel must be finite and > 0, got {meters_per_pixel!r}")
    if region is None:
        inside = np.ones(sem.shape, dtype=bool)
    else:
        inside = np.asarray(region)
        if inside.dtype != np.bool_:
            raise ValueError(f"region must be a boolean mask, got dtype {inside.dtype}")
        if inside.shape != sem.shape:
            raise ValueError(f"region shape {inside.shape} does not match semantic shape {sem.shape}")
    num_pixels = int(inside.sum())
    if num_pixels == 0:
        raise ValueError("region holds no pixels")
    pixel_area = mpp * mpp
    fractions = np.bincount(sem[inside].astype(np.int64), minlength=NUM_CLASSES).astype(np.float64) / num_pixels
    labels, footprints, count = _component_areas((sem == ROOF) & inside, pixel_area)
    _, blocks, _ = _component_areas((sem != ROAD) & (sem != VEHICLE) & inside, pixel_area)
    return {
        "class_fractions": fractions,
        "footprint_areas_m2": footprints,
        "building_heights_m": _component_quantile(labels, hgt, count, BUILDING_HEIGHT_QUANTILE),
        "road_fraction": float(fractions[ROAD]),
        "block_areas_m2": blocks,
        "num_pixels": num_pixels,
    }


def _pooled(stats, name: str) -> dict:
    """The layouts of ``stats`` (one dict or a list) pooled: pixel-weighted class fractions,
    concatenated footprint, height and block samples."""
    items = [stats] if isinstance(stats, dict) else list(stats)
    if not items:
        raise ValueError(f"{name} is an empty list of layout statistics")
    for i, s in enumerate(items):
        missing = [k for k in _STAT_KEYS if not isinstance(s, dict) or k not in s]
        if missing:
            raise ValueError(f"{name}[{i}] is not a layout_statistics dict (missing {missing})")
    weights = np.array([s["num_pixels"] for s in items], dtype=np.float64)
    fractions = np.stack([np.asarray(s["class_fractions"], dtype=np.float64) for s in items])
    if fractions.shape[1] != NUM_CLASSES:
        raise ValueError(f"{name} class_fractions have {fractions.shape[1]} entries, expected {NUM_CLASSES}")
    return {
        "class_fractions": weights @ fractions / weights.sum(),
        **{k: np.concatenate([np.asarray(s[k], dtype=np.float64) for s in items]) for k in _SAMPLE_KEYS},
    }


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def layout_distances(stats_a, stats_b) -> dict[str, float]:
    """Distances between two sets of layouts, each a :func:`layout_statistics` dict or a list of
    them (pooled: class fractions weighted by pixel count, per-component samples concatenated).

    Keys (:data:`LAYOUT_DISTANCE_METRICS`, all 0 for identical sets, larger is further):

    - ``class_tv``: total variation ``0.5 * sum |p_a - p_b|`` of the class-fraction histograms
      (0..1);
    - ``footprint_log10_area_w1``: 1-D Wasserstein-1 distance of log10 footprint area (decades
      of m²; 0.3 is a factor of 2);
    - ``building_height_w1``: Wasserstein-1 distance of building heights (metres);
    - ``block_log10_area_w1``: Wasserstein-1 distance of log10 block area (decades of m²);
    - ``road_fraction_abs``: absolute difference of the road area fractions (0..1).

    A Wasserstein distance is NaN when either set has no component of its kind (no building,
    or roads everywhere): there is no distribution to compare, and NaN cannot pass for a match.
    """
    a, b = _pooled(stats_a, "stats_a"), _pooled(stats_b, "stats_b")
    return {
        "class_tv": float(0.5 * np.abs(a["class_fractions"] - b["class_fractions"]).sum()),
        "footprint_log10_area_w1": _w1(np.log10(a["footprint_areas_m2"]), np.log10(b["footprint_areas_m2"])),
        "building_height_w1": _w1(a["building_heights_m"], b["building_heights_m"]),
        "block_log10_area_w1": _w1(np.log10(a["block_areas_m2"]), np.log10(b["block_areas_m2"])),
        "road_fraction_abs": float(abs(a["class_fractions"][ROAD] - b["class_fractions"][ROAD])),
    }
