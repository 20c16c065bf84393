"""Colours of a procedural city, as functions of world position and the covering cell.

`top_colors` gives the top-surface albedo (road markings, pavement, roofs, trees, water...),
`wall_colors` the colours of vertical faces (facade floors and windows, car bodies, tree
crowns, embankments). Both are evaluated at arbitrary points, so the aerial image, the top
points and the wall points share one texture. `shade` bakes a soft sun term.
"""

from __future__ import annotations

import numpy as np

from ..noise import hash_uniform
from .layout import (
    M_ASPHALT,
    M_CAR,
    M_DIRT,
    M_GRASS,
    M_PARKING,
    M_PATH,
    M_PLAZA,
    M_ROOF_FLAT,
    M_ROOF_PITCHED,
    M_ROOF_UNIT,
    M_SIDEWALK,
    M_STRUCTURE,
    M_TERRAIN,
    M_TREE,
    M_WATER,
    M_YARD,
    Layout,
)
from .style import DOWNTOWN, MIDRISE, RESIDENTIAL

_BASE = np.zeros((16, 3))
_BASE[M_TERRAIN] = (0.45, 0.42, 0.33)
_BASE[M_ASPHALT] = (0.27, 0.27, 0.28)
_BASE[M_SIDEWALK] = (0.62, 0.61, 0.58)
_BASE[M_PLAZA] = (0.66, 0.62, 0.55)
_BASE[M_GRASS] = (0.30, 0.47, 0.20)
_BASE[M_WATER] = (0.14, 0.27, 0.34)
_BASE[M_TREE] = (0.18, 0.36, 0.14)
_BASE[M_DIRT] = (0.52, 0.43, 0.32)
_BASE[M_STRUCTURE] = (0.62, 0.61, 0.58)
_BASE[M_PARKING] = (0.30, 0.30, 0.31)
_BASE[M_YARD] = (0.36, 0.50, 0.24)
_BASE[M_ROOF_UNIT] = (0.66, 0.67, 0.68)
_BASE[M_PATH] = (0.70, 0.64, 0.52)

FLAT_ROOFS = np.array(
    [[0.72, 0.72, 0.70], [0.55, 0.55, 0.56], [0.38, 0.38, 0.40], [0.70, 0.64, 0.54], [0.85, 0.85, 0.84], [0.45, 0.50, 0.42]]
)
PITCHED_ROOFS = np.array([[0.62, 0.30, 0.20], [0.42, 0.29, 0.21], [0.31, 0.33, 0.36], [0.55, 0.19, 0.16], [0.50, 0.42, 0.36]])
FACADES = np.array(
    [
        [0.80, 0.77, 0.70],  # stucco
        [0.62, 0.35, 0.27],  # brick
        [0.70, 0.70, 0.70],  # concrete
        [0.86, 0.83, 0.76],  # limestone
        [0.55, 0.52, 0.48],  # dark stone
        [0.78, 0.66, 0.50],  # ochre
    ]
)
GLASS = np.array([[0.20, 0.28, 0.36], [0.30, 0.38, 0.44], [0.18, 0.22, 0.26], [0.36, 0.45, 0.48]])
CARS = np.array(
    [
        [0.90, 0.90, 0.90],
        [0.08, 0.08, 0.09],
        [0.62, 0.63, 0.65],
        [0.65, 0.10, 0.10],
        [0.12, 0.22, 0.50],
        [0.35, 0.36, 0.38],
        [0.85, 0.72, 0.20],
    ]
)
TREES = np.array([[0.16, 0.34, 0.13], [0.24, 0.40, 0.16], [0.30, 0.42, 0.14], [0.13, 0.28, 0.15], [0.55, 0.38, 0.14]])
TREE_WEIGHTS = np.array([0.3, 0.3, 0.2, 0.17, 0.03])
WHITE = np.array([0.88, 0.88, 0.86])
YELLOW = np.array([0.85, 0.70, 0.20])


def _pick(palette: np.ndarray, r: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    if weights is None:
        return palette[np.minimum((r * len(palette)).astype(np.int64), len(palette) - 1)]
    cdf = np.cumsum(weights) / np.sum(weights)
    return palette[np.minimum(np.searchsorted(cdf, r, side="right"), len(palette) - 1)]


def _key_uniform(layout: Layout, cell: np.ndarray, salt: int) -> np.ndarray:
    """``hash_uniform(key, salt)`` of the object covering each cell, hashed once per distinct key
    (a raster holds a few thousand objects) and spread to the raster cells."""
    cache = layout.__dict__.setdefault("_key_uniform", {})
    if salt not in cache:
        if "inverse" not in cache:
            cache["keys"], cache["inverse"] = np.unique(layout.key.ravel(), return_inverse=True)
        cache[salt] = hash_uniform(cache["keys"], salt)[cache["inverse"]]
    return cache[salt][cell]


def _grain(x: np.ndarray, y: np.ndarray, salt: int, cell: float) -> np.ndarray:
    """Blocky per-``cell`` metre noise in [-1, 1] (asphalt grain, leaves, ripples)."""
    return 2 * hash_uniform(np.floor(x / cell).astype(np.int64), np.floor(y / cell).astype(np.int64), salt) - 1


def top_colors(layout: Layout, x: np.ndarray, y: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Top-surface albedo ``[M, 3]`` at local world points ``(x, y)`` lying in raster ``cell`` (flat index)."""
    mat = layout.material.ravel()[cell]
    did = layout.did.ravel()[cell]
    d = layout.districts
    col = _BASE[mat]
    g1 = _grain(x, y, 1, 0.5)
    dvar = hash_uniform(layout.seed, np.arange(len(d.kind)), 5)[did]  # district-wide tint
    gridded = np.flatnonzero(np.isin(mat, (M_ASPHALT, M_PARKING, M_SIDEWALK, M_PLAZA, M_PATH, M_ROOF_UNIT, M_STRUCTURE, M_DIRT)))
    u, v, lu, lv = (np.zeros(x.shape) for _ in range(4))
    u[gridded], v[gridded], _, _, lu[gridded], lv[gridded] = d.grid(x[gridded], y[gridded], did[gridded])
    half = d.road_w[did] / 2

    # roads: asphalt grain, centre dashes, edge lines, zebra crossings near intersections
    m = np.flatnonzero((mat == M_ASPHALT) | (mat == M_PARKING))
    if m.size:
        col[m] *= (0.9 + 0.2 * dvar[m])[:, None] * (1 + 0.06 * g1[m])[:, None]
        pu, pv = d.pitch_u[did[m]], d.pitch_v[did[m]]
        hm = half[m]
        band_u = (lv[m] < hm) | (lv[m] >= pv - hm)
        band_v = (lu[m] < hm) | (lu[m] >= pu - hm)
        e_u = np.where(lv[m] < hm, lv[m], lv[m] - pv)
        e_v = np.where(lu[m] < hm, lu[m], lu[m] - pu)
        street = mat[m] == M_ASPHALT
        line_col = np.where((dvar[m] < 0.3)[:, None], YELLOW, WHITE)
        for e, along, band, other_l, period in (
            (e_u, u[m], band_u & ~band_v, lu[m], pu),
            (e_v, v[m], band_v & ~band_u, lv[m], pv),
        ):
            centre = band & (np.abs(e) < 0.12) & (np.mod(along, 9.0) < 4.5) & street
            edge = band & (np.abs(np.abs(e) - (hm - 0.5)) < 0.1) & street
            near = np.minimum(np.abs(other_l - hm), np.abs(other_l - (period - hm)))
            zebra = band & (near < 3.5) & (np.mod(e, 1.0) < 0.5) & street & (np.abs(e) < hm - 0.8)
            col[m[centre]] = line_col[centre]
            col[m[edge | zebra]] = WHITE
        stall = (mat[m] == M_PARKING) & (np.mod(lu[m] - hm, 2.6) < 0.1)
        col[m[stall]] = WHITE * 0.9

    # pavements: tiles and curbs
    m = np.flatnonzero((mat == M_SIDEWALK) | (mat == M_PLAZA) | (mat == M_PATH))
    if m.size:
        joint = (np.mod(u[m], 1.5) < 0.08) | (np.mod(v[m], 1.5) < 0.08)
        checker = ((np.floor(u[m] / 2.0) + np.floor(v[m] / 2.0)) % 2 == 0) & (mat[m] == M_PLAZA)
        col[m] *= (1 - 0.12 * joint - 0.07 * checker + 0.03 * g1[m])[:, None]

    # vegetation: grass and tree crowns
    m = np.flatnonzero((mat == M_GRASS) | (mat == M_YARD))
    if m.size:
        col[m] *= (0.85 + 0.3 * dvar[m] + 0.08 * _grain(x[m], y[m], 2, 0.7))[:, None]
    m = np.flatnonzero(mat == M_TREE)
    if m.size:
        tcol = _pick(TREES, _key_uniform(layout, cell[m], 1), TREE_WEIGHTS)
        col[m] = tcol * (0.8 + 0.25 * _grain(x[m], y[m], 3, 0.4))[:, None]

    m = np.flatnonzero(mat == M_WATER)
    if m.size:
        col[m] *= (1 + 0.08 * _grain(x[m], y[m], 4, 1.3) + 0.04 * g1[m])[:, None]

    # roofs
    m = np.flatnonzero(mat == M_ROOF_FLAT)
    if m.size:
        col[m] = _pick(FLAT_ROOFS, _key_uniform(layout, cell[m], 31)) * (0.95 + 0.05 * g1[m])[:, None]
    m = np.flatnonzero(mat == M_ROOF_PITCHED)
    if m.size:
        rows = np.mod(_slope_coord(layout, x[m], y[m], cell[m]), 0.35) < 0.07
        col[m] = _pick(PITCHED_ROOFS, _key_uniform(layout, cell[m], 32)) * (1 - 0.15 * rows + 0.05 * g1[m])[:, None]
    m = np.flatnonzero(mat == M_ROOF_UNIT)
    if m.size:
        col[m] *= (1 - 0.15 * (np.mod(u[m], 0.8) < 0.1))[:, None]

    m = np.flatnonzero(mat == M_CAR)
    if m.size:
        car = _pick(CARS, _key_uniform(layout, cell[m], 41))
        cabin = layout.height.ravel()[cell[m]] - layout.ground.ravel()[cell[m]] > 1.3
        col[m] = np.where(cabin[:, None], car * 0.45 + 0.08, car)

    m = np.flatnonzero((mat == M_DIRT) | (mat == M_STRUCTURE))
    if m.size:
        grid = (mat[m] == M_STRUCTURE) & ((np.mod(u[m], 4.0) < 0.3) | (np.mod(v[m], 4.0) < 0.3))
        col[m] *= (1 + 0.1 * _grain(x[m], y[m], 5, 0.6) - 0.25 * grid)[:, None]
    return np.clip(col, 0, 1)


def _slope_coord(layout: Layout, x: np.ndarray, y: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Coordinate along the roof slope (metres), for tile rows on pitched roofs."""
    gx, gy = layout.gx.ravel()[cell], layout.gy.ravel()[cell]
    norm = np.maximum(np.hypot(gx, gy), 1e-6)
    return (x * gx + y * gy) / norm


def wall_colors(
    layout: Layout, x: np.ndarray, y: np.ndarray, z: np.ndarray, nx: np.ndarray, ny: np.ndarray, cell: np.ndarray
) -> np.ndarray:
    """Colours ``[M, 3]`` of wall points at local ``(x, y, z)`` with horizontal normal ``(nx, ny)``,
    on the wall of the taller raster ``cell``: facades get floors and windows by building."""
    mat = layout.material.ravel()[cell]
    base = layout.base.ravel()[cell].astype(np.float64)
    top = layout.height.ravel()[cell].astype(np.float64)
    kind = layout.districts.kind[layout.did.ravel()[cell]]
    col = _BASE[mat] * 0.9
    s = x * -ny + y * nx  # along-wall coordinate
    zr = z - base

    m = np.flatnonzero(np.isin(mat, (M_ROOF_FLAT, M_ROOF_PITCHED)))
    if m.size:
        cm = cell[m]
        fac = _pick(FACADES, _key_uniform(layout, cm, 51))
        glass = _pick(GLASS, _key_uniform(layout, cm, 52))
        fh = 2.9 + 1.1 * _key_uniform(layout, cm, 53)
        ws = 2.2 + 1.6 * _key_uniform(layout, cm, 54)  # window spacing
        wfrac = 0.35 + 0.35 * _key_uniform(layout, cm, 55)  # window width fraction
        z_m, s_m = zr[m], s[m]
        zf = z_m / fh
        floor = np.floor(zf)
        ff = zf - floor
        sf = np.mod(s_m / ws, 1.0)
        window = (ff > 0.3) & (ff < 0.82) & (np.abs(sf - 0.5) < wfrac / 2)
        building_h = top[m] - base[m]
        curtain = (building_h > 36) & (_key_uniform(layout, cm, 56) < 0.7)
        mullion = (np.mod(s_m, 1.5) < 0.12) | (ff < 0.08)
        busy = np.isin(kind[m], (DOWNTOWN, MIDRISE))
        shop = (floor == 0) & busy & (ff > 0.1) & (ff < 0.8) & (np.abs(sf - 0.5) < 0.45)
        under_roof = z_m < building_h - 0.4
        is_glass = under_roof & np.where(curtain, ~mullion, window | shop)
        lit = hash_uniform(layout.key.ravel()[cm], floor.astype(np.int64), np.floor(s_m / ws).astype(np.int64), 57)
        gcol = glass * (0.75 + 0.5 * lit)[:, None]
        band = (ff < 0.06) & ~curtain & busy
        fcol = fac * (1 - 0.12 * band)[:, None] * (0.96 + 0.04 * _grain(s_m, z_m, 6, 0.5))[:, None]
        col[m] = np.where(is_glass[:, None], gcol, fcol)
        res = kind[m] == RESIDENTIAL
        col[m[res & ~is_glass]] *= 0.97

    m = np.flatnonzero(mat == M_TREE)
    if m.size:
        tcol = _pick(TREES, _key_uniform(layout, cell[m], 1), TREE_WEIGHTS)
        trunk = (1.5 + 2.5 * _key_uniform(layout, cell[m], 6)) * 0.8
        col[m] = np.where((z[m] - layout.ground.ravel()[cell[m]] < trunk)[:, None], np.array([0.33, 0.25, 0.17]), tcol * 0.85)
        col[m] *= (0.85 + 0.2 * _grain(s[m], z[m], 7, 0.4))[:, None]
    m = np.flatnonzero(mat == M_CAR)
    if m.size:
        car = _pick(CARS, _key_uniform(layout, cell[m], 41))
        zc = z[m] - layout.ground.ravel()[cell[m]]
        col[m] = np.where(((zc > 0.95) & (zc < 1.4))[:, None], np.array([0.12, 0.14, 0.17]), car * 0.9)
        col[m[zc < 0.35]] = (0.06, 0.06, 0.06)
    m = np.flatnonzero(mat == M_ROOF_UNIT)
    if m.size:
        col[m] *= (1 - 0.2 * (np.mod(z[m], 0.5) < 0.08))[:, None]
    m = np.flatnonzero(mat == M_STRUCTURE)
    if m.size:
        frame = (np.mod(s[m], 5.0) < 0.4) | (np.mod(zr[m], 3.5) < 0.35)
        col[m] = np.where(frame[:, None], _BASE[M_STRUCTURE], np.array([0.35, 0.33, 0.30]))
    return np.clip(col, 0, 1)


def shade(colors: np.ndarray, normals: np.ndarray, sun: np.ndarray, strength: float = 0.25) -> np.ndarray:
    """Bake a soft sun term: ``c * (1 - strength + strength * max(n.sun, 0) / sun_z)`` clipped to 0..1."""
    lam = np.clip(normals @ sun, 0, None) / max(float(sun[2]), 1e-3)
    return np.clip(colors * (1 - strength + strength * np.minimum(lam, 1.3))[:, None], 0, 1)


def sun_direction(seed: int, azimuth_deg: float | None, elevation_deg: float | None) -> np.ndarray:
    """Unit vector towards the sun (z up), drawn from the seed where not given."""
    az = np.deg2rad(azimuth_deg) if azimuth_deg is not None else 2 * np.pi * float(hash_uniform(seed, 0x5A))
    el = np.deg2rad(elevation_deg) if elevation_deg is not None else np.deg2rad(35 + 35 * float(hash_uniform(seed, 0x5B)))
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
