"""BEV points (GaussianCity Sec. 3.2-3.3): density map, hollow shell, instances, visibility."""

import math

import numpy as np
import pytest
import torch

from diffusers_city.data.classes import FACADE, GROUND, ROAD, ROOF, WATER
from diffusers_city.models.gaussiancity.bev import (
    BEVLayout,
    ViewCache,
    bev_points,
    visible_bev_points,
    visible_bev_points_per_camera,
)
from diffusers_city.render import Cameras, Gaussians


def _box_layout(size=16, box=(6, 10, 6, 10), height=10.0, mpp=1.0):
    sem = np.full((size, size), GROUND, dtype=np.int64)
    hgt = np.zeros((size, size), dtype=np.float32)
    r0, r1, c0, c1 = box
    sem[r0:r1, c0:c1] = ROOF
    hgt[r0:r1, c0:c1] = height
    return BEVLayout.from_maps(sem, hgt, meters_per_pixel=mpp)


def _key_set(points):
    return {tuple(v) for v in torch.cat([points.voxels, points.classes[:, None]], 1).tolist()}


def test_flat_layout_density_map():
    sem = np.zeros((8, 12), dtype=np.int64)
    sem[:, 8:] = WATER
    layout = BEVLayout.from_maps(sem, np.zeros((8, 12)))
    pts = bev_points(layout)
    ground = pts.classes == GROUND
    water = pts.classes == WATER
    assert int(ground.sum()) == 4 * 4  # stride 2 over 8 x 8
    assert int(water.sum()) == 2 * 1  # stride 4 over 8 x 4
    assert bool((pts.positions[:, 2] == 0).all())
    assert bool((pts.strides[water] == 4).all())


def test_building_hollow_shell_roof_facade_and_instances():
    layout = _box_layout()
    pts = bev_points(layout)
    roof, facade = pts.classes == ROOF, pts.classes == FACADE
    assert int(roof.sum()) == 16
    # 12 perimeter pixels, exposed levels 1..9 below the roof; interior columns stay hollow.
    assert int(facade.sum()) == 12 * 9
    assert layout.num_instances == 1
    assert bool((pts.instances[roof | facade] == 1).all())
    assert bool((pts.instances[~(roof | facade)] == 0).all())
    rel = pts.relative[roof | facade]
    assert float(rel.abs().max()) <= 1.0
    assert torch.allclose(rel[roof[roof | facade], 2], torch.ones(16))
    assert torch.allclose(pts.instance_size[roof][0], torch.tensor([4.0, 4.0, 10.0]))
    assert torch.allclose(pts.instance_center[roof][0], torch.tensor([8.0, 8.0, 5.0]))
    # World convention: pixel (i, j) centre at origin + (j + 0.5, i + 0.5) * mpp.
    xy = pts.positions[roof][:, :2]
    assert float(xy.min()) == 6.5 and float(xy.max()) == 9.5


def test_map_edges_extrude_whole_columns_and_components():
    sem = np.zeros((6, 6), dtype=np.int64)
    hgt = np.zeros((6, 6))
    sem[0:2, 0:2] = ROOF
    hgt[0:2, 0:2] = 3.0
    sem[4:6, 4:6] = ROOF
    hgt[4:6, 4:6] = 5.0
    layout = BEVLayout.from_maps(sem, hgt)
    pts = bev_points(layout)
    assert layout.num_instances == 2
    # Corner pixel (0, 0) touches two map edges: levels 0..2 below its roof are all kept.
    corner = (pts.voxels[:, 0] == 0) & (pts.voxels[:, 1] == 0)
    assert sorted(pts.voxels[corner, 2].tolist()) == [0, 1, 2, 3]


def test_windows_are_consistent_with_whole_layout():
    rng = np.random.default_rng(0)
    sem = rng.integers(0, 8, size=(24, 20))
    hgt = rng.integers(0, 6, size=(24, 20)).astype(float)
    layout = BEVLayout.from_maps(sem, hgt)
    whole = _key_set(bev_points(layout))
    tiled = _key_set(bev_points(layout, tile=8))
    assert whole == tiled
    part = _key_set(bev_points(layout, window=(8, 16, 4, 12)))
    assert part <= whole and len(part) < len(whole)


def _camera(eye, target, width=32, height=24, focal=20.0):
    return Cameras.look_at(torch.tensor(eye), torch.tensor(target), width=width, height=height, focal=focal)


def test_top_down_view_sees_every_top_and_nothing_else():
    layout = _box_layout()
    cam = _camera([8.0, 8.0, 40.0], [8.0, 8.0, 0.0], width=96, height=96, focal=110.0)
    vis = visible_bev_points(layout, cam)
    tops = bev_points(layout)
    is_top = tops.classes != FACADE
    assert _key_set(vis) == _key_set(tops.select(is_top))


def test_side_view_sees_front_wall_not_back_wall():
    layout = _box_layout(size=32, box=(12, 20, 12, 20), height=8.0)
    cam = _camera([0.5, 16.0, 4.0], [16.0, 16.0, 4.0], width=64, height=48, focal=40.0)
    vis = visible_bev_points(layout, cam)
    facade = vis.classes == FACADE
    assert int(facade.sum()) > 10
    xs = vis.voxels[facade, 0]
    assert bool((xs == 12).all()), "only the wall facing the camera (x = 12) is visible"
    assert len(vis) <= 64 * 48


def test_visible_points_bounded_and_subset_on_large_layout():
    rng = np.random.default_rng(1)
    size = 160
    sem = np.full((size, size), ROAD, dtype=np.int64)
    hgt = np.zeros((size, size))
    for _ in range(40):
        r, c = rng.integers(0, size - 6, 2)
        sem[r : r + 5, c : c + 5] = ROOF
        hgt[r : r + 5, c : c + 5] = rng.integers(4, 20)
    layout = BEVLayout.from_maps(sem, hgt)
    cam = _camera([80.0, 20.0, 30.0], [80.0, 80.0, 0.0], width=40, height=30, focal=30.0)
    vis = visible_bev_points(layout, cam, max_distance=60.0)
    assert 0 < len(vis) <= 40 * 30
    assert _key_set(vis) <= _key_set(bev_points(layout))
    dist = (vis.positions - cam.centers[0]).norm(dim=1)
    assert float(dist.max()) <= 60.0 + 2 * math.sqrt(3)


def test_camera_looking_away_gives_empty_set():
    layout = _box_layout()
    cam = _camera([8.0, 8.0, 40.0], [8.0, 8.0, 80.0])
    vis = visible_bev_points(layout, cam)
    assert len(vis) == 0 and vis.positions.shape == (0, 3)
    away = _camera([-50.0, 8.0, 5.0], [-100.0, 8.0, 5.0])
    assert len(visible_bev_points(layout, away)) == 0


@pytest.mark.parametrize(
    "sem, hgt, match",
    [
        (np.zeros((4, 4), int), np.zeros((4, 5)), "differ in size"),
        (np.full((4, 4), 9), np.zeros((4, 4)), "unknown class ids \\[9\\]"),
        (np.zeros((4, 4), int), np.full((4, 4), np.nan), "NaN"),
        (np.zeros((0, 4), int), np.zeros((0, 4)), "empty"),
        (np.zeros(4, int), np.zeros(4), "2D"),
    ],
)
def test_bad_maps_raise(sem, hgt, match):
    with pytest.raises(ValueError, match=match):
        BEVLayout.from_maps(sem, hgt)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="meters_per_pixel"):
        BEVLayout.from_maps(np.zeros((4, 4), int), np.zeros((4, 4)), meters_per_pixel=0)
    with pytest.raises(ValueError, match="class_strides"):
        BEVLayout.from_maps(np.zeros((4, 4), int), np.zeros((4, 4)), class_strides=(1, 2))
    layout = _box_layout()
    with pytest.raises(ValueError, match="ray_step"):
        visible_bev_points(layout, _camera([8.0, 8.0, 40.0], [8.0, 8.0, 0.0]), ray_step=0)


def _reference_march(o, d, top, coarse_cell, tmax):
    """The previous visibility march (one coarse skipping grid, active rays compacted every step):
    the oracle the maximum-mipmap lockstep march must reproduce exactly."""
    from diffusers_city.render.heightfield_march import slab as _slab

    hc, wc = top.shape
    n = o.shape[0]
    hit = torch.zeros(n, dtype=torch.bool)
    pixel = torch.zeros(n, dtype=torch.long)
    level = torch.zeros(n, dtype=torch.long)
    pad = (0, (-wc) % coarse_cell, 0, (-hc) % coarse_cell)
    coarse = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(top.double()[None, None], pad, value=-float(1 << 40)), coarse_cell
    )[0, 0]
    lo = torch.tensor([0.0, 0.0, -math.inf], dtype=o.dtype)
    hi = torch.tensor([float(wc), float(hc), float(top.max()) + 1.0], dtype=o.dtype)
    tn, tf = _slab(o, d, lo, hi)
    tn, tf = tn.clamp(min=0.0), tf.clamp(max=tmax)
    active = torch.nonzero(tf > tn).squeeze(1)
    t, tf, o, d = tn[active] + 1e-6, tf[active], o[active], d[active]
    sign = (d[:, :2] > 0).to(o.dtype)
    inv = 1.0 / torch.where(d[:, :2].abs() < 1e-12, torch.full_like(d[:, :2], 1e-12), d[:, :2])
    cw = coarse.shape[1]
    while active.numel():
        p = o + d * t[:, None]
        cx = torch.clamp(p[:, 0].floor().long(), 0, wc - 1)
        cy = torch.clamp(p[:, 1].floor().long(), 0, hc - 1)
        ccx, ccy = cx // coarse_cell, cy // coarse_cell
        cb = torch.stack([ccx, ccy], 1).to(o.dtype) * coarse_cell
        tc = torch.minimum((((cb + sign * coarse_cell) - o[:, :2]) * inv).amin(1), tf)
        skip = torch.minimum(p[:, 2], o[:, 2] + d[:, 2] * tc) > coarse.reshape(-1)[ccy * cw + ccx]
        fb = torch.stack([cx, cy], 1).to(o.dtype)
        te = torch.minimum((((fb + sign) - o[:, :2]) * inv).amin(1), tf)
        col_top = top.reshape(-1)[cy * wc + cx]
        is_hit = ~skip & (torch.minimum(p[:, 2], o[:, 2] + d[:, 2] * te) <= col_top)
        idx = active[is_hit]
        hit[idx] = True
        pixel[idx] = (cy * wc + cx)[is_hit]
        level[idx] = torch.minimum(col_top[is_hit], torch.ceil(p[is_hit, 2] - 1e-6).long())
        t = torch.maximum(torch.where(skip, tc, te), t) + 1e-5
        keep = ~is_hit & (t < tf)
        active, t, tf, o, d, sign, inv = (v[keep] for v in (active, t, tf, o, d, sign, inv))
    return hit, pixel, level


def _city(size, seed):
    rng = np.random.default_rng(seed)
    sem = np.full((size, size), ROAD, dtype=np.int64)
    hgt = rng.integers(0, 2, size=(size, size)).astype(float)
    for _ in range(size // 3):
        r, c = rng.integers(0, size - 4, 2)
        h, w = rng.integers(1, 9, 2)
        sem[r : r + h, c : c + w] = ROOF
        hgt[r : r + h, c : c + w] = rng.integers(2, 40)
    return BEVLayout.from_maps(sem, hgt)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mip_levels", [0, 1, 3, 16])
def test_mipmap_march_matches_reference_first_hits(seed, mip_levels):
    from diffusers_city.models.gaussiancity.bev import _camera_rays, _max_pyramid, _pixel_grid
    from diffusers_city.render.heightfield_march import march

    layout = _city(64, seed)
    rng = np.random.default_rng(100 + seed)
    top = layout.top
    hits = 0
    for _ in range(3):
        eye = [*rng.uniform(-10, 74, 2), rng.uniform(3, 80)]
        target = [*rng.uniform(10, 54, 2), 0.0]
        cam = _camera(eye, target, width=48, height=36, focal=float(rng.uniform(15, 60)))
        u, v = _pixel_grid(48, 36, 1, "cpu")
        o, d = _camera_rays(layout, cam.K[0], cam.world_to_cam[0], u, v, "cpu")
        tmax = float(rng.choice([math.inf, 40.0]))
        want = _reference_march(o, d, top, 8, tmax)
        got = march(o, d, top, _max_pyramid(top, mip_levels), tmax, use_triton=False, sync_every=int(rng.integers(1, 9)))
        hits += int(want[0].sum())
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1][want[0]], want[1][want[0]])
        assert torch.equal(got[2][want[0]], want[2][want[0]])
    assert hits > 500


def test_visible_points_do_not_depend_on_mip_levels_or_chunks():
    layout = _city(48, 5)
    cam = _camera([-5.0, 10.0, 30.0], [30.0, 30.0, 0.0], width=40, height=30, focal=25.0)
    base = _key_set(visible_bev_points(layout, cam, mip_levels=0))
    assert len(base) > 50
    for kw in ({"mip_levels": 2}, {"mip_levels": 8, "ray_chunk": 97}):
        assert _key_set(visible_bev_points(layout, cam, **kw)) == base
    with pytest.raises(ValueError, match="mip_levels"):
        visible_bev_points(layout, cam, mip_levels=-1)


def test_per_camera_visibility_is_each_cameras_own_visible_set():
    """Frames decoded together: the union of the cameras' points, and per camera exactly the points
    a call for that camera alone returns (a camera looking away sees none)."""
    layout = _city(64, 7)
    cams = Cameras.cat(
        [
            _camera([-5.0, 10.0, 30.0], [30.0, 30.0, 0.0], width=40, height=30, focal=25.0),
            _camera([70.0, 60.0, 35.0], [30.0, 30.0, 0.0], width=40, height=30, focal=25.0),
            _camera([30.0, 30.0, 60.0], [30.0, 30.0, 200.0], width=40, height=30, focal=25.0),  # looking up
            _camera([10.0, 70.0, 25.0], [40.0, 20.0, 0.0], width=40, height=30, focal=25.0),
        ]
    )
    union, rows = visible_bev_points_per_camera(layout, cams, max_distance=80.0, ray_step=2)
    want_union = visible_bev_points(layout, cams, max_distance=80.0, ray_step=2)
    assert torch.equal(union.voxels, want_union.voxels) and torch.equal(union.classes, want_union.classes)
    assert len(rows) == 4 and rows[2].numel() == 0
    for j, index in enumerate(rows):
        want = visible_bev_points(layout, cams[j], max_distance=80.0, ray_step=2)
        got = union.select(index)
        assert torch.equal(got.voxels, want.voxels) and torch.equal(got.positions, want.positions)
        assert torch.equal(got.instances, want.instances)
    assert min(len(rows[0]), len(rows[1]), len(rows[3])) > 50
    assert len(union) < len(rows[0]) + len(rows[1]) + len(rows[3])  # the views overlap
    empty, none = visible_bev_points_per_camera(layout, cams[2])
    assert len(empty) == 0 and none[0].numel() == 0


def test_view_cache_gives_the_uncached_points_and_rebuilds_only_when_the_view_leaves_it():
    """Frames of a moving camera reuse one window's tables while their view fits inside it."""
    layout = _city(160, 3)
    cache = ViewCache(layout, "cpu", margin=0.5)
    windows = []
    for x in np.linspace(40.0, 70.0, 6):
        cam = _camera([x, 20.0, 25.0], [x, 60.0, 0.0], width=40, height=30, focal=30.0)
        want = visible_bev_points(layout, cam, max_distance=50.0)
        got = visible_bev_points(layout, cam, max_distance=50.0, cache=cache)
        assert len(want) > 100 and torch.equal(got.voxels, want.voxels) and torch.equal(got.classes, want.classes)
        assert torch.equal(got.positions, want.positions) and torch.equal(got.instances, want.instances)
        windows.append(cache.tables.window)
    assert 1 <= cache.builds < 6 and len(set(windows)) == cache.builds
    r0, r1, c0, c1 = windows[-1]
    assert r1 - r0 < 160 or c1 - c0 < 160  # the cached window stays a crop of the layout
    with pytest.raises(ValueError, match="another layout"):
        visible_bev_points(_city(160, 4), cam, max_distance=50.0, cache=cache)


def _march_case(layout, rng, width, height, device):
    from diffusers_city.models.gaussiancity.bev import _camera_rays, _max_pyramid, _pixel_grid

    w = layout.shape[1]
    eye = [*rng.uniform(-0.2 * w, 1.2 * w, 2), rng.uniform(3, 0.8 * w)]
    target = [*rng.uniform(0.2 * w, 0.8 * w, 2), 0.0]
    cam = _camera(eye, target, width=width, height=height, focal=float(rng.uniform(0.4, 1.2) * width))
    u, v = _pixel_grid(width, height, 1, device)
    o, d = _camera_rays(layout, cam.K[0], cam.world_to_cam[0], u, v, device)
    top = layout.top.to(device)
    return o, d, top, _max_pyramid(top, int(rng.integers(0, 6))), float(rng.choice([math.inf, 0.6 * w]))


def test_triton_march_refuses_cpu_tensors():
    from diffusers_city.render.heightfield_march import march

    rng = np.random.default_rng(0)
    o, d, top, pyramid, _ = _march_case(_city(32, 0), rng, 16, 12, "cpu")
    with pytest.raises(RuntimeError, match="Triton and CUDA"):
        march(o, d, top, pyramid, math.inf, use_triton=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton march kernel runs on CUDA (parity run on the GPU machine)")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triton_march_matches_torch_march_on_cuda(seed):
    """GPU parity: the Triton kernel returns exactly the torch traversal's hits, pixels and levels."""
    from diffusers_city.render.heightfield_march import march, triton_available

    assert triton_available(torch.device("cuda"))
    layout = _city(384, seed)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(4):
        o, d, top, pyramid, tmax = _march_case(layout, rng, 320, 240, "cuda")
        want = march(o, d, top, pyramid, tmax, use_triton=False)
        got = march(o, d, top, pyramid, tmax, use_triton=True)
        hits += int(want[0].sum())
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1][want[0]], want[1][want[0]])
        assert torch.equal(got[2][want[0]], want[2][want[0]])
    assert hits > 100_000


GEO = (809_000.0, 6_304_000.0, 120.0)  # a real point cloud's world origin (UTM-like metres)


def _world_camera(cam: Cameras, shift) -> Cameras:
    """``cam`` moved by ``shift`` metres, in float64 as georeferenced cameras need."""
    to_local = torch.eye(4, dtype=torch.float64)
    to_local[:3, 3] = -torch.tensor(shift, dtype=torch.float64)
    return Cameras(cam.K.double(), cam.world_to_cam.double() @ to_local, cam.width, cam.height)


def test_points_and_visibility_are_in_the_layout_frame_whatever_the_world_origin():
    """A layout at a georeferenced origin has the points of the same layout at origin 0 (positions
    from its own origin, exact in float32), seen from its world cameras moved into its frame; at
    origin 0 the frame changes nothing (the very objects come back)."""
    base = _city(64, 7)
    geo = BEVLayout.from_maps(base.semantic, base.top.double(), meters_per_pixel=1.0, origin=GEO)
    assert torch.equal(bev_points(geo).positions, bev_points(base).positions)
    cam = _camera([-5.0, 10.0, 30.0], [30.0, 30.0, 0.0], width=40, height=30, focal=25.0)
    local = geo.layout_cameras(_world_camera(cam, GEO))
    assert local.world_to_cam.dtype == torch.float64
    assert torch.allclose(local.world_to_cam, cam.world_to_cam.double(), atol=1e-6)
    want, got = visible_bev_points(base, cam), visible_bev_points(geo, local.to(dtype=torch.float32))
    assert len(want) > 100 and torch.equal(got.voxels, want.voxels) and torch.equal(got.positions, want.positions)
    assert base.layout_cameras(cam) is cam
    g = Gaussians.from_points(want.positions, torch.rand(len(want), 3))
    assert base.world_gaussians(g) is g
    world = geo.world_gaussians(g)
    assert world.means.dtype == torch.float64 and torch.equal(world.colors, g.colors)
    assert torch.allclose(world.means - torch.tensor(GEO, dtype=torch.float64), g.means.double(), atol=1e-9)
