"""Procedural cities and Sat2City height-map noise."""

import numpy as np
import pytest

from diffusers_city.data import (
    FACADE,
    ROAD,
    ROOF,
    VEGETATION,
    height_from_gray,
    height_to_gray,
    noisy_height_map,
    procedural_city,
)


@pytest.fixture(scope="module")
def scenes():
    return [procedural_city(s, 96, points_per_m2=1.5) for s in range(3)]


def test_deterministic_per_seed(scenes):
    again = procedural_city(0, 96, points_per_m2=1.5)
    assert again == scenes[0]
    assert not np.array_equal(scenes[0].height, scenes[1].height)


def test_class_coverage(scenes):
    raster = set().union(*(np.unique(s.semantic) for s in scenes))
    pts = set().union(*(np.unique(s.point_classes) for s in scenes))
    assert {ROAD, ROOF, VEGETATION} <= raster
    assert {ROAD, ROOF, FACADE, VEGETATION} <= pts
    assert FACADE not in raster


def test_points_lie_on_the_surface(scenes):
    for s in scenes:
        row, col = s.point_cells()
        assert row.min() >= 0 and row.max() < s.shape[0] and col.min() >= 0 and col.max() < s.shape[1]
        n = s.normals
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
        top = n[:, 2] > 1e-3
        # top points lie on the tangent plane of their cell: z = h + g . (p - centre), g = -n_xy / n_z
        dx = s.points[top, 0] - (col[top] + 0.5) * s.meters_per_pixel
        dy = s.points[top, 1] - (row[top] + 0.5) * s.meters_per_pixel
        expected = s.height[row[top], col[top]] - (n[top, 0] * dx + n[top, 1] * dy) / n[top, 2]
        np.testing.assert_allclose(s.points[top, 2], expected, atol=2e-3)
        # walls: horizontal normals, heights between the cell's lowest neighbour and its top
        wall = ~top
        assert np.abs(n[wall, 2]).max() == 0
        pad = np.pad(s.height, 1, mode="edge")
        low = np.minimum.reduce([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
        z = s.points[wall, 2]
        assert (z <= s.height[row[wall], col[wall]] + 1e-3).all() and (z >= low[row[wall], col[wall]] - 1e-3).all()
        assert (s.point_classes[s.point_classes == FACADE].size > 0) and not top[s.point_classes == FACADE].any()


def test_rasters_image_and_metadata(scenes):
    s = scenes[0]
    assert s.height.dtype == np.float32 and s.semantic.dtype == np.uint8
    assert (s.ground <= s.height).all()
    assert s.image.shape == (96, 96, 3) and 0 <= s.image.min() and s.image.max() <= 1
    assert s.metadata["seed"] == 0 and s.metadata["generator"] == "procedural_city"
    assert (s.instance[s.semantic == ROOF] > 0).all()
    s2 = procedural_city(0, (64, 32), meters_per_pixel=2.0, image_scale=2, with_points=False)
    assert s2.shape == (16, 32) and s2.image.shape == (32, 64, 3) and s2.points is None


def test_crop_of_scene_keeps_points_inside(scenes):
    s = scenes[1]
    c = s.crop(10, 20, 32, 32)
    x, y = s.points[:, 0], s.points[:, 1]
    assert c.num_points == int(((x >= 20) & (x < 52) & (y >= 10) & (y < 42)).sum())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seed=1.5), "seed"),
        (dict(meters_per_pixel=0), "meters_per_pixel"),
        (dict(size_m=-3), "size_m"),
        (dict(points_per_m2=0), "points_per_m2"),
        (dict(colour="red"), "unknown style"),
        (dict(tree_density=-1), "tree_density"),
        (dict(image_scale=0), "image_scale"),
        ({"max_building_height_m": 1.0}, "max_building_height_m"),
        ({"size_m": 20000}, "procedural_city of 20000x20000 px at 1 m/px: estimated peak memory"),
        ({"size_m": 20000, "max_memory_gb": 1e4, "max_building_height_m": 1.0}, "max_building_height_m"),
        ({"points_per_m2": 1e6}, "16x16 px at 1 m/px: estimated peak memory [0-9.]+ GB exceeds"),
        ({"max_memory_gb": 1e-6}, "exceeds max_memory_gb"),
        ({"max_memory_gb": float("nan")}, "max_memory_gb must be a finite number"),
        ({"palette_seed": 1.5}, "palette_seed must be an integer"),
    ],
)
def test_bad_input(kw, match):
    args = dict(seed=0, size_m=16)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        procedural_city(**args)


def test_max_building_height_caps_every_building():
    kw = {"seed": 7, "size_m": 600.0, "meters_per_pixel": 2.0, "points_per_m2": 0.05, "height_scale": 0.75}
    free, capped = procedural_city(**kw), procedural_city(**kw, max_building_height_m=40.0)
    assert (free.height - free.ground).max() > 80
    assert (capped.height - capped.ground).max() <= 40 + 3  # rooftop units stand on the capped roofs
    np.testing.assert_array_equal(capped.semantic, free.semantic)


def test_palette_seed_repaints_the_same_city(scenes):
    city = scenes[1]
    repainted = procedural_city(1, 96, points_per_m2=1.5, palette_seed=11)
    for name in ("height", "semantic", "instance", "points", "normals", "point_classes"):
        np.testing.assert_array_equal(getattr(repainted, name), getattr(city, name), err_msg=name)
    roofs = city.point_classes == ROOF
    assert np.abs(repainted.colors[roofs] - city.colors[roofs]).mean() > 0.05
    assert np.abs(repainted.image - city.image).mean() > 0.01
    assert repainted.metadata["palette_seed"] == 11
    again = procedural_city(1, 96, points_per_m2=1.5, palette_seed=11)
    np.testing.assert_array_equal(again.colors, repainted.colors)


def test_noisy_height_map_statistics(scenes):
    h = scenes[0].height
    gray = noisy_height_map(scenes[0], seed=1)
    assert gray.dtype == np.uint8 and gray.shape == h.shape
    clean = height_to_gray(h)
    corr = np.corrcoef(gray.ravel().astype(float), clean.ravel().astype(float))[0, 1]
    assert corr > 0.8 and not np.array_equal(gray, clean)
    assert not np.array_equal(gray, noisy_height_map(h, seed=2))
    np.testing.assert_array_equal(gray, noisy_height_map(h, seed=1))
    back = height_from_gray(clean, float(h.min()), float(h.max()))
    assert np.abs(back - h).max() <= (h.max() - h.min()) / 255 / 2 + 1e-4


def test_height_map_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        noisy_height_map(np.array([[0.0, np.nan]]), seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        noisy_height_map(np.zeros((0, 3)), seed=0)
    with pytest.raises(ValueError, match="z_max >= z_min"):
        height_from_gray(np.zeros((2, 2), np.uint8), 5.0, 1.0)
    # a constant map has no height range: it maps to gray 0 (documented), noise aside
    assert (height_to_gray(np.full((3, 3), 7.0)) == 0).all()
