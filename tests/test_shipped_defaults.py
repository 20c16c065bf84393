"""The shipped default pipelines (`pipelines/<system>/default/`) and the README's main command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from diffusers import DiffusionPipeline
from PIL import Image
from plyfile import PlyData

from diffusers_city.cli import main
from diffusers_city.data import CityScene
from diffusers_city.pipelines.gaussiancity import demo as gaussiancity_demo
from diffusers_city.pipelines.sat2city import demo as sat2city_demo
from diffusers_city.presets import bundled_path, load_preset

SYSTEMS = ("sat2city", "gaussiancity")
IGNORED_KEYS = {"_class_name", "_diffusers_version", "scaling_factor", "appearance_scaling_factor"}


@pytest.mark.parametrize("system", SYSTEMS)
def test_default_is_small_safetensors_with_card(system):
    folder = bundled_path(system, "default")
    weights = sorted(folder.rglob("*.safetensors"))
    assert weights and not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert sum(w.stat().st_size for w in weights) <= 30_000_000
    card = (folder / "README.md").read_text()
    assert card.startswith("# ") and "from_pretrained" in card
    index = json.loads((folder / "model_index.json").read_text())
    small = load_preset(system, "small")["components"]
    for name, config in small.items():
        assert index[name] == ["diffusers_city", config["_class_name"]]
        saved = json.loads((folder / name / "config.json").read_text())
        expected = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
        assert {k: saved[k] for k in expected} == expected, f"{system}/{name} is not the small preset"


def test_readme_demo_command_on_the_shipped_defaults(tmp_path, capsys):
    """`diffusers-city demo`: both systems run on the CPU and write files other tools open."""
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out
    s2c = tmp_path / "sat2city"
    vertices = PlyData.read(str(s2c / "city.ply"))["vertex"]
    assert vertices.count > 5000 and {"x", "y", "z", "red", "nx"} <= set(vertices.data.dtype.names)
    mesh = trimesh.load(s2c / "city.glb", force="mesh")
    assert len(mesh.faces) > 1000 and np.isfinite(mesh.vertices).all()
    preview = np.asarray(Image.open(s2c / "city_preview.png").convert("L"))
    assert preview.std() > 5
    orbit = Image.open(s2c / "orbit.gif")
    assert orbit.n_frames == sat2city_demo.ORBIT_FRAMES and orbit.size == sat2city_demo.ORBIT_SIZE
    panel_w, panel_h = sat2city_demo.PANEL_SIZE
    assert_side_by_side(s2c / "input_output.png", panel_w, panel_h, panel_h)
    gc = tmp_path / "gaussiancity"
    orbit = Image.open(gc / "orbit.gif")
    assert orbit.n_frames == gaussiancity_demo.DEMO_FRAMES and orbit.size == gaussiancity_demo.DEMO_SIZE
    frame_w, frame_h = gaussiancity_demo.FRAME_SIZE
    assert_side_by_side(gc / "input_output.png", frame_w, frame_h, frame_h)
    assert PlyData.read(str(gc / "city.ply"))["vertex"].count > 1000


def assert_side_by_side(path: Path, width: int, height: int, input_side: int) -> None:
    """``input_output.png``: a square input panel beside a ``width`` x ``height`` output (at least
    640x480, the input at least 480 px), under a caption bar, neither blank."""
    assert width >= 640 and height >= 480 and input_side >= 480
    sheet = Image.open(path)
    bar = sheet.height - height
    assert sheet.size == (2 * width, height + bar) and 0 < bar < 60
    grey = np.asarray(sheet.convert("L"), dtype=np.float64)[bar:]
    margin = (width - input_side) // 2
    assert grey[:, margin : width - margin].std() > 10 and grey[:, width:].std() > 10


GOLDEN = Path(__file__).parent / "data" / "shipped_defaults_before_reshape.npz"


def test_shipped_defaults_reproduce_their_outputs_from_before_the_family_reshaping():
    """The shipped defaults give, for a fixed seed, what they gave before the classes were renamed
    and ``scaling_factor`` took its diffusers meaning (recorded in ``tests/data``): Sat2City with
    its stored default settings (then passed by hand: guidance (2, 1, 1), temperature (0, 0, 1)),
    GaussianCity's orbit frames. Tolerances: the recording is float16 (colours and pixels to
    ~5e-4), decoding ``x / (1 / s)`` instead of ``x * s`` rounds differently in the last bit, and
    a voxel whose occupancy logit sits at 0 can flip with such a change: a few voxels of 28k may."""
    golden = np.load(GOLDEN)
    s2c = DiffusionPipeline.from_pretrained(bundled_path("sat2city", "default"))
    s2c.set_progress_bar_config(disable=True)
    example = bundled_path("sat2city", "examples", "height_map.png")
    meta = json.loads(example.with_suffix(".json").read_text())
    out = s2c(str(example), num_inference_steps=10, generator=torch.Generator().manual_seed(0), **meta)
    before = {tuple(p): i for i, p in enumerate(np.round(golden["sat2city_points"], 3).tolist())}
    now = {tuple(p): i for i, p in enumerate(np.round(out.points, 3).tolist())}
    shared = sorted(before.keys() & now.keys())
    assert len(before.keys() ^ now.keys()) <= 0.001 * len(before), "the generated voxels changed"
    old = golden["sat2city_colors"][[before[p] for p in shared]].astype(np.float32)
    new = out.colors[[now[p] for p in shared]]
    np.testing.assert_allclose(new, old, atol=2e-3)

    gc = DiffusionPipeline.from_pretrained(bundled_path("gaussiancity", "default"))
    gc.set_progress_bar_config(disable=True)
    scene = CityScene.load(bundled_path("gaussiancity", "example_layout"))
    frames = gc(
        scene=scene,
        trajectory="orbit",
        num_frames=2,
        width=64,
        height=48,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        background=None,  # the recording's black sky (the default is now the demo's blue SKY)
    ).images
    np.testing.assert_allclose(frames, golden["gaussiancity_images"].astype(np.float32), atol=2e-3)


def test_shipped_sat2city_default_works_with_other_diffusers_schedulers():
    """DDIM (trained with), DPM-Solver++ and Euler, each from the shipped scheduler config, at 20
    steps: the city's height correlation with its input map agrees within 0.03."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from diffusers_city.data.noise import height_from_gray
    from diffusers_city.metrics import height_fidelity

    pipe = DiffusionPipeline.from_pretrained(bundled_path("sat2city", "default"))
    pipe.set_progress_bar_config(disable=True)
    example = bundled_path("sat2city", "examples", "height_map.png")
    meta = json.loads(example.with_suffix(".json").read_text())
    heights = height_from_gray(np.asarray(Image.open(example).convert("L"), dtype=np.float32), *meta["height_range"])
    ddim = pipe.scheduler
    correlation = {}
    for scheduler in (
        ddim,
        DPMSolverMultistepScheduler.from_config(ddim.config),
        EulerDiscreteScheduler.from_config(ddim.config),
    ):
        pipe.scheduler = scheduler
        out = pipe(str(example), num_inference_steps=20, generator=torch.Generator().manual_seed(0), **meta)
        correlation[type(scheduler).__name__] = height_fidelity(out.points, heights, meta["meters_per_pixel"])["pearson"]
    assert correlation["DDIMScheduler"] > 0.7, correlation
    for r in correlation.values():
        assert abs(r - correlation["DDIMScheduler"]) <= 0.03, correlation


def test_shipped_gaussiancity_renders_a_georeferenced_layout_as_at_origin_0():
    """A real point cloud's layout sits at its world origin (here 809 km, 6304 km, as UTM metres):
    the shipped decoders, trained on layouts at origin 0, see it in its own frame, so the layout
    moved there renders the frames it renders at origin 0 (not saturated colours) and its
    Gaussians come back at their world positions."""
    gc = DiffusionPipeline.from_pretrained(bundled_path("gaussiancity", "default"))
    gc.set_progress_bar_config(disable=True)
    scene = CityScene.load(bundled_path("gaussiancity", "example_layout"))
    geo = (809_000.0, 6_304_000.0, 35.0)
    run = dict(trajectory="orbit", num_frames=2, width=64, height=48, output_type="np", return_gaussians="visible")
    base = gc(scene=scene, generator=torch.Generator().manual_seed(0), **run)
    moved = gc(scene=scene.replace(origin=tuple(a + b for a, b in zip(scene.origin, geo))), styles=base.styles, **run)
    assert base.images.std() > 0.05
    np.testing.assert_allclose(moved.images, base.images, atol=1e-4)
    shift = torch.tensor(geo, dtype=torch.float64) + torch.tensor(scene.origin, dtype=torch.float64)
    for g0, g1 in zip(base.gaussians, moved.gaussians):
        assert g1.means.dtype == torch.float64 and len(g1) == len(g0)
        assert torch.allclose(g1.means - shift, g0.means.double(), atol=1e-6)
