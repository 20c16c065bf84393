"""The one semantic class table shared by every raster, point cloud and model.

Semantic rasters label building footprints as ``ROOF``; ``FACADE`` appears only on 3D points
(walls sampled where the surface steps). GaussianCity's instance convention (roof id = facade
id + 1) is kept by the ids below.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "ground",
    "road",
    "facade",
    "roof",
    "vegetation",
    "water",
    "vehicle",
    "construction",
)
"""Class names in id order: ``CLASSES[i]`` is the name of class id ``i``."""

GROUND, ROAD, FACADE, ROOF, VEGETATION, WATER, VEHICLE, CONSTRUCTION = range(len(CLASSES))
NUM_CLASSES: int = len(CLASSES)
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

CLASS_COLORS: np.ndarray = np.array(
    [
        [0.55, 0.50, 0.45],  # ground
        [0.30, 0.30, 0.32],  # road
        [0.85, 0.60, 0.35],  # facade
        [0.80, 0.20, 0.20],  # roof
        [0.20, 0.60, 0.20],  # vegetation
        [0.15, 0.35, 0.80],  # water
        [0.95, 0.85, 0.10],  # vehicle
        [0.60, 0.40, 0.75],  # construction
    ],
    dtype=np.float32,
)
"""Display colour (0..1) of each class, for previews of semantic maps and point classes."""

INSTANCE_CLASSES: tuple[int, ...] = (ROOF, VEHICLE)
"""Classes whose raster pixels carry instance ids (connected components)."""


def check_class_ids(values: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if ``values`` holds ids outside the class table."""
    if values.size and (int(values.min()) < 0 or int(values.max()) >= NUM_CLASSES):
        bad = np.unique(values[(values < 0) | (values >= NUM_CLASSES)])[:8].tolist()
        raise ValueError(f"{name} holds class ids {bad} outside the class table 0..{NUM_CLASSES - 1} {CLASSES}")


def semantic_to_rgb(semantic: np.ndarray) -> np.ndarray:
    """Colour a semantic raster / class vector with ``CLASS_COLORS`` (float32, 0..1)."""
    semantic = np.asarray(semantic)
    check_class_ids(semantic, "semantic")
    return CLASS_COLORS[semantic]
