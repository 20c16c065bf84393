"""Point-set distances: Chamfer distance and Earth Mover's distance.

Both are the geometric metrics of Sat2City (Sec. 4, "Geometric Metrics") and of the
point-cloud generation literature it follows (PointFlow, Yang et al. 2019).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from ..sparse.serialize import serialize
from ._common import as_points

__all__ = ["chamfer_distance", "earth_movers_distance", "nearest_neighbor_distances"]

# Largest distance block held in memory at once (entries): 2**24 float64 values = 128 MiB.
_BLOCK_ENTRIES = 1 << 24


def _compute_dtype(*xs) -> torch.dtype:
    """float32 for float32/half torch inputs (fast), float64 otherwise."""
    low = all(isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float16, torch.bfloat16) for x in xs)
    return torch.float32 if low else torch.float64


def nearest_neighbor_distances(a, b, *, chunk_size: int = 4096) -> torch.Tensor:
    """Euclidean distance from every point of ``a`` ``[N, 3]`` to its nearest point of ``b``
    ``[M, 3]``, as an ``[N]`` tensor.

    Exact brute force with ``torch.cdist`` over blocks of ``chunk_size`` rows of ``a`` and at
    most ``2**24 / chunk_size`` rows of ``b``, so memory stays bounded (100k x 100k points works;
    the work is O(N M)). Both sets are centred on a common point first, which keeps the
    matrix-product form of ``cdist`` accurate far from the origin (e.g. UTM coordinates).
    """
    dtype = _compute_dtype(a, b)
    a = as_points("a", a, dtype=dtype)
    b = as_points("b", b, dtype=dtype).to(a.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    centre = torch.cat([a, b]).mean(0)
    a, b = a - centre, b - centre
    b_chunk = max(1, _BLOCK_ENTRIES // chunk_size)
    out = torch.empty(len(a), dtype=dtype, device=a.device)
    for i in range(0, len(a), chunk_size):
        ai = a[i : i + chunk_size]
        best = torch.full((len(ai),), float("inf"), dtype=dtype, device=a.device)
        for j in range(0, len(b), b_chunk):
            best = torch.minimum(best, torch.cdist(ai, b[j : j + b_chunk]).amin(1))
        out[i : i + chunk_size] = best
    return out


def chamfer_distance(
    a,
    b,
    *,
    squared: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
    chunk_size: int = 4096,
) -> float:
    """Chamfer distance between point sets ``a`` ``[N, 3]`` and ``b`` ``[M, 3]``.

    Convention: ``mean_{p in a} min_{q in b} d(p, q) + mean_{q in b} min_{p in a} d(p, q)``
    with ``d`` the squared Euclidean distance (``squared=True``, the PointFlow / Sat2City
    convention) or the Euclidean distance (``squared=False``). ``reduction="sum"`` adds the
    two directional means (as written above); ``reduction="mean"`` averages them (half the sum).
    Nearest neighbours are exact (see :func:`nearest_neighbor_distances`).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    d_ab = nearest_neighbor_distances(a, b, chunk_size=chunk_size)
    d_ba = nearest_neighbor_distances(b, a, chunk_size=chunk_size)
    if squared:
        d_ab, d_ba = d_ab.square(), d_ba.square()
    total = d_ab.mean() + d_ba.mean()
    return float(total if reduction == "sum" else total / 2)


def _curve_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """Indices sorting ``points`` along a 3D Hilbert curve over their bounding cube."""
    lo = points.min(0)
    span = float((points.max(0) - lo).max()) or 1.0
    cells = np.floor((points - lo) / span * (2**bits - 1)).astype(np.int64)
    coords = torch.from_numpy(np.concatenate([np.zeros((len(points), 1), np.int64), cells], 1))
    return np.argsort(serialize(coords, order="hilbert").numpy(), kind="stable")


def _approximate_assignment(a: np.ndarray, b: np.ndarray, block_size: int, max_rounds: int, tol: float, seed: int) -> np.ndarray:
    """A bijection ``a[i] -> b[match[i]]`` by local exact refinement of a curve matching.

    Start: both sets sorted together along one Hilbert curve, the k-th point of ``a`` matched
    to the k-th point of ``b``. Each round then covers the set with about ``N / block_size``
    neighbourhoods of ``block_size`` points (around random centres), alternately nearest
    neighbours in ``a`` and in ``b``, and solves the assignment problem exactly between each
    neighbourhood and its current partners. A block re-solve never increases the cost, so the
    result is always an upper bound of the exact EMD. Stops after ``max_rounds`` or when two
    consecutive rounds (one per side) gain < ``tol``.
    """
    n = len(a)
    order = _curve_order(np.concatenate([a, b]))
    match = np.empty(n, dtype=np.int64)
    match[order[order < n]] = order[order >= n] - n
    trees = (cKDTree(a), cKDTree(b))
    rng = np.random.default_rng(seed)
    k = min(block_size, n)
    history = [np.linalg.norm(a - b[match], axis=1).mean()]
    for rnd in range(max_rounds):
        side = rnd % 2
        inverse = np.empty(n, dtype=np.int64)
        for centre in rng.permutation(n)[::k]:
            if side == 0:
                idx = np.atleast_1d(trees[0].query(a[centre], k=k)[1])
            else:
                inverse[match] = np.arange(n)
                idx = inverse[np.atleast_1d(trees[1].query(b[centre], k=k)[1])]
            partners = match[idx]
            cost = cdist(a[idx], b[partners])
            rows, cols = linear_sum_assignment(cost)
            match[idx[rows]] = partners[cols]
        history.append(np.linalg.norm(a - b[match], axis=1).mean())
        if len(history) >= 3 and history[-3] - history[-1] <= tol * history[-1]:
            break
    return match


def earth_movers_distance(
    a,
    b,
    *,
    method: Literal["auto", "exact", "approx"] = "auto",
    max_exact_points: int = 2048,
    block_size: int = 256,
    max_rounds: int = 12,
    tol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Earth Mover's distance between equal-size point sets: the mean Euclidean distance
    between matched points under the optimal bijection, ``min_pi mean_i |a_i - b_pi(i)|``.

    - ``"exact"``: ``scipy.optimize.linear_sum_assignment`` on the full ``N x N`` cost matrix
      (O(N^3) time, O(N^2) memory: for N up to a few thousand).
    - ``"approx"``: a Hilbert-curve matching refined by exact assignments inside overlapping
      neighbourhoods of ``block_size`` points, alternating between the two sets (see
      :func:`_approximate_assignment`). It returns the cost of a true bijection, hence an upper
      bound of the exact value. Measured against ``"exact"`` and POT's ``ot.emd2``
      (tests/test_metrics.py, one CPU core): +0.2% on 2,000 points (uniform cube vs flattened
      Gaussian, 1.8 s); on 10,000 points of a uniform cube vs its squared warp, +5.7% above the
      value reached with 512-point blocks and 12 rounds (6 s). Use ``"exact"`` when the last
      percent matters and N x N doubles fit in memory.
    - ``"auto"``: exact up to ``max_exact_points`` points, approximate above.
    """
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approx', got {method!r}")
    a_np = as_points("a", a).cpu().numpy()
    b_np = as_points("b", b).cpu().numpy()
    if len(a_np) != len(b_np):
        raise ValueError(f"EMD needs equal-size point sets, got {len(a_np)} and {len(b_np)} points")
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    centre = np.concatenate([a_np, b_np]).mean(0)
    a_np, b_np = a_np - centre, b_np - centre
    if method == "exact" or (method == "auto" and len(a_np) <= max_exact_points):
        cost = cdist(a_np, b_np)
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    match = _approximate_assignment(a_np, b_np, block_size, max_rounds, tol, seed)
    return float(np.linalg.norm(a_np - b_np[match], axis=1).mean())
