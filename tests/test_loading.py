"""Weights are checked at load: a registered model's or pipeline's ``from_pretrained`` refuses
non-finite values (a corrupt ``.safetensors``) and parameters the checkpoint lacks (left on
the meta device), naming the component and the tensor (``diffusers_city.utils.loading``)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from diffusers_city import BEVPointDecoder, GaussianCityPipeline

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading") / "gaussiancity"
    GaussianCityPipeline.from_preset("tiny").save_pretrained(folder)
    return folder


@pytest.fixture
def folder(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "pipe")


def poison(path, value: float = np.nan, index: int = 0) -> str:
    """Overwrite the first value of the ``index``-th float32 tensor (by name) of a safetensors
    file with ``value`` in place, as flipped exponent bits would; returns the tensor's name."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    names = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    name = names[index]
    start = 8 + n + header[name]["data_offsets"][0]
    with path.open("r+b") as f:
        f.seek(start)
        f.write(np.array([value], np.float32).tobytes())
    return name


def test_a_nan_weight_is_refused_naming_the_component_and_tensor(folder):
    name = poison(folder / "building_decoder" / WEIGHTS)
    with pytest.raises(ValueError, match=r"building_decoder") as err:
        GaussianCityPipeline.from_pretrained(folder)
    assert name in str(err.value) and "non-finite" in str(err.value)
    with pytest.raises(ValueError, match=rf"BEVPointDecoder from .*building_decoder: non-finite .*{name}"):
        BEVPointDecoder.from_pretrained(folder, subfolder="building_decoder")


def test_an_inf_weight_is_refused(folder):
    name = poison(folder / "scene_encoder" / WEIGHTS, np.inf, index=-1)
    with pytest.raises(ValueError, match=rf"scene_encoder.*non-finite.*{name} \(1 of"):
        GaussianCityPipeline.from_pretrained(folder)


def test_layers_missing_from_the_weights_are_refused_naming_them(folder):
    config_path = folder / "building_decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["mlp_layers"] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"building_decoder.*have no weights in the checkpoint \(left on the meta device\): "):
        GaussianCityPipeline.from_pretrained(folder)


def test_an_intact_folder_loads(folder):
    pipe = GaussianCityPipeline.from_pretrained(folder)
    assert all(not p.is_meta for p in pipe.building_decoder.parameters())


def edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "file, changes, match",
    [
        (
            "building_decoder/config.json",
            {"num_classes": {}},
            r"BEVPointDecoder from .*building_decoder: its config cannot build it \(TypeError",
        ),
        (
            "scene_encoder/config.json",
            {"out_channels": -3},
            r"BEVSceneEncoder from .*scene_encoder: its config cannot build it",
        ),
        ("building_decoder/config.json", {"use_relative": False}, r"BEVPointDecoder from .*building_decoder: Cannot load"),
        ("model_index.json", {"scene_encoder": 1.5}, r"GaussianCityPipeline from .*pipe: its config cannot build it"),
    ],
    ids=["dict-for-int", "negative-width", "weights-of-other-shapes", "component-entry-float"],
)
def test_a_config_that_cannot_build_the_model_is_refused_naming_the_folder(folder, file, changes, match):
    """Were TypeError / RuntimeError / a ValueError naming no file."""
    edit_json(folder / file, **changes)
    with pytest.raises(ValueError, match=match):
        GaussianCityPipeline.from_pretrained(folder)


def test_every_registered_model_and_pipeline_checks_on_load():
    from diffusers import DiffusionPipeline, ModelMixin

    from diffusers_city._registration import registered

    loadable = {n: c for n, c in registered().items() if issubclass(c, (ModelMixin, DiffusionPipeline))}
    assert {"GaussianCityPipeline", "Sat2CityPipeline", "BEVPointDecoder", "Sat2CitySparseVAE"} <= set(loadable)
    assert [n for n, c in loadable.items() if not getattr(c.from_pretrained, "_checks_loaded_weights", False)] == []


def test_a_pipeline_check_names_each_component():
    import torch

    from diffusers_city.utils.loading import check_loaded_pipeline

    pipe = GaussianCityPipeline.from_preset("tiny")
    check_loaded_pipeline(pipe)
    with torch.no_grad():
        next(pipe.scene_encoder.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"pipeline: component 'scene_encoder' \(BEVSceneEncoder\): non-finite"):
        check_loaded_pipeline(pipe)
