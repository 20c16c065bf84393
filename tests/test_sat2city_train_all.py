"""train_sat2city_all.sh end to end on the tiny preset (CPU), then the demo on its result."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from diffusers_city import Sat2CityPipeline
from diffusers_city.pipelines.sat2city import demo

ROOT = Path(__file__).resolve().parents[1]


SCRIPT = ROOT / "training" / "train_sat2city_all.sh"
SHIPPED = ROOT / "pipelines" / "sat2city"


def shipped_files() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in SHIPPED.rglob("*") if p.is_file() and "presets" not in p.parts}


def test_train_all_assembles_a_pipeline_and_the_demo_runs_it(tmp_path, monkeypatch):
    """The documented command (no --examples-dir) writes the example beside --dest, not into the repo."""
    out = tmp_path / "runs"
    dest = tmp_path / "bundled" / "sat2city" / "default"
    examples = tmp_path / "bundled" / "sat2city" / "examples"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(SCRIPT),
        "--preset",
        "tiny",
        "--cpu",
        "--steps",
        "1",
        "--output-dir",
        str(out),
        "--dest",
        str(dest),
        "--dtype",
        "fp16",
        "--checkpointing-steps",
        "1",
        "--validation-steps",
        "1000",
    ]
    before = shipped_files()
    result = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shipped_files() == before
    for stage in ("VAE", "dense", "sparse", "appearance"):
        assert f"{stage} stage:" in result.stdout
    pipe = DiffusionPipeline.from_pretrained(dest, dtype=torch.float32)
    assert type(pipe) is Sat2CityPipeline
    assert pipe.dense_vae.config.scaling_factor == json.loads((out / "dense" / "latent_scale.json").read_text())["scaling_factor"]
    assert (
        pipe.sparse_vae.config.appearance_scaling_factor
        == json.loads((out / "appearance" / "latent_scale.json").read_text())["scaling_factor"]
    )
    stored = next((dest / "dense_unet").glob("*.safetensors"))
    from safetensors.torch import load_file

    assert next(iter(load_file(stored).values())).dtype == torch.float16
    assert (examples / "height_map.png").is_file() and "height_range" in json.loads((examples / "height_map.json").read_text())

    # one optimizer step leaves the occupancy heads undecided: keep voxels so the demo has output
    for decoder in (pipe.dense_vae.decoder, pipe.sparse_vae.geometry_decoder):
        for head in decoder.occupancy_heads:
            torch.nn.init.constant_(head[1].bias, 3.0)
    pipe.save_pretrained(dest)
    monkeypatch.setattr(demo, "bundled_path", lambda *parts: tmp_path.joinpath("bundled", *parts))
    monkeypatch.setattr(demo, "DEMO_STEPS", 2)
    monkeypatch.setattr(demo, "ORBIT_FRAMES", 2)
    monkeypatch.setattr(demo, "ORBIT_SIZE", (48, 36))
    monkeypatch.setattr(demo, "PANEL_SIZE", (64, 48))
    paths = demo.run_demo(tmp_path / "demo", "cpu")
    assert sorted(p.name for p in paths) == ["city.glb", "city.ply", "city_preview.png", "input_output.png", "orbit.gif"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_train_all_refuses_the_shipped_folders_without_update_shipped(tmp_path):
    """Before any training: a --dest or --examples-dir inside pipelines/ needs --update-shipped."""
    before = shipped_files()
    base = [str(SCRIPT), "--preset", "tiny", "--cpu", "--steps", "1", "--output-dir", str(tmp_path / "runs")]
    for target in (
        ["--dest", str(SHIPPED / "default")],
        ["--dest", str(tmp_path / "pipe"), "--examples-dir", str(SHIPPED / "examples")],
    ):
        result = subprocess.run([*base, *target], check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "pass --update-shipped" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists() and shipped_files() == before
