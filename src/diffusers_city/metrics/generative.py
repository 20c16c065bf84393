"""Coverage (COV) and Minimum Matching Distance (MMD) between sets of generated and reference
shapes, as used by Sat2City (Sec. 4, "Geometric Metrics", after PointFlow, Yang et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import trimesh

from ._common import as_points
from .distances import chamfer_distance, earth_movers_distance

__all__ = ["coverage_mmd", "sample_point_set"]

_DISTANCES = {
    "cd": lambda a, b: chamfer_distance(a, b, squared=True, reduction="sum"),
    "emd": earth_movers_distance,
}


def sample_point_set(shape, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """``n_points`` points of a shape: sampled uniformly on a ``trimesh.Trimesh`` surface, or
    drawn from a point array (without replacement when it has enough points)."""
    if isinstance(shape, trimesh.Trimesh):
        if len(shape.faces) == 0:
            raise ValueError("mesh has no faces to sample points from")
        points, _ = trimesh.sample.sample_surface(shape, n_points, seed=int(rng.integers(2**31)))
        return np.asarray(points, dtype=np.float64)
    points = as_points("shape", shape).cpu().numpy()
    idx = rng.choice(len(points), n_points, replace=len(points) < n_points)
    return points[idx]


def _normalize(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding-box centre and scale the largest extent to 1."""
    lo, hi = points.min(0), points.max(0)
    extent = float((hi - lo).max()) or 1.0
    return (points - (lo + hi) / 2) / extent


def coverage_mmd(
    generated: Sequence,
    reference: Sequence,
    *,
    n_points: int = 10_000,
    metrics: Sequence[str] = ("cd", "emd"),
    normalize: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """COV and MMD of a set of generated shapes against a set of reference shapes.

    Every shape (a point array ``[N, 3]`` or a ``trimesh.Trimesh``) is sampled to ``n_points``
    points (Sat2City: 10,000 from the generated mesh surface and from the reference cloud) and,
    with ``normalize``, centred and scaled to unit largest extent. With ``D[g, r]`` the distance
    between generated shape ``g`` and reference shape ``r`` (``"cd"``: Chamfer, squared,
    the two directional means summed; ``"emd"``: mean matched distance of
    :func:`earth_movers_distance`):

    - ``mmd_<m> = mean_r min_g D[g, r]`` (fidelity: each reference finds its closest sample),
    - ``cov_<m> = |{argmin_r D[g, r] : g}| / |reference|`` (diversity: the fraction of
      references that are the nearest reference of at least one generated shape).
    """
    if len(generated) == 0 or len(reference) == 0:
        raise ValueError(f"need at least one generated and one reference shape, got {len(generated)} and {len(reference)}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    unknown = [m for m in metrics if m not in _DISTANCES]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {sorted(_DISTANCES)}, got {list(metrics)}")
    rng = np.random.default_rng(seed)
    gen = [sample_point_set(s, n_points, rng) for s in generated]
    ref = [sample_point_set(s, n_points, rng) for s in reference]
    if normalize:
        gen, ref = [_normalize(p) for p in gen], [_normalize(p) for p in ref]
    out: dict[str, float] = {}
    for name in metrics:
        dist = np.array([[_DISTANCES[name](g, r) for r in ref] for g in gen])
        out[f"mmd_{name}"] = float(dist.min(0).mean())
        out[f"cov_{name}"] = len(set(dist.argmin(1).tolist())) / len(ref)
    return out
