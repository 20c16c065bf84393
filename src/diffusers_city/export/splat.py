"""The standard 3D Gaussian splatting PLY (the layout of Kerbl et al.'s reference code).

Per vertex, float32: ``x y z``, ``nx ny nz`` (zeros), ``f_dc_0..2`` (degree-0 SH:
``(rgb - 0.5) / C0``), ``f_rest_0..44`` (zeros, degree-3 layout; none with ``sh_degree=0``),
``opacity`` (logit), ``scale_0..2`` (log of the standard deviations in metres), ``rot_0..3``
(unit quaternion w, x, y, z).

Viewer compatibility: the INRIA viewer / training code asserts 45 ``f_rest`` values (its default
SH degree 3), so ``sh_degree=3`` (the default) is what every common viewer accepts; SuperSplat
also reads degree 0 files, and antimatter15's splat converter reads only ``f_dc``. Use
``sh_degree=0`` for files 3.6x smaller when the viewer allows it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from ._checks import check_attribute, check_points
from .atomic import atomic_write, check_destination, resolve_offset
from .ply import georef_comments, parse_georef_comments

__all__ = ["SH_C0", "GaussianSplat", "read_gaussian_ply", "write_gaussian_ply"]

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical-harmonic constant: rgb = 0.5 + C0 * f_dc."""

_EPS = 1e-6


@dataclass
class GaussianSplat:
    """Gaussians in world metres: ``means [N, 3]``, ``colors [N, 3]`` 0..1 (from the DC term),
    ``scales [N, 3]`` linear, ``opacities [N]`` 0..1, ``quats [N, 4]`` (w, x, y, z), plus the
    file's ``offset`` (already added to ``means``) and ``crs``."""

    means: np.ndarray
    colors: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    quats: np.ndarray
    sh_degree: int
    offset: np.ndarray
    crs: str | None = None


def _broadcast(values, n: int, width: int | None, name: str, default: float) -> np.ndarray:
    """A scalar, ``[n]`` or ``[n, width]`` input as a full array."""
    if values is None:
        values = default
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return np.full((n,) if width is None else (n, width), float(arr))
    if width is not None and arr.shape == (n,):
        arr = np.repeat(arr[:, None], width, axis=1)
    return check_attribute(arr, n, name, width)


def write_gaussian_ply(
    path: str | os.PathLike,
    means,
    colors,
    scales,
    opacities=0.9,
    quats=None,
    *,
    sh_degree: int = 3,
    crs: str | None = None,
    offset: Sequence[float] | None = None,
) -> Path:
    """Write Gaussians as a standard 3DGS PLY.

    ``colors`` 0..1 ``[N, 3]``; ``scales`` linear standard deviations (a scalar, ``[N]``
    isotropic or ``[N, 3]``), > 0; ``opacities`` 0..1 (scalar or ``[N]``); ``quats`` ``[N, 4]``
    (w, x, y, z; normalised here; identity when omitted); ``offset`` as in
    :func:`~diffusers_city.export.atomic.resolve_offset`.
    """
    if sh_degree not in (0, 3):
        raise ValueError(f"sh_degree must be 0 or 3, got {sh_degree}")
    path = check_destination(path)
    pts = check_points(means)
    n = len(pts)
    cols = check_attribute(colors, n, "colors", 3, unit=True)
    if cols is None:
        raise ValueError("colors are required for a Gaussian splat PLY")
    sc = _broadcast(scales, n, 3, "scales", 1.0)
    if (sc <= 0).any():
        raise ValueError("scales must be > 0")
    op = _broadcast(opacities, n, None, "opacities", 0.9)
    if op.min() < 0 or op.max() > 1:
        raise ValueError("opacities must lie in 0..1")
    q = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)) if quats is None else check_attribute(quats, n, "quats", 4)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if (norm < _EPS).any():
        raise ValueError("quats must be non-zero")
    q = q / norm
    off = resolve_offset(pts, offset)

    n_rest = 45 if sh_degree == 3 else 0
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    values = np.zeros((n, len(names)), dtype=np.float32)
    values[:, 0:3] = pts - off
    values[:, 6:9] = (cols - 0.5) / SH_C0
    op = np.clip(op, _EPS, 1 - _EPS)
    tail = 9 + n_rest
    values[:, tail] = np.log(op / (1 - op))
    values[:, tail + 1 : tail + 4] = np.log(sc)
    values[:, tail + 4 : tail + 8] = q
    vertex = np.rec.fromarrays(values.T, dtype=[(name, "<f4") for name in names])
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<", comments=georef_comments(off, crs))
    with atomic_write(path) as tmp:
        ply.write(str(tmp))
    return path


def read_gaussian_ply(path: str | os.PathLike) -> GaussianSplat:
    """Read a 3DGS PLY written by :func:`write_gaussian_ply` or by 3DGS training code."""
    from ..data.readers import load_ply

    ply = load_ply(path)
    vertex = ply["vertex"].data
    names = set(vertex.dtype.names)
    required = [
        "x",
        "y",
        "z",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    missing = [k for k in required if k not in names]
    if missing:
        raise ValueError(f"{path} is not a Gaussian splat PLY: missing properties {missing}")
    n_rest = sum(1 for k in names if k.startswith("f_rest_"))
    if n_rest not in (0, 9, 24, 45):
        raise ValueError(f"{path}: {n_rest} f_rest properties match no SH degree (0, 9, 24 or 45 expected)")

    def cols(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(vertex[k], dtype=np.float64) for k in keys], axis=1)

    offset, crs = parse_georef_comments(list(ply.comments), Path(path))
    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    return GaussianSplat(
        means=cols("x", "y", "z") + offset,
        colors=np.clip(0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2"), 0, 1),
        scales=np.exp(cols("scale_0", "scale_1", "scale_2")),
        opacities=1 / (1 + np.exp(-np.asarray(vertex["opacity"], dtype=np.float64))),
        quats=quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), _EPS),
        sh_degree={0: 0, 9: 1, 24: 2, 45: 3}[n_rest],
        offset=offset,
        crs=crs,
    )
