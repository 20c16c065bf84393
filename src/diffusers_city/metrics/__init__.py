"""Evaluation metrics: point-set distances (Chamfer, EMD), generative COV / MMD (Sat2City's
protocol), image PSNR / SSIM, height fidelity against a conditioning height map and occupancy IoU
of voxel / raster cells."""

from .distances import chamfer_distance, earth_movers_distance, nearest_neighbor_distances
from .generative import coverage_mmd, sample_point_set
from .height import height_fidelity, rasterize_max_height
from .image import psnr, ssim
from .occupancy import voxel_iou

__all__ = [
    "chamfer_distance",
    "coverage_mmd",
    "earth_movers_distance",
    "height_fidelity",
    "nearest_neighbor_distances",
    "psnr",
    "rasterize_max_height",
    "sample_point_set",
    "ssim",
    "voxel_iou",
]
