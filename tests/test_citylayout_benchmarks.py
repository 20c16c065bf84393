"""benchmarks/citylayout_quality.py and citylayout_speed.py in their quick CPU modes on the tiny
preset: every row is computed and written, the table is printed last."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from script_loader import load_script

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("diffusers_city.pipelines.citylayout") is None,
    reason="diffusers_city.pipelines.citylayout is not on this branch yet",
)


@pytest.fixture(scope="module")
def tiny():
    from diffusers_city.pipelines.citylayout import CityLayoutPipeline

    return CityLayoutPipeline.from_preset("tiny")


def two_windows_m(pipe) -> float:
    """Side of a square whose token grid needs two sliding windows per axis (at least 128 m)."""
    cfg = pipe.config
    return max(128.0, (cfg.window_tokens + cfg.window_stride) * pipe.pixels_per_token * cfg.meters_per_pixel)


def test_seam_band_follows_the_interior_window_starts(tiny):
    quality = load_script("benchmarks/citylayout_quality.py")
    f, cfg = tiny.pixels_per_token, tiny.config
    grid = (cfg.window_tokens + cfg.window_stride,) * 2
    band = quality.seam_band(tiny, grid)
    assert band.shape == (grid[0] * f, grid[1] * f)
    half = quality.SEAM_BAND_TOKENS * f
    for r, c in tiny.window_starts(grid):
        if r > 0:
            assert band[r * f - half : r * f + half].all()
        if c > 0:
            assert band[:, c * f - half : c * f + half].all()
    corner = min(s for start in tiny.window_starts(grid) for s in start if s > 0) * f - half
    if corner > 0:
        assert not band[:corner, :corner].any()  # the map corner is no window border
    assert quality.seam_band(tiny, (cfg.window_tokens,) * 2) is None  # one window: no interior border


def test_quality_quick_scores_every_row_and_the_seams(tiny, tmp_path, capsys):
    quality = load_script("benchmarks/citylayout_quality.py")
    size = two_windows_m(tiny)
    assert quality.main(["--device", "cpu", "--quick", "--size_m", str(size), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["num_layouts"] == 2 and result["repeats"] == 1 and result["size_m"] == size
    assert set(result["rows"]) == {k for k, _ in quality.ROWS}
    for key, row in result["rows"].items():
        assert set(quality.LAYOUT_DISTANCE_METRICS) <= set(row), key
        # class areas always compare; a W1 may be NaN where untrained weights draw no building
        assert math.isfinite(row["class_tv"]) and math.isfinite(row["road_fraction_abs"]), key
    perfect = result["rows"]["perfect_sampler"]
    assert all(math.isfinite(perfect[m]) for m in quality.LAYOUT_DISTANCE_METRICS)
    assert set(result["seams"]) == {k for k, _ in quality.SEAM_ROWS}
    assert all(math.isfinite(result["seams"]["held_out"][m]) for m in quality.LAYOUT_DISTANCE_METRICS)
    assert result["seconds_per_layout"] > 0 and result["seconds_per_km2"] > 0
    printed = capsys.readouterr().out
    table = (tmp_path / "results.md").read_text()
    assert printed.rstrip().endswith(table.rstrip())
    for _, label in (*quality.ROWS, *quality.SEAM_ROWS):
        assert f"| {label} |" in table


def test_speed_quick_times_each_size(tiny, tmp_path, capsys):
    speed = load_script("benchmarks/citylayout_speed.py")
    assert speed.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["results"]
    assert [r["size_km2"] for r in rows] == sorted(r["size_km2"] for r in rows) and len(rows) == 2
    f, mpp = tiny.pixels_per_token, tiny.config.meters_per_pixel
    for r in rows:
        assert r["seconds"] > 0 and r["seconds_per_km2"] > 0 and r["peak_memory_gb"] > 0
        assert r["map_px"] == [g * f for g in r["token_grid"]]
        assert math.isclose(r["generated_km2"], r["map_px"][0] * r["map_px"][1] * mpp**2 / 1e6)
    assert rows[1]["windows"] >= rows[0]["windows"] >= 1
    assert rows[1]["peak_memory_gb"] >= rows[0]["peak_memory_gb"]  # the CPU figure is a running peak
    assert capsys.readouterr().out.rstrip().endswith((tmp_path / "results.md").read_text().rstrip())
