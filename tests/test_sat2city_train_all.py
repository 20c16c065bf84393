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


def test_train_all_assembles_a_pipeline_and_the_demo_runs_it(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    dest = tmp_path / "bundled" / "sat2city" / "default"
    examples = tmp_path / "bundled" / "sat2city" / "examples"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(ROOT / "training" / "train_sat2city_all.sh"),
        "--preset",
        "tiny",
        "--cpu",
        "--steps",
        "1",
        "--output-dir",
        str(out),
        "--dest",
        str(dest),
        "--examples-dir",
        str(examples),
        "--dtype",
        "fp16",
        "--checkpointing-steps",
        "1",
        "--validation-steps",
        "1000",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("VAE", "dense", "sparse", "appearance"):
        assert f"{stage} stage:" in result.stdout
    pipe = DiffusionPipeline.from_pretrained(dest, torch_dtype=torch.float32)
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
    paths = demo.run_demo(tmp_path / "demo", "cpu")
    assert sorted(p.name for p in paths) == ["city.glb", "city.ply", "city_preview.png"]
    assert all(p.stat().st_size > 0 for p in paths)
