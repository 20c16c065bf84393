"""Evaluation metrics: point-set distances (Chamfer, EMD), generative COV / MMD (Sat2City's
protocol), image PSNR / SSIM and height fidelity against a conditioning height map."""

from .distances import chamfer_distance, earth_movers_distance, nearest_neighbor_distances
from .generative import coverage_mmd, sample_point_set
from .height import height_fidelity, rasterize_max_height
from .image import psnr, ssim

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
]
