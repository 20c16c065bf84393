"""Functional operations on ``SparseTensor``: trilinear sampling, re-gridding, voxelization, dense I/O.

Positions are world coordinates; a voxel of index ``c`` has its centre at ``origin + c * voxel_size``
(docs/design.md). Sat2City uses ``trilinear_interpolate`` for inverse sampling of point colours
and ``regrid`` for its Re-Hash appearance levels (v_n = 2^n v_0, o_n = v_n / 2; Sec. 3.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .kernel_map import coord_index, unique_coords
from .tensor import SparseTensor, take_rows

MISSING_MODES = ("renormalize", "zero")

to_dense = SparseTensor.to_dense
from_dense = SparseTensor.from_dense


def _check_points(points: torch.Tensor, batch_idx: torch.Tensor | None, batch_size: int | None) -> torch.Tensor:
    """Validate ``points`` [M, 3] and return the batch index as int64 [M] (zeros when omitted)."""
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be a [M, 3] tensor, got {getattr(points, 'shape', type(points))}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if batch_idx is None:
        return torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    if batch_idx.shape != (points.shape[0],) or batch_idx.dtype.is_floating_point or batch_idx.dtype == torch.bool:
        raise ValueError(f"batch_idx must be an integer tensor of shape [{points.shape[0]}]")
    if batch_idx.device != points.device:
        raise ValueError(f"batch_idx is on {batch_idx.device} but points are on {points.device}")
    if batch_idx.numel() and (int(batch_idx.min()) < 0 or (batch_size is not None and int(batch_idx.max()) >= batch_size)):
        raise ValueError(f"batch_idx values must lie in [0, {batch_size})")
    return batch_idx.long()


def trilinear_interpolate(
    x: SparseTensor,
    points: torch.Tensor,
    batch_idx: torch.Tensor | None = None,
    *,
    missing: str = "renormalize",
) -> torch.Tensor:
    """Features [M, C] of ``x`` trilinearly interpolated at world ``points`` [M, 3] of items ``batch_idx``.

    The 8 surrounding voxel centres are the corners. Missing (inactive) corners: with
    ``missing="renormalize"`` (default) they are dropped and the weights of the present corners
    are rescaled to sum to 1 (so features are not pulled towards zero at surface borders); a point
    with no active corner gets zeros. With ``missing="zero"`` inactive corners count as zero
    features. Exact for fields linear in space when all 8 corners are active. Differentiable with
    respect to the features and the points.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    b = _check_points(points, batch_idx, x.batch_size)
    if points.device != x.device:
        raise ValueError(f"points are on {points.device} but the tensor is on {x.device}")
    if x.num_voxels == 0:
        return x.feats.new_zeros(points.shape[0], x.num_channels)
    dtype = torch.promote_types(points.dtype, x.dtype if x.dtype == torch.float64 else torch.float32)
    origin = torch.tensor(x.origin, dtype=dtype, device=x.device)
    u = (points.to(dtype) - origin) / x.voxel_size
    base = torch.floor(u)
    frac = u - base
    d = torch.stack(torch.meshgrid(*[torch.arange(2, device=x.device)] * 3, indexing="ij"), -1).reshape(8, 1, 3)
    corners = torch.cat([b[None, :, None].expand(8, -1, 1), base.long()[None] + d], -1)  # [8, M, 4]
    rows = coord_index(x).lookup(corners)
    weights = torch.where(d.bool(), frac[None], 1 - frac[None]).prod(-1) * (rows >= 0)  # [8, M]
    if missing == "renormalize":
        total = weights.sum(0, keepdim=True)
        weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(dtype).tiny), weights)
    gathered = take_rows(x.feats, rows.clamp_min(0).reshape(-1)).reshape(8, -1, x.num_channels)
    return (weights[..., None].to(x.dtype) * gathered).sum(0)


def _world_to_index(points: torch.Tensor, voxel_size: float, origin: Sequence[float]) -> torch.Tensor:
    """Index of the voxel whose cell ``centre +- voxel_size / 2`` contains each point (float64 maths)."""
    o = torch.tensor(list(origin), dtype=torch.float64, device=points.device)
    idx = torch.floor((points.double() - o) / voxel_size + 0.5)
    if idx.numel() and (idx.min() < -(2**31) or idx.max() > 2**31 - 1):
        raise ValueError("voxel indices of these points do not fit in int32; use a larger voxel_size")
    return idx.long()


def regrid(x: SparseTensor, voxel_size: float, origin: Sequence[float]) -> SparseTensor:
    """Re-grid ``x`` onto a coarser grid (``voxel_size`` >= x's) with centre of voxel 0 at ``origin``.

    New active voxels are those whose cells contain an old voxel centre; their features are
    ``trilinear_interpolate`` (missing corners renormalized) of ``x`` at the new centres. For
    Sat2City's Re-Hash levels call ``regrid(x_prev, 2 * v, (v, v, v))`` with ``v = x_prev.voxel_size``.
    Stride becomes ``round(x.stride * voxel_size / x.voxel_size)``.
    """
    if not float(voxel_size) >= x.voxel_size:
        raise ValueError(f"regrid targets a coarser or equal voxel_size (>= {x.voxel_size}), got {voxel_size}")
    origin = tuple(float(o) for o in origin)
    if len(origin) != 3:
        raise ValueError("origin must have 3 values")
    idx = _world_to_index(x.world_positions(), voxel_size, origin)
    coords, _ = unique_coords(torch.cat([x.coords[:, :1].long(), idx], 1), x.batch_size)
    out = SparseTensor(
        x.feats.new_zeros(coords.shape[0], x.num_channels),
        coords,
        voxel_size=voxel_size,
        origin=origin,
        stride=max(1, round(x.stride * voxel_size / x.voxel_size)),
        batch_size=x.batch_size,
        validate=False,
    )
    centres = out.world_positions().to(torch.promote_types(x.dtype, torch.float32))
    return out.replace(trilinear_interpolate(x, centres, coords[:, 0]))


def voxelize(
    points: torch.Tensor,
    feats: torch.Tensor,
    batch_idx: torch.Tensor | None = None,
    voxel_size: float = 1.0,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    batch_size: int | None = None,
) -> SparseTensor:
    """Voxelize world ``points`` [M, 3] with ``feats`` [M, C]: one voxel per occupied cell, holding
    the mean of its points' features. A point belongs to the voxel whose centre is nearest
    (cell = centre +- voxel_size / 2). Zero points give an empty tensor."""
    b = _check_points(points, batch_idx, batch_size)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != points.shape[0]:
        raise ValueError(f"feats must have shape [{points.shape[0]}, C], got {getattr(feats, 'shape', type(feats))}")
    if not feats.is_floating_point():
        raise ValueError(f"feats must be floating point, got {feats.dtype}")
    if not float(voxel_size) > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if batch_size is None:
        batch_size = int(b.max()) + 1 if b.numel() else 0
    idx = _world_to_index(points, voxel_size, origin)
    coords, inverse = unique_coords(torch.cat([b[:, None], idx], 1), batch_size)
    sums = feats.new_zeros(coords.shape[0], feats.shape[1]).index_add(0, inverse, feats)
    counts = feats.new_zeros(coords.shape[0]).index_add_(0, inverse, feats.new_ones(feats.shape[0]))
    return SparseTensor(
        sums / counts[:, None],
        coords,
        voxel_size=voxel_size,
        origin=origin,
        batch_size=batch_size,
        validate=False,
    )
