"""Crop datasets: determinism, caching, collation."""

import hashlib

import numpy as np
import pytest
import torch

from diffusers_city.data import CameraViewDataset, CityScene, VoxelCropDataset
from diffusers_city.data.convert import splat_normals
from diffusers_city.data.datasets import SceneSource

SMALL = dict(crop_size_px=32, scene_size_m=64, points_per_m2=1.0)


def _equal(a, b):
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_voxel_dataset_deterministic_and_collates(tmp_path):
    ds = VoxelCropDataset(2, crops_per_scene=2, base_seed=7, max_points=500, **SMALL)
    assert len(ds) == 4
    s3 = ds[3]
    fresh = VoxelCropDataset(2, crops_per_scene=2, base_seed=7, max_points=500, **SMALL)
    _equal(s3, fresh[3])
    assert not torch.equal(ds[0]["height"], s3["height"])
    assert s3["points"].shape == (500, 3) and s3["height"].shape == (1, 32, 32) and s3["image"].shape == (3, 32, 32)
    assert 0 <= s3["height_noisy"].min() and s3["height_noisy"].max() <= 1
    # voxels cover the points (local frame, origin (v/2, v/2, v/2))
    nearest = torch.floor(s3["points"] / 1.0).long()
    occ = {tuple(c) for c in s3["coords"].tolist()}
    assert all(tuple(c) in occ for c in nearest.tolist())
    batch = VoxelCropDataset.collate([ds[0], s3])
    assert batch["voxels"].batch_size == 2 and batch["voxels"].feats.shape[1] == 3
    assert batch["points_batch"].max() == 1 and batch["height"].shape == (2, 1, 32, 32)


def test_palette_seed_offset_repaints_the_same_crops(tmp_path):
    args = dict(num_scenes=1, crops_per_scene=2, base_seed=7, max_points=500, **SMALL)
    plain, other = VoxelCropDataset(**args)[1], VoxelCropDataset(palette_seed_offset=12345, **args)[1]
    for key in ("coords", "normals", "points", "point_classes", "height", "height_noisy", "semantic", "origin"):
        assert torch.equal(plain[key], other[key]), key
    assert (plain["colors"] - other["colors"]).abs().mean() > 0.01
    with pytest.raises(ValueError, match="palette_seed_offset"):
        VoxelCropDataset(palette_seed_offset=1.5, **args)
    # a repainted cache entry is not the plain one
    VoxelCropDataset(cache_dir=tmp_path / "c", **args)[0]
    VoxelCropDataset(cache_dir=tmp_path / "c", palette_seed_offset=12345, **args)[0]
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_cache_dir_round_trip(tmp_path):
    cached = VoxelCropDataset(1, crops_per_scene=1, cache_dir=tmp_path / "cache", **SMALL)
    first = cached[0]
    saved = list((tmp_path / "cache").iterdir())
    assert len(saved) == 1 and CityScene.load(saved[0]).shape == (64, 64)
    again = VoxelCropDataset(1, crops_per_scene=1, cache_dir=tmp_path / "cache", **SMALL)
    _equal(first, again[0])
    # other generator arguments, same seed and cache: a scene of their own, not the cached one
    larger = SceneSource(0, scene_size_m=96.0, points_per_m2=1.0, cache_dir=tmp_path / "cache")
    assert larger(0).shape == (96, 96) and len(list((tmp_path / "cache").iterdir())) == 2


def test_camera_dataset():
    ds = CameraViewDataset(1, crops_per_scene=3, n_views=2, width=16, height=12, trajectory="mixed", **SMALL)
    item = ds[1]
    assert isinstance(item["scene"], CityScene) and item["scene"].shape == (32, 32)
    cams = item["cameras"]
    assert cams.world_to_cam.shape == (2, 4, 4) and cams.K.shape == (2, 3, 3)
    again = CameraViewDataset(1, crops_per_scene=3, n_views=2, width=16, height=12, trajectory="mixed", **SMALL)[1]
    assert torch.equal(again["cameras"].world_to_cam, cams.world_to_cam)
    assert len(CameraViewDataset.collate([item, item])["scene"]) == 2


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(crop_size_px=128), "exceeds"),
        (dict(voxel_size=0), "voxel_size"),
        (dict(meters_per_pixel=-1), "meters_per_pixel"),
        (dict(style={"nope": 1}), "unknown style"),
    ],
)
def test_bad_input(kw, match):
    args = {**SMALL, **kw}
    with pytest.raises(ValueError, match=match):
        VoxelCropDataset(1, **args)
    with pytest.raises(ValueError, match="trajectory"):
        CameraViewDataset(1, trajectory="spiral", **SMALL)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        VoxelCropDataset(1, crops_per_scene=1, **SMALL)[1]


# SHA-256 prefixes of every field of three samples, recorded with the code before the loader
# was optimised (the dense splat table, per-scene point cells, in-place hashing): any change of
# a value, dtype or shape, however small, fails.
GOLDEN = {
    0: {
        "colors": "float32[400, 3]:a5e3ff33c148341e",
        "coords": "int64[298, 3]:9a3364f283f28da4",
        "height": "float32[1, 24, 24]:ae8e07bf1960e812",
        "height_noisy": "float32[1, 24, 24]:96d51e0334b10212",
        "image": "float32[3, 24, 24]:2942b194620efe15",
        "index": "0",
        "normals": "float32[298, 3]:c7d96e1b14f01620",
        "origin": "float64[3]:e9c607400051a1dd",
        "point_classes": "int64[400]:dd09641561a201bb",
        "points": "float32[400, 3]:8abf42bf74876852",
        "semantic": "int64[24, 24]:a5bf1bcdb110b2fc",
        "voxel_size": "1.5",
        "z_max": "23.346513748168945",
        "z_min": "1.4177980422973633",
    },
    2: {
        "colors": "float32[400, 3]:208e7a01b5eadcea",
        "coords": "int64[434, 3]:d6a469437b534e41",
        "height": "float32[1, 24, 24]:fc83b1148d387776",
        "height_noisy": "float32[1, 24, 24]:1e0fac4e0ae1f48a",
        "image": "float32[3, 24, 24]:48378d700fd90f7f",
        "index": "2",
        "normals": "float32[434, 3]:515097276b929c03",
        "origin": "float64[3]:77ee51fa5ac9ab5c",
        "point_classes": "int64[400]:959ecf6499f75c4d",
        "points": "float32[400, 3]:174ae2765b3e1a6a",
        "semantic": "int64[24, 24]:64212fd13b7d29b4",
        "voxel_size": "1.5",
        "z_max": "23.346513748168945",
        "z_min": "1.4177980422973633",
    },
    4: {
        "colors": "float32[400, 3]:f4b7d12e820164ab",
        "coords": "int64[321, 3]:b142b5dc631b3775",
        "height": "float32[1, 24, 24]:46f4183b43fec4d4",
        "height_noisy": "float32[1, 24, 24]:7584aa28a82ee37e",
        "image": "float32[3, 24, 24]:52e3ce18e2e4c46b",
        "index": "4",
        "normals": "float32[321, 3]:cb63e040318ff16b",
        "origin": "float64[3]:61338e3d4cccbfe6",
        "point_classes": "int64[400]:7f61fe9cf834f1c7",
        "points": "float32[400, 3]:1023c534702bdd50",
        "semantic": "int64[24, 24]:6e800d80755828f2",
        "voxel_size": "1.5",
        "z_max": "9.111597537994385",
        "z_min": "0.48892223834991455",
    },
}


def _digest(sample):
    out = {}
    for key, value in sample.items():
        if isinstance(value, torch.Tensor):
            arr = np.ascontiguousarray(value.numpy())
            out[key] = f"{arr.dtype}{list(arr.shape)}:" + hashlib.sha256(arr.tobytes()).hexdigest()[:16]
        else:
            out[key] = repr(value)
    return out


def test_voxel_dataset_bit_identical_to_recorded_samples():
    ds = VoxelCropDataset(
        2,
        crops_per_scene=3,
        crop_size_px=24,
        scene_size_m=48,
        meters_per_pixel=1.0,
        points_per_m2=2.0,
        voxel_size=1.5,
        base_seed=11,
        max_points=400,
    )
    for index in (4, 0, 2, 4):  # out of order: the per-scene state must follow the scene
        assert _digest(ds[index]) == GOLDEN[index], index


def test_splat_normals_sparse_fallback_matches_dense_table():
    """A far outlier makes the key range too large for the dense table; the voxels of the
    cluster must come out bit-identical to splatting the cluster alone (dense path)."""
    rng = np.random.default_rng(0)
    cluster = rng.uniform(0, 20, (3000, 3))
    normals = rng.normal(size=(3000, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    dense = splat_normals(cluster, normals, 1.0, origin=(0.5, 0.5, 0.5))
    far = splat_normals(np.r_[cluster, [[5e4, 0.0, 0.0]]], np.r_[normals, [[0.0, 0.0, 1.0]]], 1.0, origin=(0.5, 0.5, 0.5))
    assert far["coords"].shape[0] == dense["coords"].shape[0] + 1
    for key in ("coords", "normals", "counts"):
        np.testing.assert_array_equal(far[key][:-1], dense[key])
    np.testing.assert_array_equal(far["coords"][-1], [50000, 0, 0])
