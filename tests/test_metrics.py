"""Metrics cross-checked against independent references: scipy's cKDTree (Chamfer),
scipy's linear_sum_assignment and POT (EMD), scikit-image (SSIM)."""

import numpy as np
import ot
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from skimage.metrics import structural_similarity

from diffusers_city.metrics import (
    chamfer_distance,
    coverage_mmd,
    earth_movers_distance,
    height_fidelity,
    nearest_neighbor_distances,
    psnr,
    ssim,
    voxel_iou,
)


@pytest.fixture
def clouds():
    rng = np.random.default_rng(0)
    a = rng.random((700, 3)) * [50, 40, 10] + [636000.0, 849000.0, 120.0]
    b = rng.normal(size=(500, 3)) * [10, 10, 3] + [636025.0, 849020.0, 125.0]
    return a, b


def _kdtree_chamfer(a, b, squared):
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    if squared:
        da, db = da**2, db**2
    return da.mean() + db.mean()


@pytest.mark.parametrize("squared", [True, False])
def test_chamfer_matches_kdtree(clouds, squared):
    a, b = clouds
    ref = _kdtree_chamfer(a, b, squared)
    # tiny chunks exercise the blocked loops in both directions
    got = chamfer_distance(a, b, squared=squared, chunk_size=64)
    assert got == pytest.approx(ref, rel=1e-9)
    assert chamfer_distance(a, b, squared=squared, reduction="mean") == pytest.approx(ref / 2, rel=1e-9)


def test_chamfer_float32_torch_and_identity(clouds):
    a, b = clouds
    a32 = torch.from_numpy(a - a.mean(0)).float()
    b32 = torch.from_numpy(b - a.mean(0)).float()
    ref = _kdtree_chamfer(a - a.mean(0), b - a.mean(0), True)
    assert chamfer_distance(a32, b32) == pytest.approx(ref, rel=1e-4)
    assert chamfer_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    nn = nearest_neighbor_distances(b, a).numpy()
    np.testing.assert_allclose(nn, cKDTree(a).query(b)[0], rtol=1e-9)


def test_emd_exact_matches_pot():
    rng = np.random.default_rng(1)
    a, b = rng.random((300, 3)), rng.normal(size=(300, 3)) * 0.3
    w = np.full(300, 1 / 300)
    pot = ot.emd2(w, w, cdist(a, b))
    assert earth_movers_distance(a, b, method="exact") == pytest.approx(pot, rel=1e-9)
    assert earth_movers_distance(a, a) == 0.0


def test_emd_approximation_error_against_exact():
    rng = np.random.default_rng(2)
    n = 1200
    a = rng.random((n, 3))
    b = rng.normal(size=(n, 3)) * [1, 1, 0.2] + [0.5, 0.5, 0]
    exact = earth_movers_distance(a, b, method="exact")
    approx = earth_movers_distance(a, b, method="approx")
    rel = approx / exact - 1
    print(f"EMD exact {exact:.6f} approx {approx:.6f} relative error {rel:.2e}")
    assert -1e-12 <= rel < 0.01  # an upper bound (a real bijection), within 1%
    # the Hilbert-curve start alone is far worse: the refinement does the work
    start = earth_movers_distance(a, b, method="approx", max_rounds=0)
    assert start / exact - 1 > 0.1


def test_emd_auto_switches_and_rejects_unequal():
    rng = np.random.default_rng(3)
    a, b = rng.random((40, 3)), rng.random((40, 3))
    assert earth_movers_distance(a, b) == earth_movers_distance(a, b, method="exact")
    with pytest.raises(ValueError, match="equal-size"):
        earth_movers_distance(a, b[:30])


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((0, 3)), "no points"),
        (np.full((4, 3), np.nan), "NaN or inf"),
        (np.zeros((4, 2)), "shape"),
        (np.array([["a", "b", "c"]]), "numeric"),
    ],
)
def test_point_inputs_rejected(bad, msg):
    good = np.zeros((4, 3))
    with pytest.raises(ValueError, match=msg):
        chamfer_distance(bad, good)
    with pytest.raises(ValueError, match=msg):
        earth_movers_distance(good, bad)


def test_coverage_mmd_protocol():
    rng = np.random.default_rng(4)
    shapes = [rng.random((300, 3)) * s for s in ([1, 1, 1], [1, 1, 0.1], [0.1, 1, 1])]
    # generated == reference: MMD 0 and full coverage
    same = coverage_mmd(shapes, shapes, n_points=64, normalize=False)
    assert same["mmd_cd"] < 0.05 and same["cov_cd"] == 1.0 and same["cov_emd"] == 1.0
    # mode collapse: every sample is the first shape -> coverage 1/3 and larger MMD
    collapsed = coverage_mmd([shapes[0]] * 3, shapes, n_points=64, normalize=False)
    assert collapsed["cov_cd"] == pytest.approx(1 / 3) and collapsed["cov_emd"] == pytest.approx(1 / 3)
    assert collapsed["mmd_cd"] > same["mmd_cd"] and collapsed["mmd_emd"] > same["mmd_emd"]
    with pytest.raises(ValueError, match="metrics"):
        coverage_mmd(shapes, shapes, metrics=("fid",))


def test_psnr_and_ssim_match_skimage():
    rng = np.random.default_rng(5)
    target = rng.random((2, 40, 48, 3))
    pred = np.clip(target + rng.normal(scale=0.1, size=target.shape), 0, 1)
    mse = ((pred - target) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(pred, target, reduction="none").numpy(), 10 * np.log10(1 / mse))
    ours = ssim(pred, target, reduction="none").numpy()
    ref = [
        structural_similarity(
            p, t, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for p, t in zip(pred, target)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-7)
    gray = ssim(pred[0, ..., 0], target[0, ..., 0])
    assert gray == pytest.approx(
        structural_similarity(
            pred[0, ..., 0], target[0, ..., 0], data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(pred, target[:, :30])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(pred[:, :8, :8], target[:, :8, :8])


def test_height_fidelity():
    rng = np.random.default_rng(6)
    hm = rng.random((20, 30)) * 30
    origin = (500.0, 1000.0, 50.0)
    i, j = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    pts = np.stack([origin[0] + (j + 0.5) * 2.0, origin[1] + (i + 0.5) * 2.0, origin[2] + hm], -1).reshape(-1, 3)
    perfect = height_fidelity(pts, hm, 2.0, origin)
    assert perfect["rmse"] < 1e-9 and perfect["pearson"] == pytest.approx(1.0) and perfect["coverage"] == 1.0
    shifted = pts + [0, 0, 2.0]
    off = height_fidelity(shifted[: len(pts) // 2], hm, 2.0, origin)
    assert off["rmse"] == pytest.approx(2.0) and off["coverage"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        height_fidelity(pts, np.where(hm > 29, np.nan, hm), 2.0, origin)
    with pytest.raises(ValueError, match="no point"):
        height_fidelity(pts - [1e4, 0, 0], hm, 2.0, origin)


def test_voxel_iou_counts_cells_and_can_fail():
    a = np.array([[0, 0, 0], [1, 2, 3], [1, 2, 3]])  # a duplicate counts once
    b = np.array([[1, 2, 3], [3, 3, 3]])
    out = voxel_iou(a, b, 4)
    assert (out["intersection"], out["union"], out["pred"], out["target"]) == (1, 3, 2, 2)
    assert out["iou"] == pytest.approx(1 / 3) and out["accuracy"] == pytest.approx(62 / 64)
    same = voxel_iou(torch.from_numpy(b), b, 4)
    assert same["iou"] == 1.0 and same["accuracy"] == 1.0
    disjoint = voxel_iou(a[:1], b, 4)
    assert disjoint["iou"] == 0.0 and disjoint["accuracy"] == pytest.approx(61 / 64)
    cells = voxel_iou(np.array([[0, 1], [2, 2]]), np.array([[0, 1]]), 3)  # raster cells on a 3 x 3 grid
    assert cells["iou"] == 0.5 and cells["accuracy"] == pytest.approx(8 / 9)
    empty = np.zeros((0, 3), np.int64)
    assert voxel_iou(empty, empty, 4)["iou"] == 1.0 and voxel_iou(empty, b, 4)["iou"] == 0.0


@pytest.mark.parametrize(
    ("pred", "grid", "msg"),
    [
        (np.array([[0, 0, 4]]), 4, "outside the grid"),
        (np.array([[0, -1, 0]]), 4, "outside the grid"),
        (np.array([[0.5, 0, 0]]), 4, "integer cell coordinates"),
        (np.array([0, 0, 0]), 4, r"\[N, D\]"),
        (np.array([[0, 0]]), 4, "differ in dimensions"),
        (np.array([[0, 0, 0]]), 0, "grid must be"),
    ],
)
def test_voxel_iou_rejects_bad_cells(pred, grid, msg):
    with pytest.raises(ValueError, match=msg):
        voxel_iou(pred, np.array([[1, 1, 1]]), grid)
