"""training/train_gaussiancity.py: a few CPU steps on procedural cities, resume, GoogleEarth loader."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_loader import load_script
from training_helpers import GAUSSIANCITY_TINY, fail_after_saving

from diffusers_city import GaussianCityPipeline
from diffusers_city.data.classes import ROAD, ROOF


@pytest.fixture(scope="module")
def train():
    return load_script("training/train_gaussiancity.py")


COMMON = [*GAUSSIANCITY_TINY, "--validation_steps", "2"]


def test_train_steps_resume_and_saved_pipeline(train, tmp_path, capsys):
    out = tmp_path / "run"
    layout_dir = tmp_path / "layout"
    assert train.main([*COMMON, "--output_dir", str(out), "--max_train_steps", "2", "--example_layout_out", str(layout_dir)]) == 0
    assert "perceptual term off" in capsys.readouterr().out
    assert (out / "checkpoint-2").is_dir()
    assert (out / "validation" / "step-2" / "held_out.png").is_file()
    first = GaussianCityPipeline.from_pretrained(out / "pipeline")
    assert (layout_dir / "scene.json").is_file()
    assert train.main([*COMMON, "--output_dir", str(out), "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]) == 0
    assert "Resuming from" in capsys.readouterr().out
    resumed = GaussianCityPipeline.from_pretrained(out / "pipeline")
    for name in ("scene_encoder", "background_decoder", "building_decoder"):
        pairs = zip(getattr(first, name).parameters(), getattr(resumed, name).parameters())
        assert any(not torch.equal(a, b) for a, b in pairs), f"{name} did not train"


def test_fine_tune_starts_from_a_saved_pipeline(train, tmp_path):
    start = GaussianCityPipeline.from_preset("tiny", seed=5)
    start.save_pretrained(tmp_path / "start")
    out = tmp_path / "run"
    assert (
        train.main(
            [
                *COMMON,
                "--output_dir",
                str(out),
                "--max_train_steps",
                "1",
                "--learning_rate",
                "0",
                "--init_from",
                str(tmp_path / "start"),
            ]
        )
        == 0
    )
    tuned = GaussianCityPipeline.from_pretrained(out / "pipeline")
    for name in ("scene_encoder", "background_decoder", "building_decoder"):
        pairs = zip(getattr(start, name).state_dict().values(), getattr(tuned, name).state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs), f"{name} did not start from --init_from"


def _synthetic_googleearth(root: Path) -> None:
    for c in range(2):
        city = root / f"city{c}"
        (city / "frames").mkdir(parents=True)
        sem = np.full((16, 16), ROAD, np.uint8)
        sem[4:10, 4:10] = ROOF
        Image.fromarray(sem).save(city / "semantic.png")
        hgt = np.zeros((16, 16), np.float32)
        hgt[4:10, 4:10] = 8
        np.save(city / "height.npy", hgt)
        frames = []
        for i in range(2):
            Image.fromarray(np.full((32, 48, 3), 40 * (i + 1), np.uint8)).save(city / "frames" / f"{i}.png")
            w2c = [[1, 0, 0, -8], [0, -1, 0, 8], [0, 0, -1, 20], [0, 0, 0, 1]]  # looking straight down
            frames.append({"file": f"frames/{i}.png", "K": [[80, 0, 24], [0, 80, 16], [0, 0, 1]], "world_to_cam": w2c})
        (city / "cameras.json").write_text(json.dumps({"meters_per_pixel": 1.0, "frames": frames}))


def test_googleearth_loader_and_training(train, tmp_path):
    root = tmp_path / "ge"
    _synthetic_googleearth(root)
    layout, frames = train.load_googleearth_city(root / "city0", 24, 16)
    assert layout.num_instances == 1 and len(frames) == 2
    cam, rgb = frames[0]
    assert rgb.shape == (16, 24, 3) and float(cam.K[0, 0, 0]) == 40.0
    seg, covered = train.segmentation(layout, cam, torch.device("cpu"))
    assert covered.all() and int(seg[8, 12]) == ROOF and {ROAD, ROOF} <= set(seg.unique().tolist())
    out = tmp_path / "run"
    assert (
        train.main(
            [*COMMON, "--data", "googleearth", "--data_dir", str(root), "--output_dir", str(out), "--max_train_steps", "1"]
        )
        == 0
    )
    assert (out / "pipeline" / "model_index.json").is_file()


def test_bad_arguments(train, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        train.parse_args(["--data", "googleearth", "--data_dir", str(tmp_path / "none")])
    with pytest.raises(ValueError, match="resolution"):
        train.parse_args(["--resolution", "big"])
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="cameras.json"):
        train.load_googleearth_city(tmp_path / "c", 8, 8)


def test_failed_save_keeps_the_previous_pipeline(train, tmp_path, monkeypatch):
    """A pipeline save failing at its building decoder leaves the previous pipeline folder whole
    (never new encoder weights beside an old decoder) and no temporary folder beside it."""
    out, folder = tmp_path / "run", tmp_path / "pipe"
    args = [*COMMON, "--output_dir", str(out), "--pipeline_out", str(folder)]
    assert train.main([*args, "--max_train_steps", "1"]) == 0
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    decoder = type(GaussianCityPipeline.from_pretrained(folder).building_decoder)
    fail_after_saving(monkeypatch, decoder)
    with pytest.raises(OSError, match="No space left"):
        train.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "run"]


def test_shipped_folders_need_update_shipped(train):
    from diffusers_city.presets import bundled_path

    for flag, target in (("--pipeline_out", "default"), ("--example_layout_out", "example_layout")):
        with pytest.raises(ValueError, match=f"{flag} .*inside the shipped files.*--update_shipped"):
            train.parse_args([flag, str(bundled_path("gaussiancity", target))])
        assert train.parse_args([flag, str(bundled_path("gaussiancity", target)), "--update_shipped"]).update_shipped
