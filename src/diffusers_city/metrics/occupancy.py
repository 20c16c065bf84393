"""Occupancy agreement of two sets of grid cells (voxels ``[N, 3]``, raster cells ``[N, 2]``):
intersection over union, and accuracy over the whole grid (empty cells count as agreement)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["voxel_iou"]


def _cells(name: str, coords, grid: int) -> tuple[np.ndarray, int]:
    """Unique flat indices of integer cell ``coords [N, D]`` inside ``[0, grid)^D``, and D."""
    if isinstance(coords, torch.Tensor):
        coords = coords.detach().cpu().numpy()
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] < 1:
        raise ValueError(f"{name} must be [N, D] integer cell coordinates, got shape {coords.shape}")
    if coords.size and not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cell coordinates, got dtype {coords.dtype}")
    coords = coords.astype(np.int64)
    if coords.size and (coords.min() < 0 or coords.max() >= grid):
        raise ValueError(f"{name} has cells outside the grid [0, {grid}) (range {coords.min()}..{coords.max()})")
    flat = np.ravel_multi_index(coords.T, (grid,) * coords.shape[1]) if len(coords) else np.zeros(0, np.int64)
    return np.unique(flat), coords.shape[1]


def voxel_iou(pred_coords, target_coords, grid: int) -> dict[str, float]:
    """IoU and accuracy of the occupied cells ``pred_coords`` against ``target_coords`` (both
    ``[N, D]`` integer coordinates in ``[0, grid)``, duplicates ignored) on the ``grid^D`` grid.

    ``iou = |P & T| / |P | T|`` (1 when both are empty); ``accuracy`` = the fraction of all
    ``grid^D`` cells on which they agree (occupied in both or empty in both); the counts
    ``intersection``, ``union``, ``pred``, ``target`` let callers pool several grids.
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
    (p, dims), (t, target_dims) = _cells("pred_coords", pred_coords, int(grid)), _cells("target_coords", target_coords, int(grid))
    if dims != target_dims:
        raise ValueError(f"pred_coords and target_coords differ in dimensions: {dims} vs {target_dims}")
    inter = len(np.intersect1d(p, t, assume_unique=True))
    union = len(p) + len(t) - inter
    total = int(grid) ** dims
    return {
        "iou": inter / union if union else 1.0,
        "accuracy": (total - (union - inter)) / total,
        "intersection": inter,
        "union": union,
        "pred": len(p),
        "target": len(t),
    }
