"""Surface point sampling of a 2.5D layout: top surfaces and vertical walls.

Top points: each cell gets ``points_per_m2 * area`` points (area includes the slope factor),
uniform inside the cell (kept a hair away from its borders), lifted onto the cell's tangent
plane ``z = height + gx * dx + gy * dy`` with normal ``(-gx, -gy, 1) / norm``.

Wall points: wherever two 4-neighbour cells differ in height by more than ``min_step``, the
vertical face between them (on the shared cell border, nudged into the taller cell so that it
belongs to that cell) gets ``points_per_m2 * area`` points, with a horizontal normal from the
smoothed height gradient (follows rotated and round buildings rather than the pixel staircase).
Wall classes are the taller cell's class, with roofs turned into facades.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..classes import FACADE, ROOF

EDGE_MARGIN = 0.002  # fraction of a cell kept clear of cell borders (stable cell assignment in float32)


def _counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts with the given expectation: floor plus a Bernoulli remainder."""
    base = np.floor(expected)
    return (base + (rng.random(expected.shape) < expected - base)).astype(np.int64)


def sample_top(height, gx, gy, mpp: float, points_per_m2: float, rng: np.random.Generator):
    """Points on the top surface. Returns local xyz ``[N, 3]`` (float64), normals ``[N, 3]``, cell ``[N]``."""
    h, w = height.shape
    gxf, gyf = gx.ravel().astype(np.float64), gy.ravel().astype(np.float64)
    slope = np.sqrt(1 + gxf * gxf + gyf * gyf)
    cell = np.repeat(np.arange(h * w), _counts(points_per_m2 * mpp * mpp * slope, rng))
    fx = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN, cell.size)
    fy = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN, cell.size)
    row, col = np.divmod(cell, w)
    x = (col + fx) * mpp
    y = (row + fy) * mpp
    cgx, cgy = gxf[cell], gyf[cell]
    z = height.ravel()[cell].astype(np.float64) + cgx * (fx - 0.5) * mpp + cgy * (fy - 0.5) * mpp
    normals = np.stack([-cgx, -cgy, np.ones_like(cgx)], axis=1) / slope[cell][:, None]
    return np.stack([x, y, z], axis=1), normals, cell


def sample_walls(height, mpp: float, points_per_m2: float, min_step: float, rng: np.random.Generator):
    """Points on vertical faces between cells. Returns local xyz, horizontal unit normals, taller cell."""
    h, w = height.shape
    hgt = height.astype(np.float64)
    smooth = ndimage.gaussian_filter(hgt, 1.5, mode="nearest")
    sgy, sgx = np.gradient(smooth)
    out_xyz, out_n, out_cell = [], [], []
    for axis in (1, 0):  # faces between columns (normal +-x), then between rows (normal +-y)
        lo_side = hgt[:, :-1] if axis == 1 else hgt[:-1, :]
        hi_side = hgt[:, 1:] if axis == 1 else hgt[1:, :]
        step = hi_side - lo_side
        fi, fj = np.nonzero(np.abs(step) > min_step)  # face between (fi, fj) and its +axis neighbour
        if fi.size == 0:
            continue
        st = step[fi, fj]
        first_taller = st < 0  # the cell at (fi, fj) is the taller one
        ti = np.where(first_taller | (axis == 1), fi, fi + 1)
        tj = np.where(first_taller | (axis == 0), fj, fj + 1)
        z_lo = np.minimum(lo_side[fi, fj], hi_side[fi, fj])
        z_hi = np.maximum(lo_side[fi, fj], hi_side[fi, fj])
        n_face = _counts(points_per_m2 * mpp * (z_hi - z_lo), rng)
        f = np.repeat(np.arange(fi.size), n_face)
        along = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN, f.size)
        z = z_lo[f] + rng.random(f.size) * (z_hi[f] - z_lo[f])
        sign = np.where(first_taller[f], 1.0, -1.0)  # outward normal points from taller to lower cell
        border = (fj[f] + 1.0) if axis == 1 else (fi[f] + 1.0)
        across = (border - sign * EDGE_MARGIN) * mpp
        along_m = ((fi[f] if axis == 1 else fj[f]) + along) * mpp
        x, y = (across, along_m) if axis == 1 else (along_m, across)
        stair = np.zeros((f.size, 2))
        stair[:, 0 if axis == 1 else 1] = sign
        ci, cj = ti[f], tj[f]
        # smoothed gradient on the face: mean of both cells' gradients, pointing downhill
        oi, oj = (ci, cj + sign.astype(np.int64)) if axis == 1 else (ci + sign.astype(np.int64), cj)
        oi, oj = np.clip(oi, 0, h - 1), np.clip(oj, 0, w - 1)
        g = -np.stack([sgx[ci, cj] + sgx[oi, oj], sgy[ci, cj] + sgy[oi, oj]], axis=1)
        g_norm = np.linalg.norm(g, axis=1, keepdims=True)
        g = g / np.maximum(g_norm, 1e-9)
        use = (g_norm[:, 0] > 1e-6) & ((g * stair).sum(axis=1) > 0.35)
        nxy = np.where(use[:, None], g, stair)
        out_xyz.append(np.stack([x, y, z], axis=1))
        out_n.append(np.concatenate([nxy, np.zeros((f.size, 1))], axis=1))
        out_cell.append(ci * w + cj)
    if not out_xyz:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(out_xyz), np.concatenate(out_n), np.concatenate(out_cell)


def wall_classes(top_classes: np.ndarray) -> np.ndarray:
    """Class of a wall point from the class of its taller cell (roof -> facade)."""
    return np.where(top_classes == ROOF, FACADE, top_classes).astype(np.uint8)
