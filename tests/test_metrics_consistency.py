"""View consistency: a sequence rendered exactly (a textured ground plane, ray-cast with the
package's camera convention) scores near 0, per-frame colour noise scores worse, and an
occluder only leaves the score alone when the depth test drops the points it hides."""

import numpy as np
import pytest
import torch

from diffusers_city.metrics import view_consistency
from diffusers_city.render import Cameras

WIDTH, HEIGHT = 96, 64


def _texture(xy):
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([0.5 + 0.3 * np.sin(x / 15), 0.5 + 0.3 * np.cos(y / 12), 0.5 + 0.2 * np.sin((x + y) / 20)], -1)


def _render_plane(cameras: Cameras):
    """Colours and camera-z depth of the textured plane z = 0 at every pixel centre."""
    jj, ii = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    pix = np.stack([jj, ii, np.ones_like(jj)], -1)  # [H, W, 3]
    frames, depths = [], []
    for k in range(len(cameras)):
        K = cameras.K[k].double().numpy()
        w2c = cameras.world_to_cam[k].double().numpy()
        ray_cam = pix @ np.linalg.inv(K).T  # camera-frame rays with z = 1
        ray = ray_cam @ w2c[:3, :3]  # to world: R^T d
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        t = -centre[2] / ray[..., 2]  # the plane hit; t is the camera z since ray_cam z = 1
        assert (t > 0).all()
        frames.append(_texture(centre[:2] + t[..., None] * ray[..., :2]))
        depths.append(t)
    return np.stack(frames), np.stack(depths)


@pytest.fixture
def sequence():
    eyes = [(-10.0 + 2.0 * k, -40.0 + k, 25.0) for k in range(6)]
    targets = [(e[0], e[1] + 40.0, 0.0) for e in eyes]
    cameras = Cameras.look_at(eyes, targets, width=WIDTH, height=HEIGHT, fov_deg=60.0)
    gx, gy = np.meshgrid(np.arange(-40.0, 40.0, 1.0), np.arange(-30.0, 60.0, 1.0))
    points = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
    frames, depths = _render_plane(cameras)
    return frames, depths, cameras, points


def test_stable_sequence_scores_near_zero_and_noise_scores_worse(sequence):
    frames, depths, cameras, points = sequence
    stable = view_consistency(frames, cameras, points, depths=depths)
    assert 0.2 < stable["shared_fraction"] < 1.0
    assert stable["flicker"] < 0.015  # what is left: nearest-pixel sampling of a smooth texture
    torch.testing.assert_close(stable["per_pair"], torch.full((5,), stable["flicker"], dtype=torch.float64), atol=2e-3, rtol=0)
    rng = np.random.default_rng(0)
    noisy = view_consistency(frames + rng.normal(0, 0.05, frames.shape), cameras, points, depths=depths)
    assert noisy["flicker"] > 0.04  # E|n1 - n2| of sigma 0.05 noise is 0.056
    assert noisy["flicker"] > 4 * stable["flicker"]
    # the projection must follow the renderer's convention (y down): upside-down frames read other pixels
    upside_down = view_consistency(np.ascontiguousarray(frames[:, ::-1]), cameras, points)
    assert upside_down["flicker"] > 2 * stable["flicker"]


def test_depth_test_drops_occluded_points(sequence):
    clear_frames, clear_depths, cameras, points = sequence
    clear = view_consistency(clear_frames, cameras, points, depths=clear_depths)
    frames, depths = clear_frames.copy(), clear_depths.copy()
    frames[3, 20:44, 30:70] = (1.0, 0.0, 0.0)  # an occluder halfway to the ground
    depths[3, 20:44, 30:70] *= 0.5
    with_depth = view_consistency(frames, cameras, points, depths=depths)
    without = view_consistency(frames, cameras, points)
    assert with_depth["flicker"] < 0.015
    assert with_depth["shared_fraction"] < clear["shared_fraction"]
    assert without["flicker"] > 3 * with_depth["flicker"]


def test_inputs_are_checked(sequence):
    frames, depths, cameras, points = sequence
    with pytest.raises(ValueError, match="at least 2 frames"):
        view_consistency(frames[:1], cameras[0], points)
    with pytest.raises(ValueError, match="must match the frames"):
        view_consistency(frames, cameras[:3], points)
    with pytest.raises(ValueError, match="depths must be"):
        view_consistency(frames, cameras, points, depths=depths[:, :10])
    with pytest.raises(ValueError, match="points"):
        view_consistency(frames, cameras, points[:, :2])
    as_numpy = view_consistency(frames, cameras, points, depths=depths)["flicker"]
    as_torch = view_consistency(torch.from_numpy(frames), cameras, points, depths=torch.from_numpy(depths)[..., None])
    assert as_torch["flicker"] == pytest.approx(as_numpy, rel=1e-9)
