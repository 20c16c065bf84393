"""Sat2CityPipeline: outputs, determinism, callbacks, save/load, Hub, CLI and bad input (tiny preset, CPU)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import trimesh
from diffusers import DiffusionPipeline
from PIL import Image

from diffusers_city import Sat2CityPipeline
from diffusers_city.cli import main as cli_main
from diffusers_city.data.scene import CityScene
from diffusers_city.sparse import SparseTensor
from diffusers_city.models.sat2city import Sat2CitySparseUNet3D

STEPS = 2


def keep_everything(pipe: Sat2CityPipeline) -> Sat2CityPipeline:
    """Untrained occupancy heads prune at random; bias them to keep voxels so outputs are non-empty."""
    for decoder in (pipe.dense_vae.decoder, pipe.sparse_vae.geometry_decoder):
        for head in decoder.occupancy_heads:
            torch.nn.init.constant_(head[1].bias, 3.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> Sat2CityPipeline:
    return keep_everything(Sat2CityPipeline.from_preset("tiny"))


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("sat2city") / "tiny"
    pipe.save_pretrained(path)
    return path


def height_map(size: int = 32) -> np.ndarray:
    hm = np.zeros((size, size), np.uint8)
    hm[8:16, 8:20] = 200
    hm[20:28, 4:12] = 90
    return hm


def run(pipe, hm=None, seed=0, **kwargs):
    return pipe(height_map() if hm is None else hm, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_points_output_and_seeded_determinism(pipe):
    a, b, c = run(pipe), run(pipe), run(pipe, seed=1)
    assert a.points.shape[1] == 3 and a.points.shape == a.colors.shape == a.normals.shape
    assert len(a.points) > 0
    assert np.array_equal(a.points, b.points) and np.array_equal(a.colors, b.colors)
    assert not np.array_equal(a.colors, c.colors)
    assert ((a.colors >= 0) & (a.colors <= 1)).all()
    assert np.allclose(np.linalg.norm(a.normals, axis=1), 1, atol=1e-4)
    # 32 px over the 128 m tiny crop: points lie inside the crop footprint
    assert a.points[:, :2].min() >= 0 and a.points[:, :2].max() <= 128


def test_cityscene_output_is_georeferenced(pipe):
    heights = height_map().astype(np.float32) / 8 + 100.0
    scene = CityScene(heights, np.zeros_like(heights, dtype=np.int64), meters_per_pixel=4.0, origin=(5000.0, 7000.0, 20.0), crs="EPSG:32633")
    out = run(pipe, scene)
    plain = run(pipe, height_map(), meters_per_pixel=4.0, height_range=(100.0, 100.0 + 255 / 8))
    assert out.crs == "EPSG:32633"
    assert np.allclose(out.origin, [5000.0, 7000.0, 120.0])
    assert out.points[:, 0].min() >= 5000 and out.points[:, 1].min() >= 7000 and out.points[:, 2].min() >= 120
    assert np.allclose(out.points - out.origin, plain.points - plain.origin, atol=1e-3)


def test_output_types(pipe):
    pts = run(pipe, output_type="points")
    assert isinstance(pts.points, np.ndarray) and pts.points.shape[1] == 3
    vox = run(pipe, output_type="voxels").voxels
    assert isinstance(vox, SparseTensor) and vox.num_channels == 6 and vox.num_voxels == len(pts.points)
    assert torch.allclose(vox.world_positions().float(), torch.from_numpy(pts.points), atol=1e-4)
    with pytest.raises(ValueError, match="rendered frames as torch tensors"):
        run(pipe, output_type="pt")
    mesh = run(pipe, output_type="mesh")
    assert isinstance(mesh.mesh, trimesh.Trimesh) and len(mesh.mesh.faces) > 0
    points, _ = run(pipe, return_dict=False)[:2]
    assert np.array_equal(points, mesh.points)


def test_callback_sees_every_step_of_every_stage_and_can_edit_latents(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((p.stage, i, tuple(kwargs["latents"].shape)))
        return {"latents": kwargs["latents"] * 0} if p.stage == "appearance" else kwargs

    out = run(pipe, callback_on_step_end=callback)
    assert [s for s, _, _ in seen] == ["dense"] * STEPS + ["sparse"] * STEPS + ["appearance"] * STEPS
    assert [i for _, i, _ in seen] == list(range(STEPS)) * 3
    assert len(seen[0][2]) == 5 and len(seen[-1][2]) == 2  # dense grid, then per-voxel features
    assert not np.array_equal(out.colors, run(pipe).colors)


def test_save_and_load_are_bit_exact(pipe, saved):
    loaded = Sat2CityPipeline.from_pretrained(saved)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for (k, v), (k2, v2) in zip(component.state_dict().items(), getattr(loaded, name).state_dict().items()):
                assert k == k2 and torch.equal(v, v2), f"{name}.{k}"
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded).colors, run(pipe).colors)
    generic = DiffusionPipeline.from_pretrained(saved)
    assert type(generic) is Sat2CityPipeline
    assert generic.scheduler.config.prediction_type == "v_prediction"


def test_from_pretrained_by_repo_id(pipe, offline_hub):
    pipe.push_to_hub("org/sat2city-tiny")
    assert "model_index.json" in offline_hub.files("org/sat2city-tiny")
    loaded = DiffusionPipeline.from_pretrained("org/sat2city-tiny")
    assert type(loaded) is Sat2CityPipeline
    assert torch.equal(loaded.dense_unet.conv_in.weight, pipe.dense_unet.conv_in.weight)


def edited_copy(saved, tmp_path, component: str, **changes):
    import json
    import shutil

    folder = tmp_path / f"edited-{component}"
    shutil.copytree(saved, folder)
    cfg_path = folder / component / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **changes}))
    return folder


def test_mismatched_components_are_refused(saved, tmp_path):
    with pytest.raises(ValueError, match="voxel sizes differ"):
        Sat2CityPipeline.from_pretrained(edited_copy(saved, tmp_path, "sparse_vae", voxel_size=3.0))
    pipe = Sat2CityPipeline.from_pretrained(saved)
    wrong = Sat2CitySparseUNet3D.from_config({**pipe.sparse_unet.config, "condition_channels": 5})
    with pytest.raises(ValueError, match="sparse_unet: sparse stage condition_channels must be 4 .* or 8 .* got 5"):
        Sat2CityPipeline(**{**pipe.components, "sparse_unet": wrong})


def test_weights_not_matching_their_config_are_refused(saved, tmp_path):
    with pytest.raises(ValueError, match="conv_in.weight expected shape"):
        Sat2CityPipeline.from_pretrained(edited_copy(saved, tmp_path, "dense_unet", condition_channels=7))


@pytest.mark.parametrize(
    ("value", "kwargs", "match"),
    [
        (np.full((32, 32), np.nan, np.float32), {}, "NaN/inf"),
        (np.where(np.eye(32) > 0, np.inf, 1.0), {}, "NaN/inf"),
        (np.full((32, 32), 7, np.uint8), {}, "constant"),
        (np.zeros((0, 32), np.uint8), {}, "empty"),
        (np.zeros((2, 32, 32), np.uint8), {}, "rank 3"),
        (np.zeros((4, 4), np.uint8) + np.eye(4, dtype=np.uint8), {}, "too small"),
        (np.full((32, 32), 300.0), {}, "0..255"),
        (height_map(), {"meters_per_pixel": 2000.0}, "estimated peak memory"),
        (height_map(), {"output_type": "gltf"}, "output_type"),
        (height_map(), {"num_inference_steps": 0}, "num_inference_steps"),
        (height_map(), {"guidance_scale": 0.5}, "guidance_scale"),
        (height_map(), {"temperature": (1.0, -1.0, 1.0)}, "temperature"),
        ({"height": 1}, {}, "height_map must be"),
    ],
)
def test_bad_input_is_refused_before_any_work(pipe, monkeypatch, value, kwargs, match):
    def no_work(*args, **kw):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(pipe.condition_encoder, "forward", no_work)
    with pytest.raises(ValueError, match=match):
        pipe(value, **{"num_inference_steps": STEPS, **kwargs})


def test_heights_above_the_grid_warn(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="diffusers_city.pipelines.sat2city.pipeline_sat2city"):
        run(pipe)
        assert not caplog.records
        run(pipe, height_range=(0.0, 64.0))  # the map's 200 gray rises 50 m, the tiny grid 8 x 4 m
    assert "rises 50.2 m above its lowest pixel, this model's grid is 32 m tall" in caplog.text


def test_missing_file_is_refused(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        pipe(tmp_path / "missing.png")


def test_cli_writes_ply_glb_and_preview(saved, tmp_path, capsys):
    png = tmp_path / "hm.png"
    Image.fromarray(height_map()).save(png)
    out = tmp_path / "out"
    code = cli_main(["generate", "sat2city", "--height-map", str(png), "--out", str(out), "--model", str(saved), "--steps", "2",
                     "--guidance-scale", "2", "1", "1", "--temperature", "0", "0", "1"])
    assert code == 0
    for name in ("city.ply", "city.glb", "city_preview.png"):
        assert (out / name).stat().st_size > 0
    assert trimesh.load(out / "city.glb", force="mesh").vertices.shape[0] > 0
    bad = cli_main(["generate", "sat2city", "--height-map", str(tmp_path / "nope.png"), "--out", str(out), "--model", str(saved)])
    assert bad == 2 and "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload moves components to a CUDA device")
def test_model_cpu_offload_matches(pipe):
    pipe.enable_model_cpu_offload()
    out = run(pipe)
    pipe.remove_all_hooks()
    assert len(out.points) > 0


def with_random_outputs(pipe):
    """A copy whose U-Nets' zero-initialised layers are random, so that every step changes the latents."""
    pipe = copy.deepcopy(pipe)
    torch.manual_seed(0)
    with torch.no_grad():
        for unet in (pipe.dense_unet, pipe.sparse_unet, pipe.appearance_unet):
            for param in unet.parameters():
                if not param.any():
                    param.normal_(0, 0.3)
    return pipe


def test_cuda_graphs_are_ignored_off_cuda(pipe):
    pipe = with_random_outputs(pipe)
    eager = run(pipe, guidance_scale=(2, 1, 1))
    pipe.enable_cuda_graphs()
    same = run(pipe, guidance_scale=(2, 1, 1))
    assert np.array_equal(same.points, eager.points) and np.array_equal(same.colors, eager.colors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs replay on a CUDA device")
def test_cuda_graphs_match_eager_steps(pipe):
    pipe = with_random_outputs(pipe).to("cuda")

    def sample():  # 5 steps: one eager, one captured, three replays per stage
        return pipe(height_map(), num_inference_steps=5, generator=torch.Generator().manual_seed(0), guidance_scale=(2, 1, 1))

    eager = sample()
    pipe.enable_cuda_graphs()
    graphed = sample()
    assert len(eager.points) > 0
    np.testing.assert_array_equal(graphed.points, eager.points)
    np.testing.assert_allclose(graphed.colors, eager.colors, atol=1e-5)
    pipe.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="enable_cuda_graphs does not mix with enable_model_cpu_offload"):
        run(pipe)
    pipe.remove_all_hooks()


def test_guidance_per_stage(pipe):
    """A (dense, sparse, appearance) triple guides each stage on its own; one number guides all."""
    pipe = with_random_outputs(pipe)  # untrained U-Nets start with zero output layers: make the condition matter
    calls = []

    def record(p, i, t, kw):
        calls.append(p.stage)
        return kw

    hm = np.random.default_rng(0).uniform(0, 255, (40, 40)).astype(np.uint8)

    def run(g):
        calls.clear()
        out = pipe(hm, num_inference_steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=g,
                   callback_on_step_end=record)
        return out, list(calls)

    plain, stages = run(1.0)
    assert stages == ["dense"] * 2 + ["sparse"] * 2 + ["appearance"] * 2
    same, _ = run((1.0, 1.0, 1.0))
    assert np.array_equal(plain.points, same.points) and np.array_equal(plain.colors, same.colors)
    colour_only, _ = run((1.0, 1.0, 4.0))
    assert np.array_equal(plain.points, colour_only.points)  # geometry stages unguided
    assert not np.array_equal(plain.colors, colour_only.colors)
    dense_only, _ = run((4.0, 1.0, 1.0))
    assert not np.array_equal(plain.points, dense_only.points) or not np.array_equal(plain.colors, dense_only.colors)
    for bad in ((1.0, 2.0), (0.5, 1.0, 1.0), float("nan"), (1.0, True, 1.0)):
        with pytest.raises(ValueError, match="guidance_scale"):
            pipe(hm, num_inference_steps=2, guidance_scale=bad)


def test_temperature_per_stage(pipe):
    """Temperature 0 starts a stage's DDIM from the prior's mean: that stage no longer depends on
    the seed; 1 (the default) does; a triple sets each stage on its own."""
    hm = np.random.default_rng(1).uniform(0, 255, (40, 40)).astype(np.uint8)

    def run(seed, temperature):
        return pipe(hm, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), temperature=temperature)

    a, b = run(0, 1.0), run(1, 1.0)
    assert not np.array_equal(a.points, b.points) or not np.array_equal(a.colors, b.colors)
    a, b = run(0, 0.0), run(1, 0.0)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.colors, b.colors)
    a, b = run(0, (0.0, 0.0, 1.0)), run(1, (0.0, 0.0, 1.0))
    assert np.array_equal(a.points, b.points) and not np.array_equal(a.colors, b.colors)
    for bad in ((1.0, 0.5), -0.1, float("inf"), (1.0, None, 1.0)):
        with pytest.raises(ValueError, match="temperature"):
            pipe(hm, num_inference_steps=2, temperature=bad)
