"""diffusers_city.metrics.layout: statistics of BEV layouts and distances between sets of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from diffusers_city.data import procedural_city
from diffusers_city.data.classes import GROUND, NUM_CLASSES, ROAD, ROOF, VEHICLE, WATER
from diffusers_city.metrics import LAYOUT_DISTANCE_METRICS, layout_distances, layout_statistics


def small_layout() -> tuple[np.ndarray, np.ndarray]:
    """6x6 map: a road along row 2 (a vehicle on it), a 2x2 roof above, a 1x3 roof below."""
    sem = np.full((6, 6), GROUND, dtype=np.uint8)
    hgt = np.zeros((6, 6), dtype=np.float32)
    sem[2] = ROAD
    sem[2, 3] = VEHICLE
    sem[0:2, 0:2] = ROOF
    hgt[0:2, 0:2] = [[1, 2], [3, 4]]
    sem[4, 2:5] = ROOF
    hgt[4, 2:5] = 5
    sem[5, 5] = WATER
    return sem, hgt


def test_statistics_of_a_known_layout():
    sem, hgt = small_layout()
    s = layout_statistics(sem, hgt, 2.0)
    expected = np.zeros(NUM_CLASSES)
    expected[[GROUND, ROAD, ROOF, VEHICLE, WATER]] = [22, 5, 7, 1, 1]
    np.testing.assert_allclose(s["class_fractions"], expected / 36)
    assert s["road_fraction"] == 5 / 36 and s["num_pixels"] == 36
    np.testing.assert_allclose(s["footprint_areas_m2"], [16.0, 12.0])  # 4 px and 3 px of 4 m² (raster order)
    np.testing.assert_allclose(s["building_heights_m"], [np.quantile([1, 2, 3, 4], 0.9), 5.0])
    # the vehicle on the road neither splits the road nor forms a block: two blocks, 12 px and 18 px
    np.testing.assert_allclose(s["block_areas_m2"], [48.0, 72.0])


def test_building_height_is_the_90th_percentile_of_each_footprint():
    rng = np.random.default_rng(0)
    sem = np.where(rng.random((40, 40)) < 0.5, ROOF, GROUND).astype(np.uint8)
    hgt = rng.uniform(0, 50, (40, 40)).astype(np.float32)
    labels, count = ndimage.label(sem == ROOF)
    expected = [np.quantile(hgt[labels == i].astype(np.float64), 0.9) for i in range(1, count + 1)]
    np.testing.assert_allclose(layout_statistics(sem, hgt, 1.0)["building_heights_m"], expected, rtol=1e-12)


def test_region_counts_only_inside_and_cuts_components():
    sem, hgt = small_layout()
    top = np.zeros(sem.shape, bool)
    top[:3] = True
    inside, cropped = layout_statistics(sem, hgt, 2.0, region=top), layout_statistics(sem[:3], hgt[:3], 2.0)
    for key in inside:
        np.testing.assert_array_equal(inside[key], cropped[key])
    assert inside["num_pixels"] == 18 and len(inside["footprint_areas_m2"]) == 1  # the lower roof is outside
    column = np.zeros(sem.shape, bool)
    column[:, 0] = True
    cut = layout_statistics(sem, hgt, 1.0, region=column)
    np.testing.assert_allclose(cut["footprint_areas_m2"], [2.0])  # the 2x2 roof cut to its first column
    np.testing.assert_allclose(cut["building_heights_m"], [np.quantile([1, 3], 0.9)])
    np.testing.assert_allclose(cut["block_areas_m2"], [2.0, 3.0])


def test_identical_sets_are_at_zero_and_perturbed_sets_are_not():
    cities = [procedural_city(s, size_m=96.0, with_points=False, with_image=False) for s in (7000, 7001)]
    stats = [layout_statistics(c.semantic, c.height, c.meters_per_pixel) for c in cities]
    assert set(layout_distances(stats, stats)) == set(LAYOUT_DISTANCE_METRICS)
    assert all(v == 0 for v in layout_distances(stats, stats).values())
    taller = [layout_statistics(c.semantic, c.height * 1.5, c.meters_per_pixel) for c in cities]
    d = layout_distances(stats, taller)
    assert d["building_height_w1"] > 1.0
    assert d["class_tv"] == d["footprint_log10_area_w1"] == d["block_log10_area_w1"] == d["road_fraction_abs"] == 0
    grown = []
    for c in cities:
        sem = c.semantic.copy()
        sem[ndimage.binary_dilation(sem == ROOF, iterations=2) & (sem != ROAD)] = ROOF
        grown.append(layout_statistics(sem, c.height, c.meters_per_pixel))
    d = layout_distances(stats, grown)
    assert d["footprint_log10_area_w1"] > 0.05 and d["class_tv"] > 0.01
    assert d["road_fraction_abs"] == 0  # roads untouched
    # a single dict is the set of one layout
    assert layout_distances(stats[0], [stats[0]]) == layout_distances([stats[0]], stats[0])


def test_another_procedural_sample_is_close_and_iid_pixels_are_far():
    def stats(seeds):
        return [
            layout_statistics(c.semantic, c.height, c.meters_per_pixel)
            for c in (procedural_city(s, size_m=128.0, with_points=False, with_image=False) for s in seeds)
        ]

    held_out, other = stats(range(7000, 7004)), stats(range(9000, 9004))
    freq = np.mean([s["class_fractions"] for s in held_out], 0)
    rng = np.random.default_rng(0)
    naive = [
        layout_statistics(rng.choice(NUM_CLASSES, size=(128, 128), p=freq).astype(np.uint8), rng.uniform(0, 60, (128, 128)), 1.0)
        for _ in range(4)
    ]
    good, bad = layout_distances(held_out, other), layout_distances(held_out, naive)
    assert all(math.isfinite(v) for v in good.values())
    assert good["footprint_log10_area_w1"] < 0.6 and good["block_log10_area_w1"] < 0.8
    # the same class histogram, no structure: tiny speckle components instead of buildings and blocks
    assert bad["class_tv"] < good["class_tv"]
    assert bad["footprint_log10_area_w1"] > 3 * good["footprint_log10_area_w1"]
    assert bad["block_log10_area_w1"] > 3 * good["block_log10_area_w1"]


def test_no_buildings_gives_nan_and_no_crash():
    sem, hgt = small_layout()
    empty = np.full_like(sem, GROUND)
    d = layout_distances(layout_statistics(sem, hgt, 1.0), layout_statistics(empty, hgt, 1.0))
    assert math.isnan(d["footprint_log10_area_w1"]) and math.isnan(d["building_height_w1"])
    assert math.isfinite(d["class_tv"]) and math.isfinite(d["block_log10_area_w1"])
    roads = layout_statistics(np.full_like(sem, ROAD), hgt, 1.0)
    assert len(roads["block_areas_m2"]) == 0
    assert math.isnan(layout_distances(roads, roads)["block_log10_area_w1"])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s, h, r: (s[:5], h, None), "shape"),
        (lambda s, h, r: (np.where(s == WATER, NUM_CLASSES, s), h, None), "outside the class table"),
        (lambda s, h, r: (s.astype(np.float32), h, None), "integer"),
        (lambda s, h, r: (s, np.where(s == ROOF, np.nan, h), None), "NaN"),
        (lambda s, h, r: (s, h, r[:3]), "region shape"),
        (lambda s, h, r: (s, h, r.astype(np.uint8)), "boolean"),
        (lambda s, h, r: (s, h, np.zeros_like(r)), "no pixels"),
    ],
)
def test_bad_layouts_are_refused(change, match):
    sem, hgt = small_layout()
    s, h, r = change(sem, hgt, np.ones(sem.shape, bool))
    with pytest.raises(ValueError, match=match):
        layout_statistics(s, h, 1.0, region=r)


def test_bad_scales_and_sets_are_refused():
    sem, hgt = small_layout()
    for mpp in (0.0, -1.0, float("nan"), "a"):
        with pytest.raises(ValueError, match="meters_per_pixel"):
            layout_statistics(sem, hgt, mpp)
    stats = layout_statistics(sem, hgt, 1.0)
    with pytest.raises(ValueError, match="empty list"):
        layout_distances([], stats)
    with pytest.raises(ValueError, match="missing"):
        layout_distances(stats, [{"class_fractions": stats["class_fractions"]}])
