"""Cameras (OpenCV convention) and the orbit / drone / street trajectories."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusers_city.render import Cameras, drone_trajectory, intrinsics, orbit_trajectory, street_trajectory


def _scene(with_roads: bool = True) -> SimpleNamespace:
    """48 x 64 px city at 2 m/px: a road cross plus a diagonal road, four tall blocks."""
    h, w = 48, 64
    semantic = np.zeros((h, w), dtype=np.int64)
    height = np.zeros((h, w), dtype=np.float32)
    if with_roads:
        semantic[22:26, :] = 1
        semantic[:, 30:34] = 1
        for k in range(40):
            semantic[4 + k // 2, 4 + k] = 1  # 8-connected diagonal stair
    for i0, j0, z in ((2, 40, 30.0), (30, 4, 12.0), (30, 40, 25.0), (2, 12, 18.0)):
        block = (slice(i0, i0 + 14), slice(j0, j0 + 14))
        free = semantic[block] == 0
        semantic[block][free] = 3
        height[block][free] = z
    height += 1.0  # ground at 1 m
    return SimpleNamespace(height=height, semantic=semantic, meters_per_pixel=2.0, origin=(100.0, 200.0, 5.0))


def test_projection_of_known_points():
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 80.0, 24.0], [0.0, 0.0, 1.0]])
    cams = Cameras(K=K[None], world_to_cam=torch.eye(4)[None], width=64, height=48)
    uv, depth = cams.project(torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 2.0]]))
    assert torch.allclose(uv[0], torch.tensor([[57.0, 64.0], [32.0, 24.0]]))
    assert torch.allclose(depth[0], torch.tensor([4.0, 2.0]))


def test_look_at_orthonormal_and_oriented():
    eye = torch.tensor([[3.0, -4.0, 5.0], [0.0, 0.0, 10.0], [-2.0, 7.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # second one looks straight down
    cams = Cameras.look_at(eye, target, width=64, height=48, fov_deg=60.0)
    R = cams.world_to_cam[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3), atol=1e-5)
    assert torch.allclose(cams.centers, eye, atol=1e-4)
    uv, depth = cams.project(target[:1])
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 24.0]), atol=1e-3)
    assert torch.allclose(depth[0, 0], (eye[0] - target[0]).norm(), atol=1e-4)
    # world up is image up (smaller row); with the camera looking along +x, world -y is image right
    side = Cameras.look_at([0.0, 0.0, 0.0], [10.0, 0.0, 0.0], width=64, height=48)
    uv, _ = side.project(torch.tensor([[10.0, 0.0, 1.0], [10.0, -1.0, 0.0]]))
    assert uv[0, 0, 1] < 24.0 and uv[0, 1, 0] > 32.0
    assert torch.isclose(side.K[0, 1, 1], torch.tensor(0.5 * 48 / np.tan(np.radians(30.0)), dtype=torch.float32))


def test_camera_bad_input():
    K = intrinsics(64, 48, focal=50.0)[None]
    with pytest.raises(ValueError, match="image size"):
        Cameras(K=K, world_to_cam=torch.eye(4)[None], width=0, height=48)
    with pytest.raises(ValueError, match="focal"):
        Cameras(K=K * torch.tensor([[-1.0, 1, 1], [1, 1, 1], [1, 1, 1]]), world_to_cam=torch.eye(4)[None], width=64, height=48)
    with pytest.raises(ValueError, match="NaN"):
        Cameras(K=K, world_to_cam=torch.full((1, 4, 4), float("nan")), width=64, height=48)
    with pytest.raises(ValueError, match=r"\[C, 4, 4\]"):
        Cameras(K=K, world_to_cam=torch.eye(3)[None], width=64, height=48)
    with pytest.raises(ValueError, match="focal"):
        intrinsics(64, 48, focal=0.0)
    with pytest.raises(ValueError, match="coincide"):
        Cameras.look_at([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], width=8, height=8)


def _inside(xy: np.ndarray, scene) -> bool:
    h, w = scene.height.shape
    x0, y0 = scene.origin[:2]
    mpp = scene.meters_per_pixel
    return bool(((xy[:, 0] >= x0) & (xy[:, 0] <= x0 + w * mpp) & (xy[:, 1] >= y0) & (xy[:, 1] <= y0 + h * mpp)).all())


def test_orbit_inside_extent_above_buildings_and_looking_at_centre():
    scene = _scene()
    cams = orbit_trajectory(scene, 12, width=32, height=24)
    c = cams.centers.numpy()
    assert len(cams) == 12 and _inside(c[:, :2], scene)
    assert (c[:, 2] > scene.origin[2] + scene.height.max()).all()
    centre = torch.tensor([[100.0 + 64.0, 200.0 + 48.0, 5.0 + 1.0]])
    uv, depth = cams.project(centre)
    assert torch.allclose(uv, torch.tensor([16.0, 12.0]).expand_as(uv), atol=1e-2) and (depth > 0).all()


def test_drone_smooth_above_max_height_and_deterministic():
    scene = _scene()
    cams = drone_trajectory(scene, 40, seed=3, width=32, height=24)
    c = cams.centers.numpy()
    assert _inside(c[:, :2], scene)
    assert (c[:, 2] > scene.origin[2] + scene.height.max()).all()
    steps = np.linalg.norm(np.diff(np.concatenate([c, c[:1]]), axis=0), axis=-1)
    assert steps.max() < 3.0 * steps.mean()  # smooth closed loop, no jumps
    forward = cams.world_to_cam[:, 2, :3]
    assert (forward[:, 2] < 0).all()  # looking down
    again = drone_trajectory(scene, 40, seed=3, width=32, height=24)
    other = drone_trajectory(scene, 40, seed=4, width=32, height=24)
    assert torch.equal(cams.world_to_cam, again.world_to_cam)
    assert not torch.allclose(cams.world_to_cam, other.world_to_cam)


def test_street_cameras_on_roads_at_eye_height():
    scene = _scene()
    for seed in range(3):
        cams = street_trajectory(scene, 25, seed=seed, eye_height=1.8, width=32, height=24)
        c = cams.centers.numpy()
        assert _inside(c[:, :2], scene)
        j = np.floor((c[:, 0] - 100.0) / 2.0).astype(int)
        i = np.floor((c[:, 1] - 200.0) / 2.0).astype(int)
        assert (scene.semantic[i, j] == 1).all()  # on road pixels, so never inside a building
        assert np.allclose(c[:, 2], 5.0 + scene.height[i, j] + 1.8, atol=1e-3)
        forward = cams.world_to_cam[:, 2, :3]
        assert torch.allclose(forward[:, 2], torch.zeros(25), atol=1e-5)  # horizontal view
        assert np.linalg.norm(c[-1, :2] - c[0, :2]) > 10.0  # actually travels
    a = street_trajectory(scene, 10, seed=1, width=32, height=24)
    b = street_trajectory(scene, 10, seed=1, width=32, height=24)
    assert torch.equal(a.world_to_cam, b.world_to_cam)
    with pytest.raises(ValueError, match="road"):
        street_trajectory(_scene(with_roads=False), 10)
    with pytest.raises(ValueError, match="n_frames"):
        orbit_trajectory(scene, 0)
