"""Smoke runs of the EarthCrafter benchmark scripts (``--device cpu --quick``) and their helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from script_loader import load_script

from diffusers_city.data.classes import GROUND, ROAD, ROOF, VEGETATION

MEASUREMENTS = {
    "StructVAE reconstruction": {"voxel IoU", "voxel accuracy"},
    "TexVAE reconstruction": {"PSNR (dB)", "SSIM"},
    "Semantic condition followed": {"building-column IoU", "road/water cells flat"},
    "Image condition followed": {"nadir PSNR vs orthophoto (dB)"},
    "Unconditional samples": {
        "COV-CD (higher is better)",
        "COV-EMD (higher is better)",
        "MMD-CD (lower is better)",
        "MMD-EMD (lower is better)",
    },
}


@pytest.fixture(scope="module")
def quality():
    return load_script("benchmarks/earthcrafter_quality.py")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quality_quick_has_every_row_with_finite_numbers(quality, tmp_path, capsys):
    assert quality.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "earthcrafter_quality.json").read_text())
    rows = result["rows"]
    got = {}
    for r in rows:
        got.setdefault(r["measurement"], set()).add(r["metric"])
        assert math.isfinite(r["ours"]) and r["baselines"], r
        assert all(math.isfinite(v) for v in r["baselines"].values()), r
    for measurement, metrics in MEASUREMENTS.items():
        assert got[measurement] == metrics
    assert len(got["Guidance interval (other tiles)"]) == 3
    assert result["pipeline_defaults"] == {"guidance_scale": 3.0, "guidance_interval": [0.0, 1.0]}
    semantic = next(r for r in rows if r["metric"] == "building-column IoU")
    assert semantic["baselines"]["ground-truth structure (ceiling)"] > 0.7, "the measurement finds the map's buildings"
    image = next(r for r in rows if r["measurement"] == "Image condition followed")
    ceiling = image["baselines"]["ground-truth structure, own colours (ceiling)"]
    assert ceiling > image["baselines"]["ground-truth structure, per-class mean colours"]
    perfect = next(r for r in rows if r["metric"].startswith("MMD-CD"))["baselines"]
    assert perfect["tiles of another seed range (perfect sampler)"] < perfect["flat ground plane"]
    out = capsys.readouterr().out
    assert "guidance interval: semantic IoU:" in out
    assert out.strip().splitlines()[-1].startswith("Guidance-interval rows: validation indices 2..3")


def test_quality_vae_rows_from_training_folders(quality, tmp_path, capsys):
    from diffusers_city import EarthCrafterPipeline

    pipe = EarthCrafterPipeline.from_preset("tiny")
    pipe.struct_vae.save_pretrained(tmp_path / "struct_run" / "struct_vae")  # a train_earthcrafter_vae.py output folder
    pipe.tex_vae.save_pretrained(tmp_path / "tex_vae")  # or the model folder itself
    argv = ["--device", "cpu", "--preset", "tiny", "--num-tiles", "1", "--class-mean-tiles", "1", "--out", str(tmp_path / "o")]
    assert quality.main([*argv, "--vae-dirs", str(tmp_path / "struct_run"), str(tmp_path / "tex_vae")]) == 0
    rows = json.loads((tmp_path / "o" / "earthcrafter_quality.json").read_text())["rows"]
    assert {r["measurement"] for r in rows} == {"StructVAE reconstruction", "TexVAE reconstruction"}
    assert all(math.isfinite(r["ours"]) for r in rows)
    with pytest.raises(FileNotFoundError, match="no EarthCrafterTexVAE"):
        quality.main([*argv, "--vae-dirs", str(tmp_path / "struct_run"), "--rows", "tex_vae"])
    assert quality.main([*argv, "--vae-dirs", str(tmp_path / "struct_run")]) == 0  # the rows of the VAEs found
    rows = json.loads((tmp_path / "o" / "earthcrafter_quality.json").read_text())["rows"]
    assert {r["measurement"] for r in rows} == {"StructVAE reconstruction"}


def test_nadir_render_matches_the_orthophoto_orientation(quality):
    """A bright surfel at tile pixel row 1 (y), column 3 (x) lands there in the nadir render."""
    L, v, size = 8, 2.0, 16
    centre = torch.tensor([[(3 + 0.5) * v, (1 + 0.5) * v, 0.0]])
    g = quality.Gaussians.from_points(centre, torch.ones(1, 3), scale=0.7 * v, normals=torch.tensor([[0.0, 0.0, 1.0]]))
    img = quality.render_nadir(g, L, v, size)[..., 0]
    row, col = np.unravel_index(int(img.argmax()), img.shape)
    assert (row // 2, col // 2) == (1, 3)


def test_heightfield_and_building_columns():
    q = load_script("benchmarks/earthcrafter_quality.py")
    top = np.zeros((4, 4), np.int64)
    top[1, 2] = 3  # a tower at y = 1, x = 2
    voxels = q.heightfield_voxels(top)
    assert len(voxels) == 15 + 3 and {tuple(c) for c in voxels if c[2] > 0} == {(2, 1, 1), (2, 1, 2), (2, 1, 3)}
    assert (q.column_tops(voxels, 4) == top).all()
    built = q.building_columns(voxels, 4, threshold_voxels=1.5)
    assert built.sum() == 1 and built[1, 2]
    semantic = np.full((4, 4), GROUND)
    semantic[1, 2], semantic[3, :] = ROOF, ROAD
    assert q.follow_semantic([voxels], [semantic], 4, 1.5) == {"iou": 1.0, "flat": 1.0}
    moved = np.full((4, 4), GROUND)
    moved[0, 0], moved[1, 2] = ROOF, ROAD  # the tower now stands on a road cell and misses the building
    assert q.follow_semantic([voxels], [moved], 4, 1.5) == {"iou": 0.0, "flat": 0.0}
    top[0, 0] = 3  # a second tall column: a tree where the map has vegetation is not judged ...
    semantic[0, 0] = VEGETATION
    trees = q.heightfield_voxels(top)
    assert q.follow_semantic([trees], [semantic], 4, 1.5) == {"iou": 1.0, "flat": 1.0}
    semantic[0, 0] = GROUND  # ... one on open ground is a false building
    assert q.follow_semantic([trees], [semantic], 4, 1.5)["iou"] == 0.5


def test_quality_refuses_bad_arguments(quality, tmp_path):
    with pytest.raises(ValueError, match="give --pretrained"):
        quality.parse_args(["--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="need a pipeline"):
        quality.parse_args(["--device", "cpu", "--vae-dirs", str(tmp_path), "--rows", "semantic", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="candidate-interval"):
        quality.parse_args(["--device", "cpu", "--quick", "--candidate-interval", "0.9", "0.1", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        quality.parse_args(["--device", "cpu", "--pretrained", str(tmp_path), "--out", str(tmp_path)])


def test_speed_quick(tmp_path, capsys):
    speed = load_script("benchmarks/earthcrafter_speed.py")
    assert speed.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "earthcrafter_speed.json").read_text())
    summary = result["summary"]
    assert result["teacher_forced"] and summary["voxels"] > 0
    assert all(summary[k] > 0 for k in ("total_s", *speed.STAGES))
    assert sum(summary[k] for k in speed.STAGES) <= summary["total_s"] * 1.01
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| ")


def test_stage_diagnosis_quick(tmp_path, capsys):
    diagnosis = load_script("benchmarks/earthcrafter_stage_diagnosis.py")
    assert diagnosis.main(["--quick", "--first-tile", "1", "--guidance-scale", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["tiles"] == [1, 2] and result["guidance_scale"] == 2.0
    assert set(result["rows"]) == {key for key, _ in diagnosis.ROWS}
    # the ground truth follows its own map (the ceiling of the measure); every value is a fraction
    assert result["rows"]["ground truth"]["iou"] > 0.9 and result["rows"]["ground truth"]["flat"] == 1.0
    assert all(0.0 <= r[k] <= 1.0 for r in result["rows"].values() for k in ("iou", "flat"))
    assert 0.0 <= result["occupancy_cell_iou"] <= 1.0
    assert "Occupancy stage" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--guidance-scale", "0.5"], ["--first-tile", "-1"]])
def test_stage_diagnosis_refuses_bad_settings(tmp_path, flags):
    diagnosis = load_script("benchmarks/earthcrafter_stage_diagnosis.py")
    with pytest.raises(ValueError, match="guidance-scale|first-tile"):
        diagnosis.main(["--quick", *flags, "--out", str(tmp_path)])


def test_stage_diagnosis_teacher_forcing_replaces_the_occupancy_stage():
    diagnosis = load_script("benchmarks/earthcrafter_stage_diagnosis.py")
    coords = np.array([[0, 0, 0], [9, 9, 9], [15, 0, 3]])
    target = diagnosis.true_occupancy(coords, 8, 2)
    assert target.shape == (2, 2, 2) and int((target > 0).sum()) == 3
    assert target[0, 0, 0] == target[1, 1, 1] == target[1, 0, 0] == 1 and target[0, 1, 0] == -1
    seen = {}

    class Stage:
        stage = "occupancy"

    out = diagnosis.occupancy_forcing(target, seen)(Stage(), 0, 0, {"latents": torch.zeros(1, 1, 2, 2, 2)})
    assert torch.equal(out["latents"][0, 0], target) and seen["occupancy"] is out["latents"]
    Stage.stage = "struct"
    kept = {"latents": torch.zeros(3, 4)}
    assert diagnosis.occupancy_forcing(target, seen)(Stage(), 0, 0, kept) is kept
    assert diagnosis.cell_iou(target, target) == 1.0 and diagnosis.cell_iou(-target, target) == 0.0
