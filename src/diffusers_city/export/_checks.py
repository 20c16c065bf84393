"""Validation of point attributes before any file is opened."""

from __future__ import annotations

import numpy as np

from ..data.classes import check_class_ids


def check_points(points) -> np.ndarray:
    """Finite ``[N, 3]`` float64 points with N >= 1."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {pts.shape}")
    if not (np.issubdtype(pts.dtype, np.floating) or np.issubdtype(pts.dtype, np.integer)):
        raise ValueError(f"points must be numeric, got dtype {pts.dtype}")
    if len(pts) == 0:
        raise ValueError("the point cloud has no points")
    pts = pts.astype(np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"points hold {int((~np.isfinite(pts)).any(1).sum())} rows with NaN/inf")
    return pts


def check_attribute(values, n: int, name: str, width: int | None, *, unit: bool = False) -> np.ndarray | None:
    """``[n, width]`` (or ``[n]`` for ``width=None``) finite values; ``unit`` requires 0..1."""
    if values is None:
        return None
    arr = np.asarray(values)
    shape = (n,) if width is None else (n, width)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} like the points, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} hold NaN/inf values")
    if unit and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name} must lie in 0..1 (got {arr.min():.3g}..{arr.max():.3g})")
    return arr


def check_classes(classes, n: int) -> np.ndarray | None:
    """``[n]`` integer class ids of the class table."""
    if classes is None:
        return None
    arr = np.asarray(classes)
    if arr.shape != (n,):
        raise ValueError(f"classes must have shape ({n},) like the points, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"classes must be integers, got dtype {arr.dtype}")
    check_class_ids(arr, "classes")
    return arr.astype(np.uint8)


def to_uint8(colors: np.ndarray) -> np.ndarray:
    """0..1 colours to 8-bit levels."""
    return np.round(colors * 255.0).astype(np.uint8)
