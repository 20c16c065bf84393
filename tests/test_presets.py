"""Presets: bundled folder, loading with clear errors, building untrained pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from diffusers_city import presets, register

REPO = Path(__file__).resolve().parents[1]


@register
class PresetTestModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 2):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)


@register
class PresetTestPipeline(DiffusionPipeline):
    def __init__(self, model: PresetTestModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> Path:
    """A bundled folder with one system, `toy`, with presets tiny and small."""
    root = tmp_path / "pipelines"
    (root / "toy" / "presets").mkdir(parents=True)
    for size, width in (("tiny", 3), ("small", 5)):
        preset = {
            "_class_name": "PresetTestPipeline",
            "components": {"model": {"_class_name": "PresetTestModel", "width": width}},
            "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 10},
            "notes": f"{size} toy",
        }
        (root / "toy" / "presets" / f"{size}.json").write_text(json.dumps(preset))
    monkeypatch.setattr(presets, "BUNDLED_ROOT", root)
    return root


def test_symlink_points_at_top_level_pipelines():
    link = Path(presets.__file__).parent / "_bundled"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "pipelines").resolve()
    assert presets.bundled_path("sat2city", "presets") == link / "sat2city" / "presets"


def test_shipped_presets_parse():
    for system in presets.available_systems():
        for size in presets.available_sizes(system):
            assert isinstance(presets.load_preset(system, size)["components"], dict)


def test_load_preset_and_errors(bundled):
    assert presets.available_systems() == ["toy"]
    assert presets.available_sizes("toy") == ["small", "tiny"]
    assert presets.load_preset("toy", "small")["notes"] == "small toy"
    with pytest.raises(FileNotFoundError, match=r"'paper'.*\['small', 'tiny'\]"):
        presets.load_preset("toy", "paper")
    with pytest.raises(FileNotFoundError, match=r"'nope'.*\['toy'\]"):
        presets.load_preset("nope", "tiny")
    (bundled / "toy" / "presets" / "broken.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="components"):
        presets.load_preset("toy", "broken")


def test_build_pipeline_is_seeded_and_leaves_global_rng(bundled):
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    pipe = presets.build_pipeline("toy", "small", seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert isinstance(pipe, PresetTestPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.model.config.width == 5 and pipe.scheduler.config.num_train_timesteps == 10
    again = presets.build_pipeline("toy", "small", seed=1)
    other = presets.build_pipeline("toy", "small", seed=2)
    assert torch.equal(again.model.linear.weight, pipe.model.linear.weight)
    assert not torch.equal(other.model.linear.weight, pipe.model.linear.weight)


def test_build_pipeline_names_a_bad_class(bundled):
    preset = presets.load_preset("toy", "tiny")
    preset["components"]["model"]["_class_name"] = "NoSuchModel"
    (bundled / "toy" / "presets" / "bad.json").write_text(json.dumps(preset))
    with pytest.raises(ValueError, match="NoSuchModel"):
        presets.build_pipeline("toy", "bad")


@pytest.mark.parametrize("size", ["../../sat2city/presets/tiny", "/etc/passwd", "..", "tiny/../tiny", "", 3, None])
def test_preset_names_cannot_reach_outside_the_bundled_presets(size):
    """``build_pipeline("gaussiancity", "../../sat2city/presets/tiny")`` returned a Sat2City pipeline."""
    with pytest.raises(ValueError, match="plain name"):
        presets.build_pipeline("gaussiancity", size)
    with pytest.raises(ValueError, match="plain name"):
        presets.load_preset(size, "tiny")
