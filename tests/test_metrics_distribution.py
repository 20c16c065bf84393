"""Distribution metrics: sliced Wasserstein and MMD against direct references, the feature
extractors by hand, and the case the metrics exist for: a per-class mean colour predictor
scores badly, the procedural generator's own other sample (another palette seed) well."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import wasserstein_distance

from diffusers_city.data.procedural import procedural_city
from diffusers_city.metrics import distribution as dist_module
from diffusers_city.metrics import (
    distribution_distances,
    instance_color_statistics,
    patch_statistics,
    rbf_mmd,
    sliced_wasserstein_distance,
)


def test_swd_is_exact_in_one_dimension():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 1)), rng.normal(size=(170, 1)) * 2 + 1
    assert sliced_wasserstein_distance(a, b, p=1) == pytest.approx(wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-9)
    c = rng.exponential(size=(300, 1))
    w2 = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(c[:, 0])) ** 2))
    assert sliced_wasserstein_distance(a, c, p=2) == pytest.approx(w2, rel=1e-9)


def test_swd_separates_shifted_sets_and_is_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 6)), rng.normal(size=(350, 6))
    assert sliced_wasserstein_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    same = sliced_wasserstein_distance(x, y, seed=3)
    shifted = sliced_wasserstein_distance(x, y + 0.5, seed=3)
    assert same < 0.2 < 0.4 < shifted
    assert sliced_wasserstein_distance(x, y, seed=3) == pytest.approx(same, rel=1e-12)
    assert sliced_wasserstein_distance(x, y, seed=4) != pytest.approx(same, rel=1e-6)
    with pytest.raises(ValueError, match="different feature sizes"):
        sliced_wasserstein_distance(x, y[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein_distance(np.full((3, 6), np.nan), y)


def _naive_mmd(x, y, sigma):
    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).mean()


def test_mmd_matches_direct_formula_and_median_bandwidth(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(45, 4)) + 0.3
    monkeypatch.setattr(dist_module, "_MMD_BLOCK_ROWS", 7)  # exercise the blocked kernel sums
    assert rbf_mmd(x, y, bandwidth=1.3) == pytest.approx(_naive_mmd(x, y, 1.3), rel=1e-9)
    d = np.sort(pdist(np.concatenate([x, y])))
    median = d[(len(d) - 1) // 2]  # the lower median, as torch.median takes it
    assert rbf_mmd(x, y) == pytest.approx(_naive_mmd(x, y, median), rel=1e-9)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 5)), rng.normal(size=(300, 5))
    same = rbf_mmd(x, y)
    assert abs(same) < 0.01
    assert rbf_mmd(x, y * 1.5) > 0.02
    assert rbf_mmd(x, y + 0.5) > 0.05
    with pytest.raises(ValueError, match="at least 2"):
        rbf_mmd(x[:1], y)
    with pytest.raises(ValueError, match="bandwidth"):
        rbf_mmd(x, y, bandwidth=0.0)


def test_instance_color_statistics_by_hand():
    colors = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    ids = np.array([[1, 1, 2], [2, 2, 0]])
    got = instance_color_statistics(colors, ids, min_pixels=1).numpy()
    one = colors.reshape(-1, 3)[[0, 1]]
    two = colors.reshape(-1, 3)[[2, 3, 4]]
    want = np.array([np.r_[one.mean(0), one.std(0)], np.r_[two.mean(0), two.std(0)]])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert instance_color_statistics(colors, ids, min_pixels=3).shape == (1, 6)  # instance 1 has 2 pixels
    assert instance_color_statistics(colors, ids, min_pixels=1, ignore_ids=()).shape == (3, 6)
    with pytest.raises(ValueError, match="instance_ids of shape"):
        instance_color_statistics(colors, ids[:, :2])
    with pytest.raises(ValueError, match="integers"):
        instance_color_statistics(colors, ids.astype(float))


def test_patch_statistics_by_hand():
    rng = np.random.default_rng(4)
    images = rng.random((2, 12, 20, 3))
    grid = patch_statistics(images, patch_size=4)
    assert grid.shape == (2 * 3 * 5, 9)
    patch = images[1, 4:8, 12:16]  # image 1, patch row 1, column 3
    dx, dy = np.diff(patch, axis=1), np.diff(patch, axis=0)
    want = np.r_[patch.mean((0, 1)), patch.std((0, 1)), (dx**2).mean((0, 1)) + (dy**2).mean((0, 1))]
    np.testing.assert_allclose(grid[15 + 5 + 3].numpy(), want, rtol=1e-12)
    flat = patch_statistics(np.full((16, 16, 3), 0.4), patch_size=8)
    np.testing.assert_allclose(flat[:, 3:].numpy(), 0.0, atol=1e-12)
    random = patch_statistics(images, patch_size=5, n_patches=11, seed=2)
    assert random.shape == (11, 9)
    torch.testing.assert_close(random, patch_statistics(images, patch_size=5, n_patches=11, seed=2))
    with pytest.raises(ValueError, match="patch_size"):
        patch_statistics(images, patch_size=13)


def _city(seed, **kwargs):
    return procedural_city(seed, size_m=128, with_points=False, **kwargs)


def test_per_class_mean_loses_to_the_perfect_sampler_on_distribution_metrics():
    """The perfect sampler (the same city painted from another palette seed) is close to the
    city's true colours in distribution, per instance and per patch; a per-class mean colour
    (over other cities) has no per-instance variation and flat patches, and is far."""
    others = [_city(s) for s in (0, 1)]
    city = _city(2)
    perfect = _city(2, palette_seed=7)
    class_mean = np.zeros((8, 3), np.float32)
    for c in range(8):
        pixels = np.concatenate([r.image[r.semantic == c] for r in others])
        class_mean[c] = pixels.mean(0) if len(pixels) else 0
    mean_image = class_mean[city.semantic]
    for feats in (lambda img: instance_color_statistics(img, city.instance), patch_statistics):
        ref = feats(city.image)
        good = distribution_distances(feats(perfect.image), ref)
        bad = distribution_distances(feats(mean_image), ref)
        assert good["swd"] < 0.8 * bad["swd"], (good, bad)
        assert good["mmd"] < 0.5 * bad["mmd"], (good, bad)
    # against other cities too: another sample is the closer distribution
    ref = torch.cat([instance_color_statistics(r.image, r.instance) for r in others])
    good = distribution_distances(instance_color_statistics(perfect.image, city.instance), ref)
    bad = distribution_distances(instance_color_statistics(mean_image, city.instance), ref)
    assert good["swd"] < 0.5 * bad["swd"] and good["mmd"] < 0.2 * bad["mmd"], (good, bad)


def test_distribution_distances_standardize_by_the_reference():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(200, 2)) * [1.0, 1000.0]
    gen = ref + [0.0, 500.0]  # a half-sigma shift in the large-unit feature
    raw = distribution_distances(gen, ref, standardize=False)
    std = distribution_distances(gen, ref)
    assert raw["swd"] > 100 and 0.1 < std["swd"] < 1.0
