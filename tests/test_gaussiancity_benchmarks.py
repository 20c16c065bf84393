"""benchmarks/gaussiancity_quality.py in its quick CPU mode: every table row is computed and written."""

import json
import math

from script_loader import load_script


def test_quality_quick_with_fitted_styles_and_ceilings(tmp_path):
    quality = load_script("benchmarks/gaussiancity_quality.py")
    assert quality.main(["--device", "cpu", "--quick", "--fit_styles", "2", "--ceilings", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gaussiancity_quality.json").read_text())
    assert result["views"] == 2 and len(result["per_view"]) == 2
    assert result["gain_db"] == result["psnr_pipeline"] - result["psnr_class_mean_baseline"]
    fitted = result["fitted_styles"]
    assert fitted["steps"] == 2 and len(fitted["per_view"]) == 1  # 2 views: fitted on one, scored on the other
    assert all(math.isfinite(fitted[k]) for k, _ in quality.FIT_ROWS)
    assert set(result["ceilings"]) == {k for k, _ in quality.CEILING_ROWS}
    table = (tmp_path / "gaussiancity_quality.md").read_text()
    for _, label in (*quality.FIT_ROWS, *quality.CEILING_ROWS):
        assert f"| {label} |" in table
