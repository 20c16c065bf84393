"""The pure-torch 3DGS / 2DGS reference rasterizer (gsplat 1.5.3 conventions)."""

import math

import numpy as np
import pytest
import torch

from diffusers_city.render import Cameras, Gaussians, render_gaussians
from diffusers_city.render.rasterize_torch import project_3dgs

W, H, F = 64, 48, 100.0


def _camera(width: int = W, height: int = H) -> Cameras:
    """At the origin looking along +z (world = camera frame)."""
    K = torch.tensor([[F, 0.0, width / 2], [0.0, F, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(K=K[None], world_to_cam=torch.eye(4)[None], width=width, height=height)


def _gaussians(means, scales, opacities, colors, quats=None) -> Gaussians:
    means = torch.tensor(means, dtype=torch.float32)
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n) if quats is None else torch.tensor(quats, dtype=torch.float32)
    return Gaussians(
        means,
        quats,
        torch.tensor(scales, dtype=torch.float32),
        torch.tensor(opacities, dtype=torch.float32),
        torch.tensor(colors, dtype=torch.float32),
    )


def _random(n: int, seed: int = 0, spread: float = 1.0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * spread + torch.tensor([0.0, 0.0, 5.0])
    return Gaussians(
        means,
        torch.randn(n, 4, generator=gen),
        torch.rand(n, 3, generator=gen) * 0.3 + 0.02,
        torch.rand(n, generator=gen),
        torch.rand(n, 3, generator=gen),
    )


def test_single_gaussian_matches_analytic_footprint():
    x, y, z, s, o = 0.125, -0.025, 5.0, 0.1, 0.8  # projects to pixel centre (col 34, row 23)
    g = _gaussians([[x, y, z]], [[s, s, s]], [o], [[1.0, 0.5, 0.25]])
    out = render_gaussians(g, _camera(), backend="torch")
    J = np.array([[F / z, 0, -F * x / z**2], [0, F / z, -F * y / z**2]])
    cov = J @ (s * s * np.eye(3)) @ J.T + 0.3 * np.eye(2)
    conic = np.linalg.inv(cov)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d = np.stack([jj - (F * x / z + W / 2), ii - (F * y / z + H / 2)], -1)
    alpha = np.minimum(0.999, o * np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", d, conic, d)))
    alpha[alpha < 1 / 255] = 0.0
    got = out.alpha[0, ..., 0].numpy()
    assert np.unravel_index(got.argmax(), got.shape) == (23, 34)
    assert np.abs(got - alpha).max() < 1e-5
    assert np.abs(out.rgb[0].numpy() - alpha[..., None] * np.array([1.0, 0.5, 0.25])).max() < 1e-5
    assert np.allclose(out.depth[0, ..., 0].numpy()[alpha > 0], z, atol=1e-4)
    assert (out.depth[0, ..., 0].numpy()[alpha == 0] == 0).all()


def test_front_gaussian_occludes_regardless_of_index_order():
    front = ([0.0, 0.0, 3.0], [0.3, 0.3, 0.3], 0.99, [1.0, 0.0, 0.0])
    back = ([0.0, 0.0, 6.0], [0.6, 0.6, 0.6], 0.99, [0.0, 0.0, 1.0])
    for order in ((front, back), (back, front)):
        g = _gaussians(*[list(v) for v in zip(*order)])
        out = render_gaussians(g, _camera(), backend="torch")
        centre = out.rgb[0, H // 2, W // 2]
        assert centre[0] > 0.95 and centre[2] < 0.05
        assert abs(out.depth[0, H // 2, W // 2, 0].item() - 3.0) < 0.05


def test_alpha_and_transmittance_limits():
    n = 50  # a stack of opaque splats: compositing stops before T <= 1e-4
    g = _gaussians([[0.0, 0.0, 3.0 + 0.05 * k] for k in range(n)], [[0.5] * 3] * n, [0.99] * n, [[0.2, 0.4, 0.6]] * n)
    out = render_gaussians(g, _camera(), backend="torch", background=[1.0, 1.0, 1.0])
    a = out.alpha[0, H // 2, W // 2, 0].item()
    assert 0.99 < a < 1.0 - 1e-4  # saturates, but the splat reaching T <= 1e-4 is excluded
    assert (out.alpha >= 0).all() and (out.alpha <= 1).all()
    # rgb = sum w c + T bg stays in the convex hull of colours and background
    assert (out.rgb >= 0.2 - 1e-5).all() and (out.rgb <= 1.0 + 1e-5).all()
    # centre pixel is nearly the splat colour: exactly two splats deep (0.99 each) is enough
    assert torch.allclose(out.rgb[0, H // 2, W // 2], torch.tensor([0.2, 0.4, 0.6]), atol=2e-3)


def test_camera_looking_away_renders_background():
    g = _random(30)
    cams = Cameras.look_at([0.0, 0.0, 0.0], [0.0, 0.0, -5.0], up=(0.0, 1.0, 0.0), width=32, height=24)
    out = render_gaussians(g, cams, backend="torch", background=[0.1, 0.2, 0.3])
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    assert torch.allclose(out.rgb, torch.tensor([0.1, 0.2, 0.3]).expand(1, 24, 32, 3))
    empty = render_gaussians(g[:0], _camera(), mode="2dgs", backend="torch")
    assert empty.rgb.shape == (1, H, W, 3) and empty.alpha.max() == 0 and empty.normal.shape == (1, H, W, 3)


def _sequential_reference(g: Gaussians, cams: Cameras) -> np.ndarray:
    """Per-pixel loop over depth-sorted splats with gsplat's rules (skip, early stop)."""
    p = project_3dgs(g, cams.world_to_cam[0], cams.K[0], cams.width, cams.height, 0.3, 0.01, 1e10)
    idx = [i for i in torch.argsort(p["depths"], stable=True).tolist() if (p["radii"][i] > 0).all()]
    img = np.zeros((cams.height, cams.width, 4))
    for r in range(cams.height):
        for c in range(cams.width):
            T, acc = 1.0, np.zeros(3)
            for i in idx:
                dx, dy = p["means2d"][i, 0].item() - c - 0.5, p["means2d"][i, 1].item() - r - 0.5
                a_, b_, c_ = p["conics"][i].tolist()
                sigma = 0.5 * (a_ * dx * dx + c_ * dy * dy) + b_ * dx * dy
                alpha = min(0.999, g.opacities[i].item() * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                acc += g.colors[i].numpy() * alpha * T
                T *= 1 - alpha
            img[r, c, :3], img[r, c, 3] = acc, 1 - T
    return img


def test_vectorised_compositing_matches_sequential_loop():
    g = _random(40, seed=1, spread=0.6)
    g.opacities = torch.where(torch.arange(40) % 3 == 0, torch.full((40,), 0.995), g.opacities)
    cams = _camera(20, 18)
    cams.K[0, :2] *= 0.3
    cams.K[0, 0, 2], cams.K[0, 1, 2] = 10.0, 9.0
    ref = _sequential_reference(g, cams)
    out = render_gaussians(g, cams, backend="torch", max_chunk_elements=600)  # many small chunks
    assert np.abs(out.rgb[0].numpy() - ref[..., :3]).max() < 1e-4
    assert np.abs(out.alpha[0, ..., 0].numpy() - ref[..., 3]).max() < 1e-4


def _two_orders_rtol(n_roundings: int) -> float:
    """Relative distance bound of two float32 evaluations of a sum of non-negative products.

    Any order of a K-term dot product returns ``S (1 + theta)`` with ``|theta| <= gamma_K =
    K u / (1 - K u)``, ``u = 2^-24`` (Higham, Accuracy and Stability of Numerical Algorithms,
    Sec. 3.1; fused multiply-adds only drop roundings). Two orders differ by at most
    ``2 gamma_K S <= 2 gamma_K / (1 - gamma_K) |a|`` relative to either result ``a``.
    """
    gamma = n_roundings * 2.0**-24 / (1 - n_roundings * 2.0**-24)
    return 2 * gamma / (1 - gamma)


def test_chunking_does_not_change_the_image():
    """Chunks of 1-7 splats against chunks of 32, 64, ...: the exponents, alphas, skips, stops
    and the transmittance are the same bits (rasterize_torch's docstring), so alpha is equal;
    rgb (black background) and depth are the weighted sums ``sum_k w_k f_k`` (``f >= 0``) of
    a tile's splats, summed by BLAS in chunk-sized pieces, so they may differ by the rounding
    of two summation orders: K <= len(g) terms, and one rounding more for depth (the division
    by alpha). (Before, each chunk size took another BLAS kernel for the exponents, and 2DGS
    rgb moved by 2e-5 on an AMD EPYC.)"""
    g = _random(400, seed=2)
    cams = Cameras.look_at([0.5, -6.0, 3.0], [0.0, 0.0, 5.0], width=40, height=30)
    for mode in ("3dgs", "2dgs"):
        a = render_gaussians(g, cams, mode=mode, backend="torch")
        b = render_gaussians(g, cams, mode=mode, backend="torch", max_chunk_elements=2000)
        assert torch.equal(a.alpha, b.alpha), mode
        assert a.alpha.max() > 0.9 and (a.alpha == 0).any()  # opaque and empty pixels both occur
        torch.testing.assert_close(b.rgb, a.rgb, rtol=_two_orders_rtol(len(g)), atol=0.0, msg=mode)
        torch.testing.assert_close(b.depth, a.depth, rtol=_two_orders_rtol(len(g) + 1), atol=0.0, msg=mode)


@pytest.mark.parametrize("mode", ["3dgs", "2dgs"])
def test_gradients_flow(mode):
    g = _random(60, seed=3)
    for name in ("means", "scales", "quats", "opacities", "colors"):
        getattr(g, name).requires_grad_(True)
    out = render_gaussians(g, _camera(32, 24), mode=mode, backend="torch", background=[0.5, 0.5, 0.5])
    (out.rgb.square().sum() + out.depth.mean() + out.alpha.sum()).backward()
    for name in ("means", "scales", "quats", "opacities", "colors"):
        grad = getattr(g, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_2dgs_facing_splat_is_a_disk_at_plane_depth():
    s, z, o = 0.2, 4.0, 0.9
    g = _gaussians([[0.0, 0.0, z]], [[s, s, 0.0]], [o], [[0.3, 0.6, 0.9]])
    out = render_gaussians(g, _camera(), mode="2dgs", backend="torch")
    jj, ii = np.meshgrid(np.arange(W) + 0.5 - W / 2, np.arange(H) + 0.5 - H / 2)
    d2 = jj**2 + ii**2
    # ray-splat hit at u = (pixel offset) z / (f s); the low-pass term 2 d^2 is larger here
    sigma = 0.5 * np.minimum(d2 * (z / (F * s)) ** 2, 2.0 * d2)
    alpha = np.minimum(0.999, o * np.exp(-sigma))
    alpha[alpha < 1 / 255] = 0.0
    got = out.alpha[0, ..., 0].numpy()
    assert np.abs(got - alpha).max() < 1e-5
    assert np.abs(got - got[::-1, ::-1]).max() < 1e-6  # point-symmetric about the projected centre
    assert abs(got[24, 41] - got[14, 32]) < 1e-6 and got[24, 41] > 0.01  # offsets (9.5, 0.5) and (0.5, -9.5): round
    assert np.allclose(out.depth[0, ..., 0].numpy()[got > 0], z, atol=1e-5)
    n = out.normal[0][got > 0.1] / out.alpha[0][got > 0.1]
    assert torch.allclose(n, torch.tensor([0.0, 0.0, -1.0]).expand_as(n), atol=1e-5)  # faces the camera


def test_bad_input_raises():
    ok = dict(
        means=torch.zeros(2, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]] * 2),
        scales=torch.ones(2, 3),
        opacities=torch.ones(2),
        colors=torch.ones(2, 3),
    )
    for name, bad in (
        ("means", torch.zeros(2, 2)),
        ("quats", torch.zeros(2, 3)),
        ("scales", torch.ones(3, 3)),
        ("opacities", torch.ones(2, 1)),
        ("colors", torch.ones(2, 4)),
    ):
        with pytest.raises(ValueError, match=name):
            Gaussians(**{**ok, name: bad})
    with pytest.raises(ValueError, match="NaN"):
        Gaussians(**{**ok, "means": torch.tensor([[0.0, float("nan"), 0.0]] * 2)})
    with pytest.raises(ValueError, match="scales"):
        Gaussians(**{**ok, "scales": -torch.ones(2, 3)})
    with pytest.raises(ValueError, match="zero quaternion"):
        Gaussians(**{**ok, "quats": torch.zeros(2, 4)})
    g = Gaussians(**ok)
    with pytest.raises(ValueError, match="mode"):
        render_gaussians(g, _camera(), mode="4dgs")
    with pytest.raises(ValueError, match="gsplat"):
        render_gaussians(g, _camera(), backend="gsplat")
    with pytest.raises(ValueError, match="background"):
        render_gaussians(g, _camera(), background=[1.0, 0.0])


def test_from_points_orients_surfels_to_normals():
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.6, 0.8]])
    g = Gaussians.from_points(torch.zeros(4, 3), torch.ones(4, 3), scale=0.5, normals=normals)
    from diffusers_city.render.rasterize_torch import quat_to_rotmat

    assert torch.allclose(quat_to_rotmat(g.quats)[:, :, 2], normals, atol=1e-6)
    assert torch.allclose(g.scales, torch.full((4, 3), 0.5)) and torch.allclose(g.opacities, torch.ones(4))


def test_gsplat_backend_is_built_by_one_process_at_a_time(tmp_path):
    """gsplat deletes its build folder before a first build, so processes that first import its
    CUDA extension at once (DDP ranks, test workers) must do it in turn: a stand-in backend that
    takes 3 s to import, imported by two processes started together, never runs twice at once."""
    import os
    import subprocess
    import sys
    import textwrap

    fake = tmp_path / "site" / "gsplat" / "cuda"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    log = tmp_path / "imports.log"
    (fake / "_backend.py").write_text(
        textwrap.dedent(f"""
        import time
        with open({str(log)!r}, "a") as f:
            f.write("start\\n")
        time.sleep(3)
        with open({str(log)!r}, "a") as f:
            f.write("end\\n")
    """)
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fake.parent.parent), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(tmp_path),
    }
    code = "from diffusers_city.render.rasterize_gsplat import load_gsplat_backend as f; f(); f()"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert log.read_text().split() == ["start", "end", "start", "end"]
