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
from pipeline_contract import PipelineContract

from diffusers_city import Sat2CityPipeline
from diffusers_city.cli import main as cli_main
from diffusers_city.data.scene import CityScene
from diffusers_city.models.sat2city import Sat2CitySparseUNet3D
from diffusers_city.sparse import SparseTensor

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
    return pipe(
        height_map() if hm is None else hm, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), **kwargs
    )


class TestSat2CityPipelineContract(PipelineContract):
    pipeline_class = Sat2CityPipeline
    output_types = ("points", "mesh", "voxels")
    callback_tensor_inputs = ("latents",)
    work_component = "condition_encoder"
    bad_inputs = tuple(
        ({"height_map": value, **kwargs}, match)
        for value, kwargs, match in [
            (np.full((32, 32), np.nan, np.float32), {}, "NaN/inf"),
            (np.where(np.eye(32) > 0, np.inf, 1.0), {}, "NaN/inf"),
            (np.full((32, 32), 7, np.uint8), {}, "constant"),
            (np.zeros((0, 32), np.uint8), {}, "empty"),
            (np.zeros((2, 32, 32), np.uint8), {}, "rank 3"),
            (np.zeros((4, 4), np.uint8) + np.eye(4, dtype=np.uint8), {}, "too small"),
            (np.full((32, 32), 300.0), {}, "0..255"),
            (height_map(), {"meters_per_pixel": 2000.0}, "estimated peak memory"),
            (height_map(), {"num_inference_steps": 0}, "num_inference_steps"),
            (height_map(), {"num_inference_steps": True}, "num_inference_steps"),
            (height_map(), {"guidance_scale": 0.5}, "guidance_scale"),
            (height_map(), {"temperature": (1.0, -1.0, 1.0)}, "temperature"),
            (height_map(), {"max_memory_gb": float("nan")}, "max_memory_gb"),
            (height_map(), {"max_memory_gb": float("inf")}, "max_memory_gb must be a finite number > 0"),
            (height_map(), {"max_memory_gb": -2.0}, "max_memory_gb must be a finite number > 0"),
            (height_map(), {"max_memory_gb": True}, "max_memory_gb must be a number"),
            (height_map(), {"max_memory_gb": 1e-6}, "32x32 px at .* estimated peak memory .* exceeds max_memory_gb"),
            (height_map(), {"latents": torch.zeros(1, 2, 3)}, "latents must be a tensor"),
            ({"height": 1}, {}, "height_map must be"),
        ]
    )

    @classmethod
    def make_pipeline(cls):
        return keep_everything(Sat2CityPipeline.from_preset("tiny"))

    def call_arguments(self, seed=0):
        return {"height_map": height_map(), "num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(seed)}

    def main_output(self, output):
        return np.concatenate([output.points, output.colors], 1)

    def check_output(self, output, output_type):
        if output_type == "voxels":
            assert isinstance(output.voxels, SparseTensor) and output.voxels.num_voxels > 0
            return
        assert output.points.shape[1] == 3 and output.points.shape == output.colors.shape == output.normals.shape
        assert len(output.points) > 0
        if output_type == "mesh":
            assert isinstance(output.mesh, trimesh.Trimesh) and len(output.mesh.faces) > 0


@pytest.mark.parametrize("form", ["array", "npy", "scene"])
def test_a_huge_map_is_refused_by_its_size_before_its_pixels_are_read(pipe, tmp_path, monkeypatch, form):
    """A 20000^2 px map with the default resolution (which covers the training crop at any size)
    still needs 20000^2 points of P_h: refused from its shape, before validation converts it.
    A scene is refused by its size in metres (its own resolution)."""
    size, huge = 20000, np.broadcast_to(np.uint8(0), (20000, 20000))  # no memory behind it
    if form == "npy":
        huge = tmp_path / "huge.npy"
        np.lib.format.open_memmap(huge, mode="w+", dtype=np.uint8, shape=(size, size))  # a sparse file
    elif form == "scene":
        size = 1000
        huge = CityScene(np.zeros((size, size), np.float32), np.zeros((size, size), np.uint8), meters_per_pixel=20.0)
    monkeypatch.setattr(
        "diffusers_city.pipelines.sat2city.pipeline_sat2city.load_height_map", lambda *a, **k: pytest.fail("the map was read")
    )
    with pytest.raises(ValueError, match=rf"height map of {size}x{size} px at [0-9.e-]+ m/px .* estimated peak memory"):
        pipe(huge, num_inference_steps=1, max_memory_gb=8.0)
    grid = pipe.grid_for((64, 64), 0.5)
    assert pipe.estimate_memory_bytes(grid, 20000**2) > pipe.estimate_memory_bytes(grid, 64**2) + 8e9


def test_inputs_sized_only_once_read_are_checked_once_loaded(pipe, tmp_path):
    """A scene folder's size is known only once it is read: checked then, at its own resolution."""
    path = tmp_path / "scene"
    rng = np.random.default_rng(0)
    CityScene(rng.uniform(0, 20, (200, 200)).astype(np.float32), np.zeros((200, 200), np.uint8), meters_per_pixel=20.0).save(path)
    with pytest.raises(ValueError, match=r"height map of 200x200 px at 20 m/px .* estimated peak memory"):
        pipe(str(path), num_inference_steps=1, max_memory_gb=0.05)


def test_default_memory_limit_is_the_available_memory(pipe, monkeypatch):
    import inspect

    assert inspect.signature(Sat2CityPipeline.__call__).parameters["max_memory_gb"].default is None
    monkeypatch.setattr("diffusers_city.utils.memory.available_memory_gb", lambda device=None: 1e-6)
    with pytest.raises(ValueError, match=r"exceeds the available memory \(1e-06 GB\)"):
        run(pipe)


def test_cityscene_output_is_georeferenced(pipe):
    heights = height_map().astype(np.float32) / 8 + 100.0
    scene = CityScene(
        heights, np.zeros_like(heights, dtype=np.int64), meters_per_pixel=4.0, origin=(5000.0, 7000.0, 20.0), crs="EPSG:32633"
    )
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


def test_generic_loader_keeps_the_trained_scheduler(saved):
    generic = DiffusionPipeline.from_pretrained(saved)
    assert type(generic) is Sat2CityPipeline
    assert generic.scheduler.config.prediction_type == "v_prediction"


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
    code = cli_main(
        [
            "generate",
            "sat2city",
            "--height-map",
            str(png),
            "--out",
            str(out),
            "--model",
            str(saved),
            "--steps",
            "2",
            "--guidance-scale",
            "2",
            "1",
            "1",
            "--temperature",
            "0",
            "0",
            "1",
        ]
    )
    assert code == 0
    for name in ("city.ply", "city.glb", "city_preview.png"):
        assert (out / name).stat().st_size > 0
    assert trimesh.load(out / "city.glb", force="mesh").vertices.shape[0] > 0
    bad = cli_main(["generate", "sat2city", "--height-map", str(tmp_path / "nope.png"), "--out", str(out), "--model", str(saved)])
    assert bad == 3 and "no such file" in capsys.readouterr().err  # ExitCode.MISSING_FILE


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
        out = pipe(
            hm, num_inference_steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=g, callback_on_step_end=record
        )
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


def test_folders_saved_under_the_earlier_class_names_still_load(pipe, saved, tmp_path):
    """A pipeline saved before the classes carried their family's name (``DenseUNet3D``, ...) and
    before ``scaling_factor`` meant 1 / std loads as the current classes, converted, with the same
    outputs; saving it again records the current names."""
    import json
    import shutil

    pipe = with_random_outputs(pipe)
    pipe.dense_vae.register_to_config(scaling_factor=0.5)
    pipe.sparse_vae.register_to_config(scaling_factor=2.0, appearance_scaling_factor=4.0)
    pipe.save_pretrained(tmp_path / "now")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "now", old)
    names = {
        "dense_vae": "DenseGeometryVAE",
        "sparse_vae": "SparseGeometryVAE",
        "dense_unet": "DenseUNet3D",
        "sparse_unet": "SparseUNet3D",
        "appearance_unet": "SparseUNet3D",
    }
    index = json.loads((old / "model_index.json").read_text())
    for component, name in names.items():
        index[component] = ["diffusers_city", name]
        config = json.loads((old / component / "config.json").read_text())
        config["_class_name"] = name
        for key in ("scaling_factor", "appearance_scaling_factor"):
            if key in config:
                config[key] = 1.0 / config[key]  # then: the latents' std
        (old / component / "config.json").write_text(json.dumps(config))
    for key in ("default_guidance_scale", "default_temperature"):
        del index[key]
    (old / "model_index.json").write_text(json.dumps(index))

    loaded = DiffusionPipeline.from_pretrained(old)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.dense_unet).__name__ == "Sat2CityDenseUNet3D"
    assert type(loaded.appearance_unet) is Sat2CitySparseUNet3D
    assert loaded.dense_vae.config.scaling_factor == pytest.approx(0.5)
    assert loaded.sparse_vae.config.appearance_scaling_factor == pytest.approx(4.0)
    ours = run(pipe, guidance_scale=(2, 1, 1))
    theirs = run(loaded, guidance_scale=(2, 1, 1))
    assert np.array_equal(ours.points, theirs.points)
    np.testing.assert_allclose(ours.colors, theirs.colors, atol=1e-6)
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert again["dense_unet"] == ["diffusers_city", "Sat2CityDenseUNet3D"]
    assert again["sparse_vae"] == ["diffusers_city", "Sat2CitySparseVAE"]


def test_scheduler_must_predict_what_the_unets_were_trained_for(pipe):
    from diffusers import DDIMScheduler

    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config, prediction_type="epsilon")
    try:
        with pytest.raises(ValueError, match="predict v_prediction.*configured for 'epsilon'"):
            run(pipe)
    finally:
        pipe.scheduler = original


def test_stored_sampling_defaults_are_used_and_saved(pipe, tmp_path):
    pipe = copy.deepcopy(with_random_outputs(pipe))
    explicit = run(pipe, guidance_scale=(2, 1, 1), temperature=(0, 0, 1))
    assert not np.array_equal(run(pipe).points, explicit.points) or not np.array_equal(run(pipe).colors, explicit.colors)
    pipe.register_to_config(default_guidance_scale=[2.0, 1.0, 1.0], default_temperature=[0.0, 0.0, 1.0])
    pipe.save_pretrained(tmp_path / "tuned")
    loaded = Sat2CityPipeline.from_pretrained(tmp_path / "tuned")
    loaded.set_progress_bar_config(disable=True)
    assert list(loaded.config.default_guidance_scale) == [2.0, 1.0, 1.0]
    implicit, explicit = run(loaded), run(loaded, guidance_scale=(2, 1, 1), temperature=(0, 0, 1))
    assert np.array_equal(implicit.points, explicit.points) and np.array_equal(implicit.colors, explicit.colors)
    with pytest.raises(ValueError, match="default_temperature"):
        Sat2CityPipeline(**pipe.components, default_temperature=-1.0)


def test_a_metric_dsm_path_is_read_in_metres_never_as_gray(tmp_path):
    """A float GeoTIFF DSM whose heights happen to lie in 0..255 was read as 8-bit gray (rescaled
    to height_range, georeference dropped); an 8-bit PNG path still is gray."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from diffusers_city.pipelines.sat2city.pipeline_sat2city import load_height_map

    dsm = height_map().astype(np.float32)  # 0, 90 and 200 m
    profile = dict(driver="GTiff", width=32, height=32, count=1, dtype="float32", crs="EPSG:32633")
    with rasterio.open(tmp_path / "dsm.tif", "w", transform=from_origin(350000.0, 5600064.0, 2.0, 2.0), **profile) as dst:
        dst.write(dsm, 1)
    hmap = load_height_map(tmp_path / "dsm.tif", None, (0.0, 32.0), 64.0)
    assert hmap.crs == "EPSG:32633" and hmap.meters_per_pixel == 2.0 and hmap.origin[:2] == (350000.0, 5600000.0)
    np.testing.assert_allclose(hmap.height + hmap.origin[2], dsm[::-1])
    Image.fromarray(height_map()).save(tmp_path / "gray.png")
    gray = load_height_map(tmp_path / "gray.png", None, (0.0, 32.0), 64.0)
    assert gray.crs is None and gray.height.max() == pytest.approx(200 / 255 * 32)


@pytest.mark.filterwarnings("error")  # refused, not cast with a ComplexWarning
@pytest.mark.parametrize("dtype", [np.complex64, bool])
def test_complex_or_bool_height_maps_are_refused(pipe, dtype):
    with pytest.raises(ValueError, match=f"must hold real numbers .* got dtype {np.dtype(dtype)}"):
        run(pipe, height_map().astype(dtype))
