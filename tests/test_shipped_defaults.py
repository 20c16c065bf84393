"""The shipped default pipelines (`pipelines/<system>/default/`) and the README's main command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from PIL import Image
from plyfile import PlyData

from diffusers_city.cli import main
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
    gc = tmp_path / "gaussiancity"
    assert Image.open(gc / "orbit.gif").n_frames > 1
    assert PlyData.read(str(gc / "city.ply"))["vertex"].count > 1000
