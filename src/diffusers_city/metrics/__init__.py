"""Evaluation metrics: point-set distances (Chamfer, EMD), generative COV / MMD (Sat2City's
protocol), image PSNR / SSIM, height fidelity against a conditioning height map, occupancy IoU
of voxel / raster cells, distances between feature distributions (sliced Wasserstein, kernel
MMD of per-instance colour and patch statistics), statistics of bird's-eye-view layouts (class
areas, footprint, building height and block distributions) and distances between sets of them,
FID / KID through torchmetrics and the view consistency (flicker) of rendered sequences."""

from .consistency import view_consistency
from .distances import chamfer_distance, earth_movers_distance, nearest_neighbor_distances
from .distribution import (
    COLOR_DISTRIBUTION_METRICS,
    color_distribution_distances,
    distribution_distances,
    instance_color_statistics,
    patch_statistics,
    rbf_mmd,
    sliced_wasserstein_distance,
)
from .generative import coverage_mmd, sample_point_set
from .height import height_fidelity, rasterize_max_height
from .image import psnr, ssim
from .inception import frechet_inception_distance, inception_feature_extractor, kernel_inception_distance
from .layout import BUILDING_HEIGHT_QUANTILE, LAYOUT_DISTANCE_METRICS, layout_distances, layout_statistics
from .occupancy import voxel_iou

__all__ = [
    "BUILDING_HEIGHT_QUANTILE",
    "COLOR_DISTRIBUTION_METRICS",
    "LAYOUT_DISTANCE_METRICS",
    "color_distribution_distances",
    "chamfer_distance",
    "coverage_mmd",
    "distribution_distances",
    "earth_movers_distance",
    "frechet_inception_distance",
    "height_fidelity",
    "inception_feature_extractor",
    "instance_color_statistics",
    "kernel_inception_distance",
    "layout_distances",
    "layout_statistics",
    "nearest_neighbor_distances",
    "patch_statistics",
    "psnr",
    "rasterize_max_height",
    "rbf_mmd",
    "sample_point_set",
    "sliced_wasserstein_distance",
    "ssim",
    "view_consistency",
    "voxel_iou",
]
