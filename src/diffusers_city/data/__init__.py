"""City data: the scene container, the class table, procedural cities, conversions and datasets."""

from .classes import (
    CLASS_COLORS,
    CLASS_IDS,
    CLASSES,
    CONSTRUCTION,
    FACADE,
    GROUND,
    NUM_CLASSES,
    ROAD,
    ROOF,
    VEGETATION,
    VEHICLE,
    WATER,
    semantic_to_rgb,
)
from .convert import (
    height_map_to_points,
    points_to_height_map,
    points_to_scene,
    points_to_voxels,
    splat_normals,
)
from .datasets import CameraViewDataset, SceneSource, VoxelCropDataset, VoxelTileDataset
from .noise import height_from_gray, height_to_gray, noisy_height_map
from .procedural import CityStyle, procedural_city
from .scene import CityScene, label_instances
from .tiles import FEATURE_CHANNELS, RenderedViews, aggregate_view_features, render_views, voxelize_surface

__all__ = [
    "CLASSES",
    "CLASS_IDS",
    "CLASS_COLORS",
    "NUM_CLASSES",
    "GROUND",
    "ROAD",
    "FACADE",
    "ROOF",
    "VEGETATION",
    "WATER",
    "VEHICLE",
    "CONSTRUCTION",
    "semantic_to_rgb",
    "CityScene",
    "label_instances",
    "CityStyle",
    "procedural_city",
    "noisy_height_map",
    "height_to_gray",
    "height_from_gray",
    "points_to_height_map",
    "points_to_scene",
    "height_map_to_points",
    "splat_normals",
    "points_to_voxels",
    "SceneSource",
    "VoxelCropDataset",
    "CameraViewDataset",
    "VoxelTileDataset",
    "FEATURE_CHANNELS",
    "RenderedViews",
    "aggregate_view_features",
    "render_views",
    "voxelize_surface",
]

# Readers of real geodata (height maps, DSMs, point clouds, semantic maps, aerial images).
from .readers import *  # noqa: E402,F401,F403
from .readers import __all__ as _readers_all  # noqa: E402

__all__ += _readers_all
