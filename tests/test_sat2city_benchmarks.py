"""Smoke runs of the Sat2City benchmark scripts (``--device cpu --quick``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_loader import load_script


def load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_speed_quick(tmp_path, capsys):
    assert load("sat2city_speed").main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sat2city_speed.json").read_text())
    row = result["summary"][0]
    assert row["steps"] == 2 and row["total_s"] > 0 and row["voxels"] > 0
    assert all(row[k] > 0 for k in ("dense_diffusion", "sparse_diffusion", "appearance_diffusion", "mesh_extraction"))
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| 2 |")


def test_quality_quick(tmp_path, capsys):
    assert load("sat2city_quality").main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sat2city_quality.json").read_text())
    assert len(result["per_scene"]) == 2
    for method in ("generated", "baseline_extrusion"):
        assert {"mmd_cd", "mmd_emd", "cov_cd", "cov_emd"} <= set(result["coverage_mmd"][method])
    assert 0 < result["summary"]["color_l1_class_mean"] < 1
    assert 0.5 < result["summary"]["height_pearson_extrusion"] <= 1  # the noisy condition still follows the clean map
    dist = result["distribution"]
    metrics = ("instance_swd", "instance_mmd", "patch_swd", "patch_mmd")
    for method in ("pipeline", "class_mean", "perfect_sampler"):
        for key in (*metrics, "color_l1"):
            assert np.isfinite(dist[method][key]) and np.isfinite(dist[method][key + "_std"]), (method, key)
    for key in metrics:  # another sample of the data's generator is closer in distribution than the class means
        assert dist["perfect_sampler"][key] < dist["class_mean"][key], key
    assert all(0 < row["color_l1_perfect_sampler"] < 1 for row in result["per_scene"])
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("| perfect sampler") for line in out)
    assert "height correlation >= 0.9 required" in out[-1]


def test_stage_diagnosis_quick(tmp_path, capsys):
    assert load("sat2city_stage_diagnosis").main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sat2city_stage_diagnosis.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["ground_truth"] > 0.5  # voxelizing the clean map keeps its heights
    assert 0 <= rows[0]["dense_variance_share"] <= 1 and 0 <= rows[0]["sparse_variance_share"] <= 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| 0 | ")


def test_quality_sampling_arguments_are_one_value_or_three(tmp_path):
    parse = load("sat2city_quality").parse_args
    assert parse(["--out", str(tmp_path), "--device", "cpu"]).guidance_scale is None  # the pipeline's stored default
    assert parse(["--out", str(tmp_path), "--device", "cpu", "--guidance-scale", "3", "1", "1"]).guidance_scale == (3.0, 1.0, 1.0)
    with pytest.raises(SystemExit):
        parse(["--out", str(tmp_path), "--device", "cpu", "--guidance-scale", "3", "1"])
    assert parse(["--out", str(tmp_path), "--device", "cpu"]).temperature is None
    assert parse(["--out", str(tmp_path), "--device", "cpu", "--temperature", "0.5"]).temperature == 0.5
    assert parse(["--out", str(tmp_path), "--device", "cpu", "--temperature", "0", "0.5", "1"]).temperature == (0.0, 0.5, 1.0)
