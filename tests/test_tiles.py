"""Voxel tiles: voxelisation, ground-truth views, per-voxel view features, the tile dataset."""

import numpy as np
import pytest
import torch

from diffusers_city.data import (
    FEATURE_CHANNELS,
    ROAD,
    ROOF,
    RenderedViews,
    VoxelTileDataset,
    aggregate_view_features,
    render_views,
    voxelize_surface,
)
from diffusers_city.render import Cameras, aerial_trajectory, render_points

TINY = dict(resolution=16, voxel_size=4.0, n_views=3, view_size=24)


@pytest.fixture(scope="module")
def dataset():
    return VoxelTileDataset(1, tiles_per_scene=2, base_seed=5, **TINY)


@pytest.fixture(scope="module")
def sample(dataset):
    return dataset[1]


def _plane_and_box():
    """A red ground plane at z = 5 m under a blue 10 m box top at z = 30 m, 0.5 m point spacing."""
    plane = np.mgrid[0:64:0.5, 0:64:0.5].reshape(2, -1).T
    box = np.mgrid[20:32:0.5, 20:32:0.5].reshape(2, -1).T
    points = np.r_[np.c_[plane, np.full(len(plane), 5.0)], np.c_[box, np.full(len(box), 30.0)]]
    colors = np.r_[np.tile([1.0, 0.0, 0.0], (len(plane), 1)), np.tile([0.0, 0.0, 1.0], (len(box), 1))]
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    return points, normals, colors


def test_sample_shapes(sample):
    L = TINY["resolution"]
    voxels = sample["voxels"]
    assert voxels.voxel_size == 4.0 and voxels.origin == (2.0, 2.0, 2.0) and voxels.batch_size == 1
    xyz = voxels.coords[:, 1:]
    assert voxels.num_voxels > L * L // 2 and int(xyz.min()) >= 0 and int(xyz.max()) < L
    assert sample["features"].shape == (voxels.num_voxels, FEATURE_CHANNELS)
    assert sample["semantic"].shape == (L, L) and sample["semantic"].dtype == torch.int64
    assert sample["image"].shape == (3, 2 * L, 2 * L) and 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["views"].shape == (3, 24, 24, 3) and sample["depth"].shape == (3, 24, 24)
    assert len(sample["cameras"]) == 3 and sample["alpha"].mean() > 0.5
    feats = sample["features"]
    assert torch.allclose(feats[:, 6:9].norm(dim=1), torch.ones(voxels.num_voxels), atol=1e-4)
    assert (feats[:, 9] >= 0).all() and (feats[:, 9] <= 1).all() and (feats[:, 9] > 0).float().mean() > 0.3


def test_deterministic_per_seed_and_index(dataset, sample):
    again = VoxelTileDataset(1, tiles_per_scene=2, base_seed=5, **TINY)[1]
    for key in ("features", "semantic", "image", "views", "depth", "origin"):
        assert torch.equal(sample[key], again[key]), key
    assert torch.equal(sample["voxels"].coords, again["voxels"].coords)
    other = dataset[0]
    assert not torch.equal(other["origin"], sample["origin"])
    other_seed = VoxelTileDataset(1, tiles_per_scene=2, base_seed=6, **TINY)[1]
    assert not torch.equal(other_seed["semantic"], sample["semantic"])


def test_structure_only_tiles_match_and_collate(sample):
    """``with_views=False``: the same voxels and rasters, no views, features or cameras."""
    bare = VoxelTileDataset(1, tiles_per_scene=2, base_seed=5, with_views=False, **TINY)[1]
    assert not {"views", "depth", "alpha", "cameras", "features"} & set(bare)
    assert torch.equal(bare["voxels"].coords, sample["voxels"].coords)
    assert torch.equal(bare["voxels"].feats, sample["voxels"].feats)
    for key in ("semantic", "image", "origin"):
        assert torch.equal(bare[key], sample[key]), key
    batch = VoxelTileDataset.collate([bare, bare])
    assert batch["voxels"].batch_size == 2 and batch["semantic"].shape[0] == 2 and "views" not in batch
    with pytest.raises(ValueError, match="differ"):
        VoxelTileDataset.collate([bare, sample])


def test_voxels_align_with_semantic_map(dataset, sample):
    """Roof cells hold voxels whose top matches the raster height; roofs stand above roads."""
    _, scene, r0, c0 = dataset.window(1)
    L, v = TINY["resolution"], TINY["voxel_size"]
    tile = scene.crop(r0, c0, L, L)
    top_local = tile.height + tile.origin[2] - float(sample["origin"][2])
    expected = np.floor(top_local / v).astype(int)
    coords = sample["voxels"].coords[:, 1:].numpy()
    top = np.full((L, L), -1)
    np.maximum.at(top, (coords[:, 1], coords[:, 0]), coords[:, 2])  # [row = y, col = x]
    semantic = sample["semantic"].numpy()
    roof = semantic == ROOF
    assert roof.sum() >= 8 and (semantic == ROAD).sum() >= 8
    assert (top[roof] >= 0).all()
    assert np.abs(top[roof] - expected[roof]).max() <= 1
    assert top[roof].mean() >= top[semantic == ROAD].mean() + 1


def test_seen_voxel_takes_the_view_colour():
    points, normals, colors = _plane_and_box()
    voxels = voxelize_surface(points, normals, colors, 16, 4.0, origin=(2.0, 2.0, 2.0))
    scene_like = type("S", (), {"height": np.full((16, 16), 5.0), "meters_per_pixel": 4.0, "origin": (0.0, 0.0, 0.0)})
    cameras = aerial_trajectory(scene_like, 1, nadir=1, width=48, height=48)
    views = render_views(points, colors, cameras, radius=0.5)
    feats = aggregate_view_features(voxels, views).feats
    xyz = voxels.coords[:, 1:]
    box_top = xyz[:, 2] == 7
    under_box = (xyz[:, 2] == 1) & (xyz[:, :2] >= 6).all(1) & (xyz[:, :2] <= 6).all(1)
    assert under_box.sum() == 1 and box_top.sum() > 0
    open_ground = (xyz[:, 2] == 1) & ((xyz[:, :2] <= 2) | (xyz[:, :2] >= 11)).any(1)
    assert torch.equal(feats[box_top, :3], torch.tensor([[0.0, 0.0, 1.0]]).expand(int(box_top.sum()), 3))
    assert torch.equal(feats[open_ground, :3], torch.tensor([[1.0, 0.0, 0.0]]).expand(int(open_ground.sum()), 3))
    assert (feats[box_top | open_ground, 9] == 1).all() and (feats[:, 3:6] == 0).all()
    assert feats[under_box, 9].item() == 0 and (feats[under_box, :3] == 0).all()  # occluded: depth test


def test_colour_statistics_over_views():
    """Two views of different colours: mean and std of what each voxel saw."""
    points, normals, colors = _plane_and_box()
    voxels = voxelize_surface(points, normals, colors, 16, 4.0, origin=(2.0, 2.0, 2.0))
    scene_like = type("S", (), {"height": np.full((16, 16), 5.0), "meters_per_pixel": 4.0, "origin": (0.0, 0.0, 0.0)})
    cameras = aerial_trajectory(scene_like, 2, nadir=2, width=48, height=48)
    views = render_views(points, colors, cameras, radius=0.5)
    views.images[1] = 0.5  # second view: grey everywhere
    feats = aggregate_view_features(voxels, views).feats
    seen = feats[:, 9] == 1
    box_top = seen & (voxels.coords[:, 3] == 7)
    assert box_top.any()
    assert torch.allclose(feats[box_top, :3], torch.tensor([0.25, 0.25, 0.75]).expand(int(box_top.sum()), 3))
    assert torch.allclose(feats[box_top, 3:6], torch.tensor([0.25, 0.25, 0.25]).expand(int(box_top.sum()), 3))


def test_collate_batches_sparse_tensors(dataset, sample):
    first = dataset[0]
    batch = VoxelTileDataset.collate([first, sample])
    voxels, features = batch["voxels"], batch["features"]
    assert voxels.batch_size == 2 and features.num_channels == FEATURE_CHANNELS
    assert torch.equal(voxels.coords, features.coords)
    n0 = first["voxels"].num_voxels
    assert (voxels.coords[:n0, 0] == 0).all() and (voxels.coords[n0:, 0] == 1).all()
    assert torch.equal(features.feats[n0:], sample["features"])
    assert batch["semantic"].shape == (2, 16, 16) and batch["views"].shape == (2, 3, 24, 24, 3)
    assert batch["image"].shape == (2, 3, 32, 32) and len(batch["cameras"]) == 2


def test_nadir_camera_looks_down_at_the_centre():
    scene_like = type("S", (), {"height": np.zeros((16, 16)), "meters_per_pixel": 4.0, "origin": (10.0, 20.0, 3.0)})
    cams = aerial_trajectory(scene_like, 3, seed=1, nadir=1, width=32, height=32)
    uv, depth = cams.project(torch.tensor([[42.0, 52.0, 3.0]]))
    assert torch.allclose(uv[:, 0], torch.tensor([16.0, 16.0]).expand(3, 2), atol=1e-3) and (depth > 0).all()
    assert torch.allclose(cams.centers[0, :2], torch.tensor([42.0, 52.0]), atol=1e-4)
    assert torch.equal(
        aerial_trajectory(scene_like, 3, seed=1).world_to_cam, aerial_trajectory(scene_like, 3, seed=1).world_to_cam
    )


def test_bad_input_raises(sample):
    points, normals, colors = _plane_and_box()
    with pytest.raises(ValueError, match="resolution"):
        voxelize_surface(points, normals, colors, 0, 4.0, origin=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="no point falls inside"):
        voxelize_surface(points + 1000.0, normals, colors, 16, 4.0, origin=(2.0, 2.0, 2.0))
    views = RenderedViews(sample["views"], sample["depth"], sample["alpha"], sample["cameras"])
    with pytest.raises(ValueError, match="one tile"):
        aggregate_view_features(VoxelTileDataset.collate([sample, sample])["voxels"], views)
    with pytest.raises(ValueError, match="depth must be"):
        RenderedViews(sample["views"], sample["depth"][:1], sample["alpha"], sample["cameras"])
    with pytest.raises(ValueError, match="RenderedViews"):
        aggregate_view_features(sample["voxels"], sample["views"])
    cams = Cameras.look_at([0.0, 0.0, 10.0], [0.0, 0.0, 0.0], width=8, height=8)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        render_points(torch.zeros(4, 2), torch.zeros(4, 3), cams, radius=1.0)
    with pytest.raises(ValueError, match="image_size"):
        VoxelTileDataset(1, resolution=16, image_size=24)
    with pytest.raises(ValueError, match="nadir"):
        aerial_trajectory(type("S", (), {"height": np.zeros((4, 4)), "meters_per_pixel": 1.0})(), 2, nadir=3)
