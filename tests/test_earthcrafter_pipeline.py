"""EarthCrafterPipeline: the pipeline contract, conditions, schedulers, presets, bad input and the CLI
(tiny preset, 2 steps, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from PIL import Image
from pipeline_contract import PipelineContract
from plyfile import PlyData

import diffusers_city
from diffusers_city import EarthCrafterPipeline
from diffusers_city.cli import main as cli_main
from diffusers_city.export.splat import read_gaussian_ply
from diffusers_city.presets import build_pipeline, load_preset
from diffusers_city.render import Gaussians
from diffusers_city.sparse import SparseTensor

STEPS = 2
L = 16  # the tiny preset's tile
FLOWS = ("occupancy_transformer", "struct_flow", "tex_flow")


def semantic_map(seed: int = 0) -> np.ndarray:
    """Roads and water around two blocks of buildings (class ids of diffusers_city.data.classes)."""
    sem = np.zeros((L, L), np.int64)
    sem[:, 7:9] = 1
    sem[2:6, 2:6] = 3
    sem[10:14, 10 + seed % 3 : 14] = 3
    sem[12:, :3] = 5
    return sem


def randomize_flows(pipe: EarthCrafterPipeline, seed: int = 1) -> EarthCrafterPipeline:
    """Random weights in the flows, whose zero-initialised output layers otherwise ignore the condition."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in (*FLOWS, "condition_encoder"):
            for p in getattr(pipe, name).parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return pipe


def make_tiny(seed: int = 0) -> EarthCrafterPipeline:
    """The tiny pipeline, its untrained StructVAE keeping every child voxel (else it prunes at random)."""
    pipe = EarthCrafterPipeline.from_preset("tiny", seed=seed)
    for head in pipe.struct_vae.decoder.occupancy_heads:
        torch.nn.init.constant_(head[1].bias, 3.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, seed: int = 0, **kwargs):
    args = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(seed), "output_type": "points"}
    return pipe(**{**args, **kwargs})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small sparse ops run several times slower with two threads on
    a shared, loaded CPU (thread synchronisation dominates), with the same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> EarthCrafterPipeline:
    return make_tiny()


@pytest.fixture(scope="module")
def trained_like() -> EarthCrafterPipeline:
    return randomize_flows(make_tiny())


class TestEarthCrafterPipelineContract(PipelineContract):
    pipeline_class = EarthCrafterPipeline
    output_types = ("pil", "np", "pt", "points", "mesh", "voxels", "gaussians")
    callback_tensor_inputs = ("latents",)
    work_component = "condition_encoder"
    bad_inputs = tuple(
        ({"semantic_map": value, **kwargs}, match)
        for value, kwargs, match in [
            (np.full((L, L), 8), {}, r"unknown classes \[8\]"),
            (np.full((L, L), -1), {}, r"unknown classes \[-1\]"),
            (np.zeros((2, L, L), np.int64), {}, "rank 3"),
            (np.zeros((L + 1, L + 1), np.int64), {}, "must be 16x16"),
            (np.zeros((0, L), np.int64), {}, "must be 16x16"),
            (np.full((L, L), np.nan), {}, "NaN"),
            (np.full((L, L), 0.5), {}, "fractional"),
            (np.array(["road"] * L * L).reshape(L, L), {}, "numeric"),
            (semantic_map(), {"image": np.zeros((2 * L, 2 * L, 3), np.uint8)}, "not both"),
            (semantic_map(), {"guidance_scale": 0.5}, "guidance_scale"),
            (semantic_map(), {"guidance_scale": float("nan")}, "guidance_scale"),
            (semantic_map(), {"guidance_scale": True}, "guidance_scale"),
            (semantic_map(), {"guidance_interval": (0.8, 0.2)}, r"0 <= lo <= hi <= 1, got \(0.8, 0.2\)"),
            (semantic_map(), {"guidance_interval": (-0.1, 1.0)}, "0 <= lo <= hi <= 1"),
            (semantic_map(), {"guidance_interval": (0.0, 1.5)}, "0 <= lo <= hi <= 1"),
            (semantic_map(), {"guidance_interval": (0.5,)}, "guidance_interval must be a pair"),
            (semantic_map(), {"guidance_interval": (0.0, float("nan"))}, "guidance_interval must be a finite"),
            (semantic_map(), {"num_inference_steps": 0}, "num_inference_steps"),
            (semantic_map(), {"num_inference_steps": 10**6}, "num_inference_steps"),
            (semantic_map(), {"output_type": "np", "num_frames": 10**6}, "num_frames"),
            (semantic_map(), {"output_type": "np", "width": 0}, "width"),
            (semantic_map(), {"output_type": "np", "num_frames": 1000, "width": 4096, "height": 4096}, "estimated"),
            (semantic_map(), {"latents": torch.zeros(1, 1, 3, 3, 3)}, r"latents must be .*\[1, 1, 2, 2, 2\]"),
            (semantic_map(), {"latents": torch.full((1, 1, 2, 2, 2), float("nan"))}, "NaN"),
            (semantic_map(), {"max_memory_gb": -1.0}, "max_memory_gb"),
            ({"a": 1}, {}, "semantic_map must be"),
        ]
    ) + tuple(
        ({"semantic_map": None, "image": value}, match)
        for value, match in [
            (np.zeros((L, L, 3), np.uint8), "must be 32x32"),
            (np.zeros((2 * L, 2 * L, 4), np.uint8), "3 channels"),
            (np.zeros((2 * L, 2 * L), np.uint8), "single-channel"),
            (torch.full((3, 2 * L, 2 * L), float("nan")), "NaN"),
            (torch.full((3, 2 * L, 2 * L), 2.0), "0..1"),
        ]
    )

    @classmethod
    def make_pipeline(cls):
        return make_tiny()

    def call_arguments(self, seed=0):
        return {
            "semantic_map": semantic_map(),
            "num_inference_steps": STEPS,
            "generator": torch.Generator().manual_seed(seed),
            "output_type": "points",
            "num_frames": 2,
            "width": 24,
            "height": 24,
        }

    def main_output(self, output):
        return np.concatenate([output.points, output.colors], 1)

    def check_output(self, output, output_type):
        assert isinstance(output.voxels, SparseTensor) and output.voxels.num_voxels > 0
        assert output.voxels.feats.shape == (output.voxels.num_voxels, 3)
        assert output.voxel_size == 4.0
        if output_type == "voxels":
            assert output.gaussians is None and output.points is None
            return
        assert isinstance(output.gaussians, Gaussians) and len(output.gaussians) > 0
        if output_type in ("pil", "np", "pt"):
            frames = output.images
            assert len(frames) == 2
            if output_type == "pil":
                assert all(isinstance(f, Image.Image) and f.size == (24, 24) for f in frames)
            else:
                assert tuple(frames.shape) == (2, 24, 24, 3) and isinstance(
                    frames, np.ndarray if output_type == "np" else torch.Tensor
                )
                assert float(frames.max()) > 0, "the tile is visible in the orbit"
        if output_type in ("points", "mesh"):
            assert output.points.shape == output.colors.shape == (len(output.gaussians), 3)
            assert np.isfinite(output.points).all() and 0 <= output.colors.min() and output.colors.max() <= 1
        if output_type == "mesh":
            assert isinstance(output.mesh, trimesh.Trimesh) and len(output.mesh.faces) > 0


def test_tile_lies_in_its_world_frame(pipe):
    out = call(pipe, semantic_map=semantic_map(), output_type="voxels", origin=(1000.0, 2000.0, 50.0))
    coords = out.voxels.coords[:, 1:]
    assert int(coords.min()) >= 0 and int(coords.max()) < L
    assert out.voxels.voxel_size == 4.0 and np.allclose(out.voxels.origin, (1000.0, 2000.0, 50.0))
    pts = call(pipe, semantic_map=semantic_map(), origin=(1000.0, 2000.0, 50.0)).points
    assert pts[:, 0].min() > 1000 - 4 and pts[:, 0].max() < 1000 + 4 * L and pts[:, 1].min() > 2000 - 4


def test_cityscene_input_is_georeferenced(pipe):
    from diffusers_city.data import CityScene

    sem = semantic_map()
    scene = CityScene(np.zeros((L, L), np.float32), sem, meters_per_pixel=4.0, origin=(5000.0, 7000.0, 20.0), crs="EPSG:32633")
    out = call(pipe, semantic_map=scene)
    plain = call(pipe, semantic_map=sem)
    assert out.crs == "EPSG:32633" and np.allclose(out.origin, [5002.0, 7002.0, 22.0])
    np.testing.assert_allclose(out.points - out.origin, plain.points - plain.origin, atol=1e-3)
    coarse = CityScene(np.zeros((L, L), np.float32), sem, meters_per_pixel=2.0)
    with pytest.raises(ValueError, match="2 m per pixel"):
        call(pipe, semantic_map=coarse)
    with pytest.raises(ValueError, match="not both"):
        call(pipe, semantic_map=scene, origin=(0.0, 0.0, 0.0))


def test_every_condition_mode_runs_and_the_condition_matters(trained_like):
    sem = call(trained_like, semantic_map=semantic_map())
    other = call(trained_like, semantic_map=semantic_map(1))
    image = call(trained_like, image=np.full((2 * L, 2 * L, 3), 128, np.uint8))
    none = call(trained_like)
    for out in (sem, other, image, none):
        assert len(out.points) > 0 and np.isfinite(out.points).all()
    assert not np.array_equal(sem.points, other.points) or not np.array_equal(sem.colors, other.colors)
    assert not np.array_equal(sem.colors, none.colors)
    assert not np.array_equal(sem.colors, image.colors)


def test_guidance_uses_the_none_condition(trained_like, monkeypatch):
    batches = []
    real = trained_like.tex_flow.forward

    def spy(sample, timestep, encoder_hidden_states, encoder_lengths, *args, **kw):
        batches.append(encoder_hidden_states.shape[0])
        return real(sample, timestep, encoder_hidden_states, encoder_lengths, *args, **kw)

    monkeypatch.setattr(trained_like.tex_flow, "forward", spy)
    guided = call(trained_like, semantic_map=semantic_map(), guidance_scale=3.0)
    assert batches and set(batches) == {2}
    batches.clear()
    plain = call(trained_like, semantic_map=semantic_map(), guidance_scale=1.0)
    assert batches and set(batches) == {1}, "guidance 1 runs the conditional branch only"
    batches.clear()
    call(trained_like, guidance_scale=3.0)
    assert set(batches) == {1}, "an unconditional tile has nothing to guide against"
    assert not np.array_equal(guided.colors, plain.colors)


def test_guidance_interval_skips_the_none_pass_outside_it(trained_like, monkeypatch):
    calls = []
    for name in FLOWS:
        real = getattr(trained_like, name).forward

        def spy(sample, timestep, encoder_hidden_states, encoder_lengths, *args, _name=name, _real=real, **kw):
            calls.append((_name, encoder_hidden_states.shape[0]))
            return _real(sample, timestep, encoder_hidden_states, encoder_lengths, *args, **kw)

        monkeypatch.setattr(getattr(trained_like, name), "forward", spy)
    every = call(trained_like, semantic_map=semantic_map())
    assert calls == [(name, 2) for name in FLOWS for _ in range(STEPS)], "default (0, 1): guidance at every step"
    calls.clear()
    # 2 steps of the tiny preset's shifted schedule: sigma 1.0, then ~0.003
    late = call(trained_like, semantic_map=semantic_map(), guidance_interval=(0.5, 1.0))
    assert calls == [(name, n) for name in FLOWS for n in (2, 1)], "outside the interval: one conditional pass"
    calls.clear()
    call(trained_like, semantic_map=semantic_map(), guidance_interval=(0.0, 0.0))
    assert calls == [(name, 1) for name in FLOWS for _ in range(STEPS)]
    assert not np.array_equal(every.colors, late.colors)
    assert np.array_equal(call(trained_like, semantic_map=semantic_map(), guidance_interval=(0.0, 1.0)).colors, every.colors)


def test_callbacks_see_every_stage(pipe):
    stages = []
    call(pipe, semantic_map=semantic_map(), callback_on_step_end=lambda p, i, t, kw: stages.append(p.stage) or kw)
    assert stages == ["occupancy"] * STEPS + ["structure"] * STEPS + ["texture"] * STEPS
    assert pipe.stage is None


def test_given_latents_fix_the_occupied_cells(pipe):
    latents = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    # The untrained occupancy flow predicts zero velocity: the occupied cells are where the noise is > 0.
    occupied = {tuple(c) for c in torch.nonzero(latents[0, 0] > 0).tolist()}
    for seed in (0, 1):
        voxels = call(pipe, seed=seed, semantic_map=semantic_map(), latents=latents, output_type="voxels").voxels
        assert voxels.num_voxels and {tuple(c) for c in (voxels.coords[:, 1:] // 8).tolist()} <= occupied


def test_flow_matching_schedulers_swap_and_others_are_refused():
    pipe = make_tiny()
    reference = call(pipe, semantic_map=semantic_map())
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    heun = call(pipe, semantic_map=semantic_map())
    assert len(heun.points) > 0 and np.isfinite(heun.points).all()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert np.array_equal(call(pipe, semantic_map=semantic_map()).points, reference.points)
    pipe.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        call(pipe, semantic_map=semantic_map())


def small_component(name: str):
    config = load_preset("earthcrafter", "small")["components"][name]
    return getattr(diffusers_city, config["_class_name"]).from_config(config)


def test_mismatched_components_are_refused():
    tiny = make_tiny()
    with pytest.raises(ValueError, match="components do not match: tex_flow resolution 64"):
        EarthCrafterPipeline(**{**tiny.components, "tex_flow": small_component("tex_flow")})
    with pytest.raises(ValueError, match="components do not match: struct_vae resolution 64"):
        EarthCrafterPipeline(**{**tiny.components, "struct_vae": small_component("struct_vae")})


def test_presets_build_and_small_fits_a_cpu_demo():
    assert isinstance(build_pipeline("earthcrafter", "tiny"), EarthCrafterPipeline)
    small = build_pipeline("earthcrafter", "small")
    assert small.resolution == 64 and small.voxel_size == 2.0
    for name in FLOWS:
        params = sum(p.numel() for p in getattr(small, name).parameters())
        assert 1e6 <= params <= 5e6, f"{name}: {params} parameters"


@pytest.fixture(scope="module")
def saved_tiny(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("earthcrafter") / "tiny"
    pipe.save_pretrained(path)
    return path


def test_cli_writes_splats_mesh_points_and_orbit(saved_tiny, tmp_path, capsys):
    Image.fromarray(semantic_map().astype(np.uint8)).save(tmp_path / "map.png")
    out = tmp_path / "out"
    argv = [
        "generate",
        "earthcrafter",
        "--semantic-map",
        str(tmp_path / "map.png"),
        "--pipeline",
        str(saved_tiny),
        "--out",
        str(out),
    ]
    sizes = ["--frames", "2", "--width", "24", "--height", "24"]
    assert cli_main([*argv, "--steps", "2", *sizes, "--guidance-interval", "0.5", "1"]) == 0
    splats = read_gaussian_ply(out / "tile.ply")
    assert len(splats.means) > 0 and np.isfinite(splats.means).all()
    assert (splats.scales.min(1) < 0.05 * splats.scales.max(1) + 1e-6).all(), "2DGS: one near-zero scale per splat"
    assert PlyData.read(str(out / "tile_points.ply"))["vertex"].count == len(splats.means)
    assert len(trimesh.load(out / "tile.glb", force="mesh").faces) > 0
    assert Image.open(out / "orbit.gif").n_frames == 2
    with Image.open(out / "input_output.png") as picture:  # the map beside an 800x600 render
        assert picture.width >= 600 + 800 and picture.height >= 600
    assert "wrote" in capsys.readouterr().out


def test_system_is_registered_without_a_demo(capsys):
    from diffusers_city._registration import systems

    system = systems()["earthcrafter"]
    assert system.pipeline_class() is EarthCrafterPipeline and not system.has_demo
    with pytest.raises(SystemExit):
        cli_main(["generate", "--help"])
    assert "earthcrafter" in capsys.readouterr().out


def test_cli_refuses_bad_arguments(saved_tiny, tmp_path, capsys):
    base = ["generate", "earthcrafter", "--pipeline", str(saved_tiny), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        cli_main([*base, "--semantic-map", "a.png", "--image", "b.png"])
    assert "not allowed with" in capsys.readouterr().err
    assert cli_main([*base, "--semantic-map", str(tmp_path / "missing.png")]) != 0
    Image.fromarray(np.full((L, L), 9, np.uint8)).save(tmp_path / "bad.png")
    assert cli_main([*base, "--semantic-map", str(tmp_path / "bad.png")]) != 0
    assert "unknown classes [9]" in capsys.readouterr().err
    Image.fromarray(semantic_map().astype(np.uint8)).save(tmp_path / "map.png")
    assert cli_main([*base, "--semantic-map", str(tmp_path / "map.png"), "--guidance-interval", "0.8", "0.2"]) == 2
    assert "guidance_interval must satisfy 0 <= lo <= hi <= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing is written for refused input"
