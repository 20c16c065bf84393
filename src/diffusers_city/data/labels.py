"""Class ids of generated 3D points from 2D rasters (for classified LAS / LAZ): the class of the
semantic-map cell under each point, or, without a semantic map, ground vs building from the
point's height above the terrain. Building points split into roof and facade by `roof_or_facade`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .classes import FACADE, GROUND, ROOF, check_class_ids

__all__ = ["BUILDING_HEIGHT_M", "classes_from_semantic", "classes_from_terrain", "roof_or_facade", "terrain_estimate"]

BUILDING_HEIGHT_M = 2.5
"""Height above the terrain from which a surface is a building (the DSM scenes' roof threshold)."""


def terrain_estimate(height: np.ndarray, mpp: float, window_m: float = 40.0) -> np.ndarray:
    """Terrain under a DSM: a grey opening wider than buildings, smoothed (rows of a
    morphological DTM filter)."""
    cells = min(window_m / mpp, 2 * max(height.shape) + 1)  # a window wider than the raster changes nothing
    size = max(3, int(round(cells)) | 1)
    ground = ndimage.grey_opening(height, size=(size, size), mode="nearest")
    ground = ndimage.uniform_filter(ground, size=size, mode="nearest")
    return np.minimum(ground, height)


def roof_or_facade(
    points: np.ndarray, normals: np.ndarray | None = None, cell: float = 1.0, tolerance: float = 0.5
) -> np.ndarray:
    """Whether each building point is roof: facing up (``|n_z| >= 0.5``) when ``normals`` are
    given, else within ``tolerance`` metres of the highest point of its ``cell``-metre column ("on top")."""
    if normals is not None:
        return np.abs(normals[:, 2]) >= 0.5
    if len(points) == 0:
        return np.zeros(0, bool)
    keys = np.floor(points[:, :2] / cell).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    top = np.full(inverse.max() + 1, -np.inf)
    np.maximum.at(top, inverse, points[:, 2])
    return points[:, 2] >= top[inverse] - tolerance


def _cells(points: np.ndarray, shape: tuple[int, int], mpp: float, origin: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Raster (row, column) under each point (rows along +y), clamped to the raster."""
    col = np.clip(np.floor((points[:, 0] - origin[0]) / mpp).astype(np.int64), 0, shape[1] - 1)
    row = np.clip(np.floor((points[:, 1] - origin[1]) / mpp).astype(np.int64), 0, shape[0] - 1)
    return row, col


def _split_buildings(classes: np.ndarray, points: np.ndarray, normals: np.ndarray | None, cell: float) -> np.ndarray:
    building = classes == ROOF
    if building.any():
        roof = roof_or_facade(points[building], None if normals is None else normals[building], cell, cell)
        classes[building] = np.where(roof, ROOF, FACADE)
    return classes


def classes_from_semantic(
    points: np.ndarray,
    semantic: np.ndarray,
    meters_per_pixel: float,
    origin: Sequence[float],
    normals: np.ndarray | None = None,
) -> np.ndarray:
    """``[N]`` class ids (uint8): the ``semantic`` raster's class (``[H, W]``, pixel ``(i, j)``
    spanning ``origin + (j, i) * meters_per_pixel``) under each point, points over roof pixels
    split into roof / facade (facing up, or without ``normals`` within a pixel of their column's
    top); points beyond the raster take its nearest edge pixel."""
    semantic = np.asarray(semantic)
    check_class_ids(semantic, "semantic")
    row, col = _cells(points, semantic.shape, meters_per_pixel, origin)
    classes = semantic[row, col].astype(np.uint8)
    return _split_buildings(classes, points, normals, meters_per_pixel)


def classes_from_terrain(
    points: np.ndarray,
    terrain: np.ndarray,
    meters_per_pixel: float,
    origin: Sequence[float],
    normals: np.ndarray | None = None,
    building_m: float = BUILDING_HEIGHT_M,
) -> np.ndarray:
    """``[N]`` class ids (uint8) without a semantic map: points more than ``building_m`` above the
    ``terrain`` raster (heights above ``origin[2]``, layout as in `classes_from_semantic`) are
    building (roof / facade), the others ground. Vegetation, roads and water are not told apart."""
    row, col = _cells(points, terrain.shape, meters_per_pixel, origin)
    above = points[:, 2] - origin[2] - terrain[row, col]
    classes = np.where(above > building_m, ROOF, GROUND).astype(np.uint8)
    return _split_buildings(classes, points, normals, meters_per_pixel)
