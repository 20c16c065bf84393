"""The conditions of Sat2City's cascade stages (Sec. 3.2), computed from decoded voxels.

- :func:`sparse_condition`: stage 2's condition from the dense stage's grid {G, A_N} (Eq. 5),
  with the height-map columns of a height-aware stage (our addition).
- :func:`struct_condition`: stage 3's condition from the pruning decisions ``struct`` (Eq. 6).
"""

from __future__ import annotations

import torch

from ...sparse import SparseTensor
from ...sparse.tensor import take_rows
from ..shared.sparse_vae import StructureDecoding, coarsen_coords, match_coords


def _pool_to_latent(fine_coords: torch.Tensor, feats: torch.Tensor, latent: SparseTensor, factor: int) -> torch.Tensor:
    """Sum of ``feats`` of fine voxels per latent voxel (``latent`` is ``factor`` times coarser)."""
    parent = fine_coords.long().clone()
    parent[:, 1:] = torch.div(parent[:, 1:], factor, rounding_mode="floor")
    rows = match_coords(parent, latent.coords, latent.batch_size)
    inside = rows >= 0
    out = feats.new_zeros(latent.num_voxels, feats.shape[1])
    return out.index_add_(0, rows[inside], take_rows(feats, inside))


def grid_condition(voxels: SparseTensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition of the sparse stage from a decoded fine grid {G, A_N} (Sec. 3.2, Eq. 5).

    Returns the latent coordinates (the fine voxels coarsened by ``factor``) and per latent voxel
    ``[mean normal (3), occupied fraction of its factor^3 fine voxels (1)]``.
    """
    coords, inverse = coarsen_coords(voxels.coords, factor, voxels.batch_size)
    ones = voxels.feats.new_ones(voxels.num_voxels, 1)
    sums = voxels.feats.new_zeros(coords.shape[0], 4).index_add_(0, inverse, torch.cat([voxels.feats[:, :3], ones], 1))
    count = sums[:, 3:].clamp(min=1)
    return coords, torch.cat([sums[:, :3] / count, sums[:, 3:] / factor**3], 1)


GRID_CONDITION_CHANNELS = 4  # grid_condition: mean normal (3) + occupied fraction (1)


def height_columns(
    points: torch.Tensor, point_batch: torch.Tensor, coords: torch.Tensor, voxel_size: float, factor: int
) -> torch.Tensor:
    """Height-map part of the sparse stage's condition (our addition to Sec. 3.2, pipelines/sat2city/README.md).

    For every latent voxel (``coords`` [N, 4], ``factor`` fine voxels of ``voxel_size`` wide) and
    each of its ``factor x factor`` fine columns: the top of the condition point cloud P_h
    (``points`` [M, 3] in the grid frame, item ``point_batch`` [M]) in that column, relative to
    the voxel's bottom in units of its height, clamped to [-1, 2] (-1 where the column holds no
    point): ``[N, factor**2]``. It lets stage 2 put roofs where the map says, not only where the
    dense stage's grid says.
    """
    f, v = int(factor), float(voxel_size)
    n = coords.shape[0]
    if n == 0:
        return points.new_zeros(0, f * f)
    c = coords.long()
    points, point_batch = points.to(coords.device), point_batch.to(coords.device).long()
    nb, nx, ny = int(c[:, 0].max()) + 1, (int(c[:, 1].max()) + 1) * f, (int(c[:, 2].max()) + 1) * f
    cols = torch.floor(points[:, :2] / v).long()
    ok = (cols >= 0).all(1) & (cols[:, 0] < nx) & (cols[:, 1] < ny) & (point_batch < nb)
    key = (point_batch[ok] * nx + cols[ok, 0]) * ny + cols[ok, 1]
    top = points.new_full((nb * nx * ny,), float("-inf")).scatter_reduce_(0, key, points[ok, 2], "amax")
    a = torch.arange(f, device=c.device)
    fx, fy = c[:, 1:2] * f + a, c[:, 2:3] * f + a
    rows = (c[:, 0, None, None] * nx + fx[:, :, None]) * ny + fy[:, None, :]
    rel = (top[rows.reshape(n, -1)] - c[:, 3:4].to(top.dtype) * (f * v)) / (f * v)
    return torch.nan_to_num(rel, neginf=-1.0).clamp(-1.0, 2.0)


def sparse_condition_uses_height(condition_channels: int, factor: int) -> bool:
    """Whether a sparse stage of ``condition_channels`` takes `height_columns`
    (``4 + factor**2``) or only `grid_condition` (4, the paper's); ``ValueError`` otherwise."""
    if condition_channels not in (GRID_CONDITION_CHANNELS, GRID_CONDITION_CHANNELS + factor * factor):
        raise ValueError(
            f"sparse stage condition_channels must be {GRID_CONDITION_CHANNELS} (normal + occupancy) or "
            f"{GRID_CONDITION_CHANNELS + factor * factor} (+ {factor}x{factor} height columns), got {condition_channels}"
        )
    return condition_channels > GRID_CONDITION_CHANNELS


def sparse_condition(
    voxels: SparseTensor, factor: int, height_points: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition of the sparse stage: `grid_condition` of the decoded grid, followed by the
    `height_columns` of P_h ``(points, batch)`` when given (a height-aware stage 2)."""
    coords, cond = grid_condition(voxels, factor)
    if height_points is not None:
        cond = torch.cat([cond, height_columns(*height_points, coords, voxels.voxel_size, factor).to(cond.dtype)], 1)
    return coords, cond


def struct_condition(decoding: StructureDecoding, latent: SparseTensor) -> torch.Tensor:
    """Condition of the appearance stage from the pruning decisions ``struct`` (Sec. 3.2, Eq. 6).

    Per latent voxel: for every decoder level l the fraction of its 8^l descendants kept there,
    and the mean decoded normal of its kept finest voxels (``num_levels + 3`` channels).
    """
    feats = []
    for level, (cand, keep) in enumerate(zip(decoding.candidates, decoding.struct)):
        factor = 2**level
        kept = cand[keep]
        ones = latent.feats.new_ones(kept.shape[0], 1)
        feats.append(_pool_to_latent(kept, ones, latent, factor) / factor**3)
    out = decoding.sample
    count = _pool_to_latent(out.coords, out.feats.new_ones(out.num_voxels, 1), latent, 2 ** (len(decoding.struct) - 1))
    normals = _pool_to_latent(out.coords, out.feats[:, :3], latent, 2 ** (len(decoding.struct) - 1))
    feats.append(normals / count.clamp(min=1))
    return torch.cat(feats, 1)
