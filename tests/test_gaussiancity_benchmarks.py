"""benchmarks/gaussiancity_quality.py and gaussiancity_speed.py in their quick CPU modes: every
table row is computed and written."""

import json
import math

from script_loader import load_script


def test_quality_quick_with_fitted_styles_and_ceilings(tmp_path):
    quality = load_script("benchmarks/gaussiancity_quality.py")
    assert (
        quality.main(
            ["--device", "cpu", "--quick", "--fit_styles", "2", "--ceilings", "--decode_chunk_size", "2", "--out", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "gaussiancity_quality.json").read_text())
    assert result["views"] == 2 and len(result["per_view"]) == 2
    assert result["gain_db"] == result["psnr_pipeline"] - result["psnr_class_mean_baseline"]
    fitted = result["fitted_styles"]
    assert fitted["steps"] == 2 and len(fitted["per_view"]) == 1  # 2 views: fitted on one, scored on the other
    assert all(math.isfinite(fitted[k]) for k, _ in quality.FIT_ROWS)
    assert set(result["ceilings"]) == {k for k, _ in quality.CEILING_ROWS}
    chunk = result["decode_chunk"]
    assert chunk["size"] == 2 and len(chunk["per_view"]) == 2 and math.isfinite(chunk["psnr"])
    assert chunk["per_view"] != [row[0] for row in result["per_view"]]  # the two views decoded together: other context
    table = (tmp_path / "gaussiancity_quality.md").read_text()
    for _, label in (*quality.FIT_ROWS, *quality.CEILING_ROWS):
        assert f"| {label} |" in table
    assert "| GaussianCity, a city's views decoded together, 2 at a time |" in table
    dist = result["distribution"]
    assert set(dist) == {k for k, _ in quality.DISTRIBUTION_ROWS}
    for key, label in quality.DISTRIBUTION_ROWS:
        assert all(math.isfinite(dist[key][m]) for m in quality.DISTRIBUTION_METRICS)
        assert f"| {label} |" in table
    # another sample of the generator is closer to the ground truth's colour distribution than a flat mean
    assert dist["perfect_sampler"]["instance_swd"] < dist["class_mean"]["instance_swd"]
    assert len(result["per_view_perfect_sampler"]) == 2


def test_speed_quick_in_chunks_decodes_each_point_once_per_chunk(tmp_path):
    speed = load_script("benchmarks/gaussiancity_speed.py")
    out = {}
    for chunk in (1, 3):
        assert (
            speed.main(["--device", "cpu", "--quick", "--decode_chunk_size", str(chunk), "--out", str(tmp_path / str(chunk))])
            == 0
        )
        out[chunk] = json.loads((tmp_path / str(chunk) / "gaussiancity_speed.json").read_text())
    for r in out[1]["results"]:
        assert r["points_decoded_per_frame"] == r["points_per_frame"] > 0 and r["fps"] > 0
    for r in out[3]["results"]:
        # The frames of a chunk overlap: each point is decoded once however many frames see it.
        assert 0 < r["points_decoded_per_frame"] < r["points_per_frame"] and r["decode_chunk_size"] == 3
    assert "| decoded/frame |" in (tmp_path / "3" / "gaussiancity_speed.md").read_text()
