"""Point cloud <-> raster <-> voxel conversions."""

import numpy as np
import pytest
import torch

from diffusers_city.data import (
    height_map_to_points,
    points_to_height_map,
    points_to_scene,
    points_to_voxels,
    procedural_city,
    splat_normals,
)


@pytest.fixture(scope="module")
def scene():
    return procedural_city(5, 64, points_per_m2=3)


def test_points_to_height_map_recovers_scene(scene):
    height, semantic, valid = points_to_height_map(scene.points, 1.0, scene.origin, scene.shape, scene.point_classes)
    err = np.abs(height - scene.height)
    assert valid.mean() > 0.99
    assert np.mean(err < 0.3) > 0.97 and np.median(err) < 0.05
    assert np.mean(semantic == scene.semantic) > 0.97


def test_holes_filled_by_nearest():
    pts = np.array([[0.5, 0.5, 1.0], [0.6, 0.5, 3.0], [3.5, 0.5, 7.0]])
    h, sem, valid = points_to_height_map(pts, 1.0, (0, 0, 0), (1, 4), classes=np.array([3, 2, 4]))
    np.testing.assert_array_equal(valid, [[True, False, False, True]])
    np.testing.assert_array_equal(h, [[3.0, 3.0, 7.0, 7.0]])
    np.testing.assert_array_equal(sem, [[3, 3, 4, 4]])  # facade (2) becomes roof (3)


def test_points_to_scene(scene):
    s = points_to_scene(scene.points, 2.0, colors=scene.colors, classes=scene.point_classes, origin=scene.origin, shape=(32, 32))
    assert s.shape == (32, 32) and s.image.shape == (32, 32, 3) and s.num_points == scene.num_points


def test_height_map_to_points():
    h = np.array([[0.0, 4.0], [0.0, 0.0]], np.float32)
    p = height_map_to_points(h, 2.0, origin=(10, 20, 1))
    assert p.shape == (4, 3)
    np.testing.assert_allclose(p[1], [13.0, 21.0, 5.0])
    assert height_map_to_points(h, 2.0, upsample=2).shape == (16, 3)
    filled = height_map_to_points(h, 2.0, fill_columns=True, column_step=1.0)
    assert filled.shape == (8, 3) and np.allclose(filled[4:, :2], [3.0, 1.0])
    gray = np.array([[0, 255]], np.uint8)
    np.testing.assert_allclose(height_map_to_points(gray, 1.0, z_range=(2.0, 12.0))[:, 2], [2.0, 12.0])
    with pytest.raises(ValueError, match="z_range"):
        height_map_to_points(gray, 1.0)


def test_voxel_grid_covers_points(scene):
    v = 2.0
    grid = splat_normals(scene.points, scene.normals, v)
    nearest = np.floor((scene.points - grid["origin"]) / v + 0.5).astype(np.int64)
    occupied = {tuple(c) for c in grid["coords"]}
    assert all(tuple(c) in occupied for c in np.unique(nearest, axis=0))
    assert len(occupied) == len(np.unique(nearest, axis=0)) and grid["counts"].sum() == scene.num_points
    np.testing.assert_allclose(np.linalg.norm(grid["normals"], axis=1), 1, atol=1e-5)
    assert grid["coords"].min() >= 0


def test_splat_normals_of_a_plane():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(0, 10, (500, 2)), np.full(500, 3.3)]
    nrm = np.tile([0.0, 0.0, 1.0], (500, 1))
    grid = splat_normals(pts, nrm, 1.0, origin=(0.5, 0.5, 0.5), colors=np.full((500, 3), 0.25))
    np.testing.assert_allclose(grid["normals"], np.tile([0, 0, 1.0], (len(grid["normals"]), 1)), atol=1e-6)
    assert set(grid["coords"][:, 2]) == {3} and np.allclose(grid["colors"], 0.25)


def test_points_to_voxels_sparse_tensor(scene):
    st = points_to_voxels(scene.points, scene.normals, 1.0, colors=scene.colors)
    assert st.feats.shape[1] == 6 and st.coords.dtype == torch.int32 and st.voxel_size == 1.0
    wp = st.world_positions().numpy()
    lo, hi = scene.points.min(0), scene.points.max(0)
    assert (wp >= lo - 1.0).all() and (wp <= hi + 1.0).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: points_to_height_map(np.zeros((0, 3)), 1.0), "no points"),
        (lambda: points_to_height_map(np.full((2, 3), np.nan), 1.0), "NaN"),
        (lambda: points_to_height_map(np.zeros((2, 3)), 0.0), "meters_per_pixel"),
        (lambda: points_to_height_map(np.zeros((2, 2)), 1.0), r"\[N, 3\]"),
        (lambda: points_to_height_map(np.zeros((2, 3)), 1.0, classes=np.array([0, 11])), "class table"),
        (lambda: points_to_height_map(np.zeros((2, 3)), 1.0, origin=(5, 5, 0), shape=(2, 2)), "no point falls"),
        (lambda: splat_normals(np.zeros((2, 3)), np.zeros((3, 3)), 1.0), "normals"),
        (lambda: splat_normals(np.zeros((2, 3)), np.zeros((2, 3)), -1.0), "voxel_size"),
        (lambda: height_map_to_points(np.array([[np.inf]]), 1.0), "NaN"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
