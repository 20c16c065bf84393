"""City layout on the raster: districts with rotated street grids, blocks, lots, buildings,
parks, water, parking, construction sites, vehicles, trees and terrain.

Every quantity is a vectorised function of pixel position and hashed integer keys (district,
block, lot, tree, car), so the layout is deterministic per seed with no per-pixel Python loops.
Per-lot parameters are computed once per unique lot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..classes import CONSTRUCTION, GROUND, NUM_CLASSES, ROAD, ROOF, VEGETATION, VEHICLE, WATER
from ..noise import fbm_raster, hash_u64, hash_uniform
from .style import (
    B_BUILDINGS,
    B_CONSTRUCTION,
    B_PARK,
    B_PARKING,
    B_PLAZA,
    B_WATER,
    INDUSTRIAL,
    PARKLAND,
    RESIDENTIAL,
    S_COURTYARD,
    S_L,
    S_RECT,
    S_ROUND,
    S_TOWER,
    CityStyle,
)

# Surface materials: the texture of each cell; `MATERIAL_CLASS` maps them to semantic classes.
(
    M_TERRAIN,
    M_ASPHALT,
    M_SIDEWALK,
    M_PLAZA,
    M_GRASS,
    M_WATER,
    M_ROOF_FLAT,
    M_ROOF_PITCHED,
    M_TREE,
    M_CAR,
    M_DIRT,
    M_STRUCTURE,
    M_PARKING,
    M_YARD,
    M_ROOF_UNIT,
    M_PATH,
) = range(16)
MATERIAL_CLASS = np.array(
    [
        GROUND,
        ROAD,
        GROUND,
        GROUND,
        VEGETATION,
        WATER,
        ROOF,
        ROOF,
        VEGETATION,
        VEHICLE,
        CONSTRUCTION,
        CONSTRUCTION,
        ROAD,
        VEGETATION,
        ROOF,
        GROUND,
    ],
    dtype=np.uint8,
)
assert MATERIAL_CLASS.max() < NUM_CLASSES

WATER_DEPTH_M = 1.2
CAR_LENGTH, CAR_WIDTH, CAR_HEIGHT, CAR_CABIN_HEIGHT = 4.4, 1.8, 1.05, 1.5


@dataclass
class Districts:
    """Per-district tables (index = district id)."""

    kind: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    off_u: np.ndarray
    off_v: np.ndarray
    pitch_u: np.ndarray
    pitch_v: np.ndarray
    road_w: np.ndarray
    sidewalk: np.ndarray

    def rotate(self, x: np.ndarray, y: np.ndarray, did: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) to the district's street-grid frame (u, v)."""
        c, s = self.cos[did], self.sin[did]
        return c * x + s * y, -s * x + c * y

    def grid(self, x: np.ndarray, y: np.ndarray, did: np.ndarray):
        """Grid coordinates: u, v, block indices bu, bv and in-period offsets lu, lv (0..pitch)."""
        u, v = self.rotate(x, y, did)
        pu, pv = self.pitch_u[did], self.pitch_v[did]
        qu = (u - self.off_u[did]) / pu
        qv = (v - self.off_v[did]) / pv
        bu, bv = np.floor(qu), np.floor(qv)
        return u, v, bu.astype(np.int64), bv.astype(np.int64), (qu - bu) * pu, (qv - bv) * pv


@dataclass
class Layout:
    """Rasters of a procedural city (all ``[H, W]``) plus the district tables."""

    height: np.ndarray
    ground: np.ndarray
    base: np.ndarray  # building base (floors count from here); ground elsewhere
    gx: np.ndarray  # top-surface slope dz/dx inside each cell
    gy: np.ndarray
    material: np.ndarray
    key: np.ndarray  # uint64 key of the object covering the cell (lot, block, tree, car)
    did: np.ndarray
    districts: Districts
    seed: int
    meters_per_pixel: float

    @property
    def semantic(self) -> np.ndarray:
        return MATERIAL_CLASS[self.material]


def _choice(p_rows: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: ``p_rows [M, K]`` probabilities, ``r [M]`` uniforms -> index."""
    cdf = np.cumsum(p_rows, axis=1)
    cdf /= cdf[:, -1:]
    return np.minimum((r[:, None] >= cdf).sum(axis=1), p_rows.shape[1] - 1)


def _normal(*keys) -> np.ndarray:
    """Standard normal from hashed keys (Box-Muller)."""
    u1 = np.maximum(hash_uniform(*keys, 101), 1e-12)
    u2 = hash_uniform(*keys, 102)
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _districts(seed: int, shape: tuple[int, int], mpp: float, style: CityStyle, rng: np.random.Generator):
    h, w = shape
    sx, sy = w * mpp, h * mpp
    ds = style.district_size_m
    margin = ds / 2
    area = (sx + 2 * margin) * (sy + 2 * margin)
    k = max(2, int(round(area / ds**2 * rng.uniform(0.8, 1.2))))
    # dart throwing: seeds at least half a district apart, so arterials stay roads, not plazas
    pts: list[tuple[float, float]] = []
    for _ in range(40 * k):
        if len(pts) == k:
            break
        cand = (rng.uniform(-margin, sx + margin), rng.uniform(-margin, sy + margin))
        if all((cand[0] - qx) ** 2 + (cand[1] - qy) ** 2 > (0.55 * ds) ** 2 for qx, qy in pts):
            pts.append(cand)
    k = len(pts)
    px, py = np.array(pts).T
    cx, cy = rng.uniform(0.2, 0.8) * sx, rng.uniform(0.2, 0.8) * sy
    f = np.exp(-(((px - cx) ** 2 + (py - cy) ** 2) / style.downtown_radius_m**2))
    weights = np.asarray(style.kind_weights, float)[None, :] * np.stack(
        [3 * f, 1 + f, 1.5 * (1 - f) + 0.15, (1 - f) + 0.1, 0.6 * (1 - f) + 0.15], axis=1
    )
    kind = _choice(weights, rng.random(k))
    kt = style.kinds
    theta = np.where(rng.random(k) < 0.3, 0.0, rng.uniform(-1, 1, k) * np.deg2rad(style.max_rotation_deg))
    lo, hi = kt.block_pitch[kind, 0], kt.block_pitch[kind, 1]
    pitch_u, pitch_v = rng.uniform(lo, hi), rng.uniform(lo, hi)
    road_w = rng.uniform(kt.road_width[kind, 0], kt.road_width[kind, 1])
    d = Districts(
        kind=kind,
        cos=np.cos(theta),
        sin=np.sin(theta),
        off_u=rng.uniform(0, 1, k) * pitch_u,
        off_v=rng.uniform(0, 1, k) * pitch_v,
        pitch_u=pitch_u,
        pitch_v=pitch_v,
        road_w=road_w,
        sidewalk=kt.sidewalk[kind],
    )
    return d, px, py


def build_layout(seed: int, shape: tuple[int, int], mpp: float, style: CityStyle) -> Layout:
    """Lay out the whole city on an ``[H, W]`` raster with pixel size ``mpp`` (local frame)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x1A7])
    h, w = shape
    n = h * w
    kt = style.kinds
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    x = (jj.ravel() + 0.5) * mpp
    y = (ii.ravel() + 0.5) * mpp

    # ---- districts (Voronoi of jittered seeds) and arterial roads along their borders
    d, px, py = _districts(seed, shape, mpp, style, rng)
    warp_x = 22.0 * fbm_raster(seed * 7 + 1, shape, mpp, 160.0, 2).ravel()
    warp_y = 22.0 * fbm_raster(seed * 7 + 2, shape, mpp, 160.0, 2).ravel()
    wx, wy = x + warp_x, y + warp_y
    d1 = np.full(n, np.inf)
    d2 = np.full(n, np.inf)
    did = np.zeros(n, np.int64)
    did2 = np.zeros(n, np.int64)
    for k in range(len(px)):
        dk = (wx - px[k]) ** 2 + (wy - py[k]) ** 2
        closer = dk < d1
        second = dk < d2
        second &= ~closer
        # disjoint masked updates, in place (new second = old first where closer)
        np.copyto(d2, dk, where=second)
        np.copyto(d2, d1, where=closer)
        np.copyto(did2, k, where=second)
        np.copyto(did2, did, where=closer)
        np.copyto(did, k, where=closer)
        np.copyto(d1, dk, where=closer)
    # distance to the Voronoi border between the nearest two seeds
    border = (d2 - d1) / (2 * np.hypot(px[did] - px[did2], py[did] - py[did2]))
    arterial = border < style.arterial_width_m / 2
    kind = d.kind[did]

    # ---- street grid, blocks, optional service-lane split
    u, v, bu, bv, lu, lv = d.grid(x, y, did)
    half = d.road_w[did] / 2
    pu, pv = d.pitch_u[did], d.pitch_v[did]
    band_u = (lv < half) | (lv >= pv - half)  # road running along u
    band_v = (lu < half) | (lu >= pu - half)
    road = band_u | band_v | arterial
    a, b = lu - half, lv - half
    bsize_u, bsize_v = pu - 2 * half, pv - 2 * half
    bkey = hash_u64(seed, did, bu, bv)
    lane_half = 2.5
    split_u = (hash_uniform(bkey, 11) < 0.3) & (bsize_u > 70)
    split_v = (hash_uniform(bkey, 12) < 0.3) & (bsize_v > 70)
    lane = (split_u & (np.abs(a - bsize_u / 2) < lane_half)) | (split_v & (np.abs(b - bsize_v / 2) < lane_half))
    sub_u = split_u & (a >= bsize_u / 2)
    sub_v = split_v & (b >= bsize_v / 2)
    a = np.where(sub_u, a - bsize_u / 2 - lane_half, a)
    b = np.where(sub_v, b - bsize_v / 2 - lane_half, b)
    bsize_u = np.where(split_u, bsize_u / 2 - lane_half, bsize_u)
    bsize_v = np.where(split_v, bsize_v / 2 - lane_half, bsize_v)
    bkey = hash_u64(bkey, sub_u.astype(np.int64), sub_v.astype(np.int64))
    block_type = _choice(kt.block_types[kind], hash_uniform(bkey, 1))
    road |= lane

    sw = d.sidewalk[did]
    ca, cb = a - sw, b - sw
    inner_u, inner_v = bsize_u - 2 * sw, bsize_v - 2 * sw
    inner = ~road & (ca >= 0) & (ca < inner_u) & (cb >= 0) & (cb < inner_v)

    material = np.full(n, M_SIDEWALK, np.uint8)
    material[road] = M_ASPHALT
    key = bkey.copy()
    obj_h = np.zeros(n)  # object height above ground
    gx = np.zeros(n)
    gy = np.zeros(n)

    # ---- block fills
    fill = {B_PARK: M_GRASS, B_PLAZA: M_PLAZA, B_PARKING: M_PARKING, B_WATER: M_GRASS, B_CONSTRUCTION: M_DIRT}
    for bt, mat in fill.items():
        material[inner & (block_type == bt)] = mat
    park = inner & ((block_type == B_PARK) | (block_type == B_WATER))
    path = park & (np.abs(ca / np.maximum(inner_u, 1) - cb / np.maximum(inner_v, 1)) * np.minimum(inner_u, inner_v) < 1.5)
    material[path & (block_type == B_PARK)] = M_PATH
    pond_r = ((ca / inner_u - 0.5) / 0.38) ** 2 + ((cb / inner_v - 0.5) / 0.34) ** 2
    pond_noise = 0.25 * fbm_raster(seed * 7 + 3, shape, mpp, 40.0, 2).ravel()
    material[inner & (block_type == B_WATER) & (pond_r < 1 + pond_noise)] = M_WATER

    # ---- lots and buildings
    bld_block = inner & ((block_type == B_BUILDINGS) | (block_type == B_CONSTRUCTION))
    lot_target = kt.lot_size[kind] * (0.7 + 0.6 * hash_uniform(bkey, 2))
    n_lu = np.clip(np.round(inner_u / lot_target), 1, 4)
    n_lv = np.clip(np.round(inner_v / lot_target), 1, 3)
    len_u, len_v = inner_u / n_lu, inner_v / n_lv
    li = np.clip(np.floor(ca / len_u), 0, n_lu - 1)
    lj = np.clip(np.floor(cb / len_v), 0, n_lv - 1)
    s_loc, t_loc = ca - li * len_u, cb - lj * len_v
    lot_key = hash_u64(bkey, li.astype(np.int64), lj.astype(np.int64))

    m = np.flatnonzero(bld_block)
    bld_idx, bld_xc, bld_yc = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    if m.size:
        bld_idx, bld_xc, bld_yc = _buildings(
            m, lot_key, kind, block_type, len_u, len_v, s_loc, t_loc, u, v, d, did, style,
            material, key, obj_h, gx, gy,
        )  # fmt: skip

    # ---- terrain, river
    terrain = style.terrain_amplitude_m * fbm_raster(seed * 7 + 4, shape, mpp, style.terrain_wavelength_m, 3).ravel()
    if rng.random() < style.river_probability:
        _river(rng, x, y, w * mpp, h * mpp, road, material, key, obj_h, gx, gy, seed)

    # ---- vehicles on roads and parking lots
    _vehicles(seed, style, kind, u, v, lu, lv, half, pu, pv, band_u, band_v, arterial, lane, did, bu, bv,
              ca, cb, material, key, obj_h)  # fmt: skip

    ground = terrain.copy()
    water = material == M_WATER
    ground[water] -= WATER_DEPTH_M
    base = ground.copy()
    is_bld = np.zeros(n, bool)
    is_bld[bld_idx] = material[bld_idx] != M_WATER  # the river may have taken some
    cr = np.clip((bld_yc / mpp).astype(np.int64), 0, h - 1)
    cc = np.clip((bld_xc / mpp).astype(np.int64), 0, w - 1)
    base[bld_idx] = np.where(is_bld[bld_idx], terrain[cr * w + cc], base[bld_idx])
    # buildings stand on their lot-centre base; their top never dips below the local terrain
    top = np.where(is_bld, np.maximum(base + obj_h, ground + 0.5), ground + obj_h)

    # ---- trees: canopies over everything but roofs, water and vehicles' taller tops
    top, material, key, gx, gy = _trees(seed, style, shape, mpp, x, y, kind, material, key, top, ground, gx, gy)

    tgy, tgx = np.gradient(ground.reshape(h, w), mpp)
    flat_top = ~is_bld & (obj_h == 0) & (material != M_TREE)
    gx = np.where(flat_top, tgx.ravel(), gx)
    gy = np.where(flat_top, tgy.ravel(), gy)

    def r(a_: np.ndarray, dt) -> np.ndarray:
        return a_.reshape(h, w).astype(dt)

    return Layout(
        height=r(top, np.float32),
        ground=r(np.minimum(ground, top), np.float32),
        base=r(base, np.float32),
        gx=r(gx, np.float32),
        gy=r(gy, np.float32),
        material=r(material, np.uint8),
        key=r(key, np.uint64),
        did=r(did, np.int32),
        districts=d,
        seed=seed,
        meters_per_pixel=mpp,
    )


def _buildings(m, lot_key, kind, block_type, len_u, len_v, s_loc, t_loc, u, v, d, did, style,
               material, key, obj_h, gx, gy):  # fmt: skip
    """Footprints, heights and roofs of every lot touching the pixels ``m`` (building/site blocks).

    Writes material, key, object height and roof slopes in place; returns the building pixels
    and the world (x, y) of their lot centre, where the building base is taken from the terrain.
    """
    kt = style.kinds
    uniq, first, inv = np.unique(lot_key[m], return_index=True, return_inverse=True)
    lk = uniq
    fi = m[first]
    k_l = kind[fi]
    site = block_type[fi] == B_CONSTRUCTION
    lu_l, lv_l = len_u[fi], len_v[fi]
    # lot centre in world coordinates (for the building base)
    uc = u[fi] - (s_loc[fi] - lu_l / 2)
    vc = v[fi] - (t_loc[fi] - lv_l / 2)
    dl = did[fi]
    xc = d.cos[dl] * uc - d.sin[dl] * vc
    yc = d.sin[dl] * uc + d.cos[dl] * vc

    sb_lo, sb_hi = kt.setback[k_l, 0], kt.setback[k_l, 1]
    sbu = sb_lo + (sb_hi - sb_lo) * hash_uniform(lk, 3)
    sbv = sb_lo + (sb_hi - sb_lo) * hash_uniform(lk, 4)
    hu = lu_l / 2 - sbu
    hv = lv_l / 2 - sbv
    resid = (k_l == RESIDENTIAL) | (k_l == PARKLAND)
    hu = np.where(resid, np.minimum(hu, 6 + 5 * hash_uniform(lk, 5)), hu)
    hv = np.where(resid, np.minimum(hv, 5 + 4 * hash_uniform(lk, 6)), hv)
    empty = (hash_uniform(lk, 7) < 0.06) | (hu < 2.5) | (hv < 2.5) | (site & (hash_uniform(lk, 8) < 0.5))
    shape = _choice(kt.shapes[k_l], hash_uniform(lk, 9))
    med, sig, hmin, hmax = (kt.height[k_l, i] for i in range(4))
    height = np.clip(med * np.exp(sig * _normal(lk, 10)), hmin, hmax) * style.height_scale
    fl_lo, fl_hi = kt.floor_height[k_l, 0], kt.floor_height[k_l, 1]
    floor_h = fl_lo + (fl_hi - fl_lo) * hash_uniform(lk, 11)
    height = np.maximum(1, np.round(height / floor_h)) * floor_h
    if style.max_building_height_m is not None:
        height = np.minimum(height, np.maximum(1, np.floor(style.max_building_height_m / floor_h)) * floor_h)
    pitched = (shape == S_RECT) & (hash_uniform(lk, 12) < kt.pitched[k_l]) & (np.minimum(hu, hv) < 12) & ~site
    hip = hash_uniform(lk, 13) < 0.4
    slope = 0.45 + 0.45 * hash_uniform(lk, 14)
    flip_u = np.where(hash_uniform(lk, 15) < 0.5, -1.0, 1.0)
    flip_v = np.where(hash_uniform(lk, 16) < 0.5, -1.0, 1.0)

    # per-pixel evaluation
    xp = (s_loc[m] - lu_l[inv] / 2) * flip_u[inv]
    yp = (t_loc[m] - lv_l[inv] / 2) * flip_v[inv]
    hu_p, hv_p = hu[inv], hv[inv]
    ax, ay = np.abs(xp), np.abs(yp)
    rect = (ax < hu_p) & (ay < hv_p)
    shp = shape[inv]
    cut_x = hu_p * (0.7 * hash_uniform(lk, 17)[inv] - 0.35)
    cut_y = hv_p * (0.7 * hash_uniform(lk, 18)[inv] - 0.35)
    l_shape = rect & ~((xp > cut_x) & (yp > cut_y))
    wing = (7 + 6 * hash_uniform(lk, 19))[inv]
    court_ok = np.minimum(hu_p, hv_p) - wing > 3
    courtyard = rect & ~(court_ok & (ax < hu_p - wing) & (ay < hv_p - wing))
    radius = np.minimum(hu_p, hv_p)
    round_ = xp * xp + yp * yp < radius * radius
    foot = np.select([shp == S_L, shp == S_COURTYARD, shp == S_ROUND], [l_shape, courtyard, round_], rect)
    foot &= ~empty[inv]

    hgt = height[inv].copy()
    # towers on podiums: podium 2-4 floors, tower on a sub-rectangle
    tower = shp == S_TOWER
    podium_h = (2 + np.floor(3 * hash_uniform(lk, 20)))[inv] * floor_h[inv]
    tu = hu_p * (0.4 + 0.3 * hash_uniform(lk, 21)[inv])
    tv = hv_p * (0.4 + 0.3 * hash_uniform(lk, 22)[inv])
    tx = (hu_p - tu) * (2 * hash_uniform(lk, 23)[inv] - 1)
    ty = (hv_p - tv) * (2 * hash_uniform(lk, 24)[inv] - 1)
    in_tower = (np.abs(xp - tx) < tu) & (np.abs(yp - ty) < tv)
    hgt = np.where(tower & ~in_tower, np.minimum(podium_h, hgt), np.where(tower, np.maximum(hgt, 1.6 * podium_h), hgt))
    # construction sites: rough unfinished structures
    hgt = np.where(site[inv], hgt * (0.3 + 0.5 * hash_uniform(lk, 25)[inv]), hgt)

    # pitched roofs: gable along the long axis or hip; slopes in world frame
    pit = pitched[inv] & foot
    sl = slope[inv]
    long_u = hu_p >= hv_p
    gable_rise = np.where(long_u, hv_p - ay, hu_p - ax)
    hip_rise = np.minimum(hu_p - ax, hv_p - ay)
    use_hip = hip[inv]
    rise = sl * np.where(use_hip, hip_rise, gable_rise)
    # d(rise)/d(xp, yp): rise decreases away from the ridge
    hip_on_u = (hu_p - ax) < (hv_p - ay)
    along_u = np.where(use_hip, hip_on_u, ~long_u)
    dr_dx = np.where(along_u, -sl * np.sign(xp), 0.0) * flip_u[inv]
    dr_dy = np.where(~along_u, -sl * np.sign(yp), 0.0) * flip_v[inv]
    dl_p = did[m]
    c, s = d.cos[dl_p], d.sin[dl_p]
    roof_gx = np.where(pit, c * dr_dx - s * dr_dy, 0.0)
    roof_gy = np.where(pit, s * dr_dx + c * dr_dy, 0.0)
    hgt = np.where(pit, hgt + rise, hgt)

    # rooftop units on larger flat roofs
    unit = ~pit & foot & (hgt > 9) & ~site[inv] & (hash_uniform(lk, 26)[inv] < 0.7)
    ux = (hu_p - 4) * (2 * hash_uniform(lk, 27)[inv] - 1)
    uy = (hv_p - 4) * (2 * hash_uniform(lk, 28)[inv] - 1)
    usz = (1.2 + 1.8 * hash_uniform(lk, 29))[inv]
    unit &= (np.abs(xp - np.where(tower, tx, ux)) < usz) & (np.abs(yp - np.where(tower, ty, uy)) < usz * 0.8)
    unit &= ~tower | in_tower

    # commit
    mat = np.where(site[inv], M_STRUCTURE, np.where(pit, M_ROOF_PITCHED, M_ROOF_FLAT))
    mat = np.where(unit, M_ROOF_UNIT, mat)
    idx = m[foot]
    material[idx] = mat[foot]
    key[idx] = lot_key[idx]
    obj_h[idx] = (hgt + np.where(unit, 2.0 + usz * 0.5, 0.0))[foot]
    gx[idx] = roof_gx[foot]
    gy[idx] = roof_gy[foot]
    lot_of_pixel = inv[foot]
    # empty / leftover lot area: yards, plazas or parking by district
    rest = m[~foot]
    rk = kind[rest]
    rest_site = block_type[rest] == B_CONSTRUCTION
    mat_rest = np.select(
        [rest_site, rk == RESIDENTIAL, rk == PARKLAND, rk == INDUSTRIAL],
        [M_DIRT, M_YARD, M_GRASS, M_PARKING],
        M_PLAZA,
    )
    material[rest] = mat_rest
    key[rest] = lot_key[rest]
    return idx, xc[lot_of_pixel], yc[lot_of_pixel]


def _river(rng, x, y, size_x, size_y, road, material, key, obj_h, gx, gy, seed) -> None:
    """A meandering river with grass banks; roads crossing it stay as bridges."""
    p0x, p0y = rng.uniform(0.2, 0.8) * size_x, rng.uniform(0.2, 0.8) * size_y
    phi = rng.uniform(0, np.pi)
    dx, dy = np.cos(phi), np.sin(phi)
    along = (x - p0x) * dx + (y - p0y) * dy
    across = -(x - p0x) * dy + (y - p0y) * dx
    amp, lam, ph = rng.uniform(10, 40), rng.uniform(250, 600), rng.uniform(0, 2 * np.pi)
    meander = amp * np.sin(2 * np.pi * along / lam + ph) + 0.3 * amp * np.sin(2 * np.pi * along / (0.37 * lam) + 2 * ph)
    dist = np.abs(across - meander)
    width = rng.uniform(16, 40)
    water = (dist < width / 2) & ~road
    bank = (dist < width / 2 + 6) & ~road & ~water
    for mask, mat in ((water, M_WATER), (bank, M_GRASS)):
        material[mask] = mat
        obj_h[mask] = 0
        gx[mask] = 0
        gy[mask] = 0
        key[mask] = hash_u64(seed, 0x5717E5)


def _vehicles(seed, style, kind, u, v, lu, lv, half, pu, pv, band_u, band_v, arterial, lane, did, bu, bv,
              ca, cb, material, key, obj_h) -> None:  # fmt: skip
    """Cars in driving and parking lanes of the street grid, and in parking-lot stalls."""
    dens = style.kinds.cars[kind] * style.car_density
    street = (material == M_ASPHALT) & ~arterial & ~lane
    for axis, along, lateral, period, band, other, road_ix in (
        (0, u, lv, pv, band_u, band_v, bv + (lv >= pv - half)),
        (1, v, lu, pu, band_v, band_u, bu + (lu >= pu - half)),
    ):
        e = np.where(lateral < half, lateral, lateral - period)
        sel = street & band & ~other
        lanes = [(-0.5, 7.5, 1.0), (0.5, 7.5, 1.0), (-1.0, 6.0, 1.4), (1.0, 6.0, 1.4)]  # centre/half-width
        for li, (frac, slot_len, boost) in enumerate(lanes):
            centre = np.where(np.abs(frac) < 1, frac * half, np.sign(frac) * (half - 1.3))
            ok = sel & (np.abs(e - centre) < CAR_WIDTH / 2) & ((np.abs(frac) < 1) | (half >= 6))
            if not ok.any():
                continue
            idx = np.flatnonzero(ok)
            slot = np.floor(along[idx] / slot_len).astype(np.int64)
            ck = hash_u64(seed, did[idx], road_ix[idx], slot, li, axis)
            jit = (hash_uniform(ck, 1) - 0.5) * (slot_len - CAR_LENGTH) * 0.8
            p = along[idx] - (slot + 0.5) * slot_len - jit
            car = (np.abs(p) < CAR_LENGTH / 2) & (hash_uniform(ck, 2) < dens[idx] * boost)
            idx, p, ck = idx[car], p[car], ck[car]
            material[idx] = M_CAR
            key[idx] = ck
            obj_h[idx] = np.where(np.abs(p) < 1.2, CAR_CABIN_HEIGHT, CAR_HEIGHT)
    lot = np.flatnonzero(material == M_PARKING)
    if lot.size:
        col = np.floor(ca[lot] / 2.6).astype(np.int64)
        pc = ca[lot] - (col + 0.5) * 2.6
        rr = np.mod(cb[lot], 16.0)
        row = np.floor(cb[lot] / 16.0).astype(np.int64) * 2 + (rr > 8)
        pr = np.where(rr > 8, rr - 13.2, rr - 2.8)
        ck = hash_u64(seed, did[lot], bu[lot], bv[lot], col, row, 3)
        car = (np.abs(pc) < CAR_WIDTH / 2) & (np.abs(pr) < CAR_LENGTH / 2) & (hash_uniform(ck, 2) < 0.55 * style.car_density)
        idx = lot[car]
        material[idx] = M_CAR
        key[idx] = ck[car]
        obj_h[idx] = np.where(np.abs(pr[car]) < 1.2, CAR_CABIN_HEIGHT, CAR_HEIGHT)


TREE_SPACING_M = 5.0
_TREE_P = np.zeros(16)
_TREE_P[[M_GRASS, M_YARD, M_PLAZA]] = (0.45, 0.2, 0.07)


def _trees(seed, style, shape, mpp, x, y, kind, material, key, top, ground, gx, gy):
    """Trees from a jittered 5 m lattice (parks, yards, plazas, sidewalks), as ellipsoidal crowns.

    Each pixel takes the crown of its nearest trunk (Euclidean distance transform); a crown
    replaces the surface where it is higher, except over roofs, structures and water.
    """
    h, w = shape
    ny = int(np.ceil(h * mpp / TREE_SPACING_M))
    nx = int(np.ceil(w * mpp / TREE_SPACING_M))
    ci, cj = (a.ravel() for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    tk = hash_u64(seed, ci, cj, 0x7EE)
    tx = (cj + 0.1 + 0.8 * hash_uniform(tk, 1)) * TREE_SPACING_M
    ty = (ci + 0.1 + 0.8 * hash_uniform(tk, 2)) * TREE_SPACING_M
    inside = (tx < w * mpp) & (ty < h * mpp)
    tx, ty, tk = tx[inside], ty[inside], tk[inside]
    cell = (ty / mpp).astype(np.int64) * w + (tx / mpp).astype(np.int64)
    mat = material[cell]
    p = _TREE_P[mat] + np.where(mat == M_SIDEWALK, 0.5 * style.kinds.street_trees[kind[cell]], 0.0)
    keep = hash_uniform(tk, 3) < p * style.tree_density
    if not keep.any():
        return top, material, key, gx, gy
    tx, ty, tk, cell = tx[keep], ty[keep], tk[keep], cell[keep]
    park = material[cell] == M_GRASS
    radius = 1.6 + np.where(park, 3.2, 2.2) * hash_uniform(tk, 4)
    crown = radius * (0.9 + 0.9 * hash_uniform(tk, 5))
    trunk = 1.5 + 2.5 * hash_uniform(tk, 6)
    centres = np.zeros(h * w, bool)
    tid = np.zeros(h * w, np.int64)
    centres[cell] = True
    tid[cell] = np.arange(cell.size)
    _, (ri, rj) = ndimage.distance_transform_edt(~centres.reshape(h, w), return_indices=True)
    t = tid[(ri * w + rj).ravel()]
    ddx, ddy = x - tx[t], y - ty[t]
    dist = np.hypot(ddx, ddy)
    q = np.clip(dist / radius[t], 0, 1)
    root = np.sqrt(np.maximum(1 - q * q, 0.04))
    z = ground + trunk[t] + crown[t] * np.sqrt(1 - q * q)
    blocked = np.isin(material, (M_ROOF_FLAT, M_ROOF_PITCHED, M_ROOF_UNIT, M_STRUCTURE, M_WATER))
    canopy = (q < 1) & (z > top) & ~blocked
    dz_dd = -crown[t] * q / (radius[t] * root)
    inv_d = 1.0 / np.maximum(dist, 1e-6)
    top = np.where(canopy, z, top)
    gx = np.where(canopy, dz_dd * ddx * inv_d, gx)
    gy = np.where(canopy, dz_dd * ddy * inv_d, gy)
    material = np.where(canopy, M_TREE, material).astype(np.uint8)
    key = np.where(canopy, tk[t], key)
    return top, material, key, gx, gy
