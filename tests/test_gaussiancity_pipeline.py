"""GaussianCityPipeline: rendering, determinism, styles, save/load, Hub round trip, bad input."""

import numpy as np
import pytest
import torch
from pipeline_contract import PipelineContract

from diffusers_city import GaussianCityPipeline
from diffusers_city.data.classes import GROUND, ROAD, ROOF, VEGETATION
from diffusers_city.pipelines.gaussiancity.pipeline_gaussiancity import SKY
from diffusers_city.render import Cameras


def _maps(size=48):
    sem = np.full((size, size), ROAD)
    hgt = np.zeros((size, size))
    sem[::12] = GROUND
    sem[30:40, 2:12] = VEGETATION
    for r, c, h in [(4, 4, 12), (4, 24, 20), (20, 14, 8), (34, 30, 16)]:
        sem[r : r + 8, c : c + 8] = ROOF
        hgt[r : r + 8, c : c + 8] = h
    return sem, hgt


@pytest.fixture(scope="module")
def pipe():
    return GaussianCityPipeline.from_preset("tiny", seed=0)


def _run(pipe, **kw):
    sem, hgt = _maps()
    args = dict(trajectory="orbit", num_frames=2, width=32, height=24, output_type="np")
    args.update(kw)
    return pipe(sem, hgt, **args)


def test_frames_determinism_and_progress(pipe):
    a = _run(pipe, generator=torch.Generator().manual_seed(1))
    b = _run(pipe, generator=torch.Generator().manual_seed(1))
    c = _run(pipe, generator=torch.Generator().manual_seed(2))
    assert a.images.shape == (2, 24, 32, 3)
    assert np.array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images)
    assert a.styles.shape == (4 + 1, pipe.style_dim)
    assert a.layout.num_instances == 4
    assert a.images.std() > 0.01
    pil = _run(pipe, output_type="pil", styles=a.styles)
    assert pil.images[0].size == (32, 24)
    assert np.allclose(np.asarray(pil.images[0]) / 255.0, a.images[0], atol=1 / 255 + 1e-6)


def test_style_edit_changes_only_that_building(pipe):
    sem, hgt = _maps()
    cam = Cameras.look_at(torch.tensor([24.0, 24.0, 90.0]), torch.tensor([24.0, 24.0, 0.0]), width=48, height=48, focal=40.0)
    base = pipe(sem, hgt, cameras=cam, generator=torch.Generator().manual_seed(0), output_type="np", return_gaussians="visible")
    styles = base.styles
    edited = pipe.edit_style(styles, 2, torch.randn(pipe.style_dim, generator=torch.Generator().manual_seed(5)))
    out = pipe(sem, hgt, cameras=cam, styles=edited, output_type="np", return_gaussians="visible")
    g0, g1 = base.gaussians[0], out.gaussians[0]
    assert torch.equal(g0.means, g1.means)
    changed = (g0.colors - g1.colors).abs().amax(1) > 1e-6
    inst = out.layout.instance
    # Building 2 covers rows 4..11, columns 24..31: every changed Gaussian lies on it.
    xy = g0.means[changed][:, :2]
    assert changed.any()
    assert bool(((xy[:, 0] >= 24) & (xy[:, 0] <= 32) & (xy[:, 1] >= 4) & (xy[:, 1] <= 12)).all())
    assert int(inst[6, 26]) == 2
    row = pipe.interpolate_styles(out.layout, styles, torch.zeros(pipe.style_dim), torch.ones(pipe.style_dim))
    centres = out.layout.instance_centers()[1:, 0]
    order = torch.argsort(centres)
    means = row[1:][order].mean(1)
    assert torch.all(means[1:] >= means[:-1]) and float(means[0]) == 0.0 and float(means[-1]) == 1.0


def test_callback_and_layout_gaussians_ply(pipe, tmp_path):
    seen = []

    def cb(p, i, t, kwargs):
        seen.append(i)
        return {"image": torch.zeros_like(kwargs["image"])}

    out = _run(pipe, callback_on_step_end=cb, return_gaussians="layout")
    assert seen == [0, 1] and float(np.abs(out.images).max()) == 0.0
    g = out.gaussians
    sem, hgt = _maps()
    only = pipe(sem, hgt, output_type="gaussians", styles=out.styles)
    assert only.images is None and len(only.gaussians) == len(g)
    assert bool((g.opacities == 1).all()) and float(g.colors.min()) >= 0 and float(g.colors.max()) <= 1
    from plyfile import PlyData

    from diffusers_city.export.splat import write_gaussian_ply

    path = write_gaussian_ply(
        tmp_path / "city.ply", g.means.numpy(), g.colors.numpy(), g.scales.numpy(), g.opacities.numpy(), g.quats.numpy()
    )
    vertex = PlyData.read(str(path))["vertex"]
    assert vertex.count == len(g) and np.allclose(vertex["x"], g.means[:, 0].numpy())


GEO = (809_000.0, 6_304_000.0, 120.0)  # the world origin of a real classified point cloud


def _world_camera(cam, shift):
    """``cam`` moved by ``shift`` metres, in float64 as georeferenced cameras need."""
    to_local = torch.eye(4, dtype=torch.float64)
    to_local[:3, 3] = -torch.tensor(shift, dtype=torch.float64)
    return Cameras(cam.K.double(), cam.world_to_cam.double() @ to_local, cam.width, cam.height)


def test_a_georeferenced_layout_renders_as_at_origin_0_and_returns_world_gaussians(pipe):
    """The decoders see the layout frame: a layout moved to a georeferenced origin, seen from
    cameras moved with it (or along its own trajectory), gives the frames of the layout at origin 0,
    and its Gaussians come back at their world positions (float64 means: exact to the mm)."""
    sem, hgt = _maps()
    cam = Cameras.look_at(torch.tensor([60.0, -10.0, 40.0]), torch.tensor([24.0, 24.0, 0.0]), width=32, height=24, focal=20.0)
    base = pipe(sem, hgt, cameras=cam, generator=torch.Generator().manual_seed(3), output_type="np", return_gaussians="visible")
    geo = pipe(
        sem, hgt, origin=GEO, cameras=_world_camera(cam, GEO), styles=base.styles, output_type="np", return_gaussians="visible"
    )
    assert base.images.std() > 0.01
    np.testing.assert_allclose(geo.images, base.images, atol=1e-4)
    g0, g1 = base.gaussians[0], geo.gaussians[0]
    assert g1.means.dtype == torch.float64 and len(g1) == len(g0) > 100
    shift = torch.tensor(GEO, dtype=torch.float64)
    assert torch.allclose(g1.means - shift, g0.means.double(), atol=1e-6)
    assert torch.allclose(g1.colors, g0.colors, atol=1e-5) and torch.equal(g1.scales, g0.scales)
    orbit, geo_orbit = (
        _run(pipe, styles=base.styles, return_gaussians="layout"),
        _run(pipe, styles=base.styles, origin=GEO, return_gaussians="layout"),
    )
    np.testing.assert_allclose(geo_orbit.images, orbit.images, atol=1e-4)
    assert torch.allclose(geo_orbit.gaussians.means - shift, orbit.gaussians.means.double(), atol=1e-6)


def test_cameras_looking_away_give_empty_frames_and_a_warning(pipe, caplog):
    sem, hgt = _maps()
    away = Cameras.look_at(torch.tensor([24.0, 24.0, 50.0]), torch.tensor([24.0, 24.0, 100.0]), width=16, height=12)
    down = Cameras.look_at(torch.tensor([24.0, 24.0, 50.0]), torch.tensor([24.0, 25.0, 0.0]), width=16, height=12)
    with caplog.at_level("WARNING", logger="diffusers_city"):
        out = pipe(sem, hgt, cameras=Cameras.cat([down, away]), output_type="np", background=(0.2, 0.4, 0.6))
    assert np.allclose(out.images[1], np.array([0.2, 0.4, 0.6]), atol=1e-6)
    assert not np.allclose(out.images[0], np.array([0.2, 0.4, 0.6]), atol=1e-2)
    assert [r.getMessage()[:51] for r in caplog.records] == ["1 of 2 cameras see no part of the layout (frames 1)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffusers_city"):
        pipe(sem, hgt, cameras=down, output_type="np")
    assert not caplog.records


def test_the_default_background_is_the_sky_of_the_demo(pipe):
    """Frames from the CLI, the README and the demo (none passes ``background``) get one sky, not black."""
    sem, hgt = _maps()
    away = Cameras.look_at(torch.tensor([24.0, 24.0, 50.0]), torch.tensor([24.0, 24.0, 100.0]), width=16, height=12)
    assert np.allclose(pipe(sem, hgt, cameras=away, output_type="np").images[0], np.array(SKY), atol=1e-6)
    assert np.allclose(pipe(sem, hgt, cameras=away, output_type="np", background=None).images[0], 0.0, atol=1e-6)


def test_a_huge_layout_is_refused_with_its_estimate_before_any_allocation(pipe, monkeypatch):
    """A 20000^2 layout (broadcast views: no memory behind them) is refused by its estimate, before
    the maps are converted (the conversion would allocate 3.2 GB for the semantic map alone)."""
    huge = np.broadcast_to(np.int64(0), (20000, 20000))
    monkeypatch.setattr(
        "diffusers_city.pipelines.gaussiancity.pipeline_gaussiancity.BEVLayout.from_maps",
        lambda *a, **k: pytest.fail("the layout was built"),
    )
    with pytest.raises(ValueError, match="a 20000x20000 px layout: estimated peak memory [0-9.]+ GB exceeds max_memory_gb"):
        pipe(huge, huge, output_type="gaussians", max_memory_gb=16)
    assert pipe.estimate_memory_bytes((20000, 20000)) > 16e9
    small = pipe.estimate_memory_bytes((48, 48), 2, 32, 24)
    assert pipe.estimate_memory_bytes((48, 48), 20, 32, 24) > small and pipe.estimate_memory_bytes((96, 96), 2, 32, 24) > small


def _fit_views(width=32, height=24):
    """Two views of ``_maps``' layout from above and one looking away (it shows nothing)."""
    eye = [torch.tensor([8.0, 40.0, 60.0]), torch.tensor([40.0, 8.0, 60.0]), torch.tensor([24.0, 24.0, 50.0])]
    at = [torch.tensor([24.0, 24.0, 0.0]), torch.tensor([24.0, 24.0, 0.0]), torch.tensor([24.0, 24.0, 100.0])]
    return Cameras.cat([Cameras.look_at(e, a, width=width, height=height, focal=30.0) for e, a in zip(eye, at)])


def test_fit_styles_finds_codes_that_reproduce_views(pipe):
    """Views rendered with one style table are matched by fitting another one to them: the
    render error falls far below that of the start, the start table is not modified and no
    decoder weight gets a gradient."""
    sem, hgt = _maps()
    layout = pipe.prepare_layout(sem, hgt)
    cams = _fit_views()
    truth = pipe.sample_styles(layout, torch.Generator().manual_seed(3))
    targets = pipe(sem, hgt, cameras=cams, styles=truth, output_type="pt").images
    start = pipe.sample_styles(layout, torch.Generator().manual_seed(4))
    kept = start.clone()
    fitted = pipe.fit_styles(layout, cams, targets, styles=start, num_steps=40, learning_rate=0.1)

    def error(styles):
        return float((pipe(sem, hgt, cameras=cams, styles=styles, output_type="pt").images - targets).square().mean())

    assert fitted.shape == start.shape and torch.equal(start, kept)
    assert error(fitted) < 0.2 * error(start), (error(fitted), error(start))
    components = (pipe.scene_encoder, pipe.background_decoder, pipe.building_decoder)
    assert all(p.grad is None for c in components for p in c.parameters())
    # masks: pixels outside them do not count (an all-wrong target there changes nothing)
    masks = torch.zeros(targets.shape[:3], dtype=torch.bool)
    masks[:, :12] = True
    spoiled = torch.where(masks[..., None], targets, 1 - targets)
    same = pipe.fit_styles(layout, cams, spoiled, masks, styles=start, num_steps=3)
    assert torch.allclose(same, pipe.fit_styles(layout, cams, targets, masks, styles=start, num_steps=3))
    with pytest.raises(ValueError, match="no camera sees the layout"):
        pipe.fit_styles(layout, cams[2:], targets[2:], styles=start, num_steps=1)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"images": torch.zeros(3, 24, 32)}, "images must have shape"),
        ({"images": torch.zeros(2, 24, 32, 3)}, "images must have shape"),
        ({"images": torch.full((3, 24, 32, 3), float("nan"))}, "NaN"),
        ({"images": torch.full((3, 24, 32, 3), 2.0)}, "must lie in \\[0, 1\\]"),
        ({"masks": torch.ones(3, 24, 32)}, "masks must be a bool"),
        ({"masks": torch.zeros(3, 24, 32, dtype=torch.bool)}, "masks cover no pixel"),
        ({"styles": torch.zeros(3, 32)}, "styles must have shape"),
        ({"num_steps": 0}, "num_steps must be a positive int"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ],
)
def test_fit_styles_bad_input_raises_before_work(pipe, change, match):
    sem, hgt = _maps()
    args = {"layout": pipe.prepare_layout(sem, hgt), "cameras": _fit_views(), "images": torch.zeros(3, 24, 32, 3)}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        pipe.fit_styles(**args)


class TestGaussianCityPipelineContract(PipelineContract):
    pipeline_class = GaussianCityPipeline
    output_types = ("pil", "np", "pt", "gaussians")
    callback_tensor_inputs = ("image",)
    work_component = "scene_encoder"
    bad_inputs = (
        (dict(height_map=np.zeros((48, 40))), "differ in size"),
        (dict(semantic_map=np.full((48, 48), 11)), "unknown class ids"),
        (dict(height_map=np.full((48, 48), np.nan)), "NaN"),
        (dict(width=0), "width must be a positive int"),
        (dict(styles=torch.zeros(5, 7)), "styles must have shape"),
        (dict(styles=torch.zeros(3, 32)), "num_instances \\+ 1"),
        (dict(trajectory="spiral"), "trajectory must be one of"),
        ({"decode_chunk_size": 0}, "decode_chunk_size must be an integer >= 1"),
        ({"decode_chunk_size": True}, "decode_chunk_size must be an integer >= 1"),
        ({"background": (0.0, float("nan"), 0.0)}, "background must be 3 finite values"),
        ({"scene": {"semantic": 1}, "semantic_map": None, "height_map": None}, "scene must be a CityScene"),
        (dict(height_map=np.full((48, 48), 1e7)), "heights beyond \\+-20000 m .* must be metres"),
        ({"max_memory_gb": float("nan")}, "max_memory_gb must be a finite number > 0"),
        ({"max_memory_gb": -1.0}, "max_memory_gb must be a finite number > 0"),
        ({"max_memory_gb": float("inf")}, "max_memory_gb must be a finite number > 0"),
        ({"max_memory_gb": True}, "max_memory_gb must be a number"),
        ({"max_memory_gb": 1e-6}, "2 frames of 32x24: estimated peak memory .* exceeds max_memory_gb"),
        ({"width": 20000, "height": 20000}, "frames of 20000x20000: estimated peak memory .* exceeds the available memory"),
        (
            dict(cameras=Cameras.look_at(torch.tensor([0.0, 0, 9]), torch.tensor([1.0, 1, 0]), width=8, height=8)),
            "either cameras or trajectory",
        ),
    )

    @classmethod
    def make_pipeline(cls):
        return GaussianCityPipeline.from_preset("tiny", seed=0)

    def call_arguments(self, seed=0):
        sem, hgt = _maps()
        return dict(
            semantic_map=sem,
            height_map=hgt,
            trajectory="orbit",
            num_frames=2,
            width=32,
            height=24,
            output_type="np",
            generator=torch.Generator().manual_seed(seed),
        )

    def main_output(self, output):
        return np.asarray(output.images) if output.images is not None else output.gaussians.colors.numpy()

    def check_output(self, output, output_type):
        if output_type == "gaussians":
            assert output.images is None and len(output.gaussians) > 0
        elif output_type == "pil":
            assert len(output.images) == 2 and output.images[0].size == (32, 24)
        else:
            kind = torch.Tensor if output_type == "pt" else np.ndarray
            assert isinstance(output.images, kind) and tuple(output.images.shape) == (2, 24, 32, 3)


def test_decoders_must_agree(pipe):
    with pytest.raises(ValueError, match="style_dim"):
        GaussianCityPipeline(
            pipe.scene_encoder,
            pipe.background_decoder,
            type(pipe.building_decoder)(style_dim=8, enc_depths=(), enc_channels=(), dec_depths=(), dec_channels=()),
        )


def test_decode_chunks_decode_once_and_rasterize_each_frames_own_points(pipe):
    """Frames decoded in chunks: one decoder call per chunk, and every frame rasterizes exactly
    the Gaussians it sees on its own (their colours take the chunk's union of views as context)."""
    calls = []
    hook = pipe.building_decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        kw = {"num_frames": 5, "return_gaussians": "visible", "generator": torch.Generator().manual_seed(4)}
        single = _run(pipe, **kw)
        single_calls, calls[:] = len(calls), []
        chunked = _run(pipe, decode_chunk_size=3, **kw)
    finally:
        hook.remove()
    assert single_calls == 5 and len(calls) == 2
    assert chunked.images.shape == single.images.shape == (5, 24, 32, 3)
    for a, b in zip(single.gaussians, chunked.gaussians):
        assert len(a) > 40 and torch.equal(a.means, b.means) and torch.equal(a.scales, b.scales)
    assert not np.allclose(chunked.images, single.images)  # the decoders' context differs
    # Frames of one camera: the union is each frame's own set, so a chunk gives the per-frame frames.
    cam = Cameras.look_at(torch.tensor([-10.0, -10.0, 40.0]), torch.tensor([24.0, 24.0, 0.0]), width=32, height=24, focal=20.0)
    same = Cameras.cat([cam] * 3)
    sem, hgt = _maps()
    one = pipe(sem, hgt, cameras=same, styles=single.styles, output_type="np")
    three = pipe(sem, hgt, cameras=same, styles=single.styles, output_type="np", decode_chunk_size=3)
    np.testing.assert_allclose(three.images, one.images, atol=1e-5)
    assert one.images.std() > 0.01


def test_cuda_graphs_are_ignored_off_cuda():
    pipe = GaussianCityPipeline.from_preset("tiny", seed=0)
    eager = _run(pipe, generator=torch.Generator().manual_seed(3))
    pipe.enable_cuda_graphs()
    same = _run(pipe, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(same.images, eager.images) and pipe._graphed.captures == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload moves components to a CUDA device")
def test_model_cpu_offload_renders_the_frames_of_a_cuda_pipeline():
    """Offloaded components (on the CPU between calls) decode on CUDA: the frames and fitted
    styles of a pipeline kept on CUDA."""
    on_cuda = GaussianCityPipeline.from_preset("tiny", seed=0).to("cuda")
    ref = _run(on_cuda, generator=torch.Generator().manual_seed(3))
    offloaded = GaussianCityPipeline.from_preset("tiny", seed=0)
    offloaded.enable_model_cpu_offload()
    out = _run(offloaded, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(out.images, ref.images, atol=1e-5)
    sem, hgt = _maps()
    layout, cams = on_cuda.prepare_layout(sem, hgt), _fit_views()
    images = on_cuda(sem, hgt, cameras=cams, styles=ref.styles, output_type="pt").images.cpu()
    kw = {"styles": torch.zeros_like(ref.styles), "num_steps": 2}
    torch.testing.assert_close(offloaded.fit_styles(layout, cams, images, **kw), on_cuda.fit_styles(layout, cams, images, **kw))
    offloaded.remove_all_hooks()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs replay on a CUDA device")
def test_cuda_graphs_match_eager_frames():
    """An orbit whose visible building points change every frame: the graphed building decoder
    (padded to a growing capacity, recaptured only when a frame does not fit) renders the eager
    frames, in fp32 and under bf16 autocast, a frame or a chunk of frames at a time."""
    pipe = GaussianCityPipeline.from_preset("tiny", seed=0).to("cuda")
    for autocast, chunk in ((False, 1), (True, 1), (True, 4)):
        kw = {"num_frames": 8, "width": 96, "height": 72, "decode_chunk_size": chunk}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            pipe.enable_cuda_graphs(False)
            eager = _run(pipe, generator=torch.Generator().manual_seed(0), **kw)
            pipe.enable_cuda_graphs()
            graphed = _run(pipe, styles=eager.styles, **kw)
        assert eager.images.std() > 0.01
        np.testing.assert_allclose(graphed.images, eager.images, atol=1e-4 if not autocast else 2e-2)
        assert 1 <= pipe._graphed.captures <= 4
    pipe.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="enable_cuda_graphs does not mix with enable_model_cpu_offload"):
        _run(pipe)
    pipe.remove_all_hooks()
