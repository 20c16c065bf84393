"""Crop datasets: determinism, caching, collation."""

import pytest
import torch

from diffusers_city.data import CameraViewDataset, CityScene, VoxelCropDataset

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


def test_cache_dir_round_trip(tmp_path):
    cached = VoxelCropDataset(1, crops_per_scene=1, cache_dir=tmp_path / "cache", **SMALL)
    first = cached[0]
    saved = list((tmp_path / "cache").iterdir())
    assert len(saved) == 1 and CityScene.load(saved[0]).shape == (64, 64)
    again = VoxelCropDataset(1, crops_per_scene=1, cache_dir=tmp_path / "cache", **SMALL)
    _equal(first, again[0])


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
