"""benchmarks/compare_loss_curves.py on synthetic training logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

compare = load_script("benchmarks/compare_loss_curves.py")


def write_log(path: Path, steps: range, loss, seconds_per_step: float) -> Path:
    path.write_text(
        "".join(json.dumps({"step": s, "elapsed_s": 10 + s * seconds_per_step, "loss": loss(s)}) + "\n" for s in steps)
    )
    return path


def test_windows_and_throughput(tmp_path, capsys):
    one = write_log(tmp_path / "one.jsonl", range(5, 101, 5), lambda s: 1.0 / s, 0.5)
    two = write_log(tmp_path / "two.jsonl", range(5, 201, 5), lambda s: 2.0 / s, 0.25)
    assert compare.main([f"a={one}", f"b={two}", "--window", "50", "--samples-per-step", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    mean_a = sum(1.0 / s for s in range(5, 51, 5)) / 10
    assert out[2] == f"| 1-50 | {mean_a:.4g} | {2 * mean_a:.4g} |"
    assert out[3].startswith("| 51-100 |") and len(out) == 7  # only the steps both runs logged
    assert out[5] == "a: 2.000 steps/s, 32.0 samples/s over steps <= 100 (1.00x a)"
    assert out[6] == "b: 4.000 steps/s, 64.0 samples/s over steps <= 100 (2.00x a)"


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training log"):
        compare.main([f"a={tmp_path / 'missing.jsonl'}"])
    log = write_log(tmp_path / "x.jsonl", range(1, 3), lambda s: 1.0, 1.0)
    with pytest.raises(SystemExit):
        compare.main([f"a={log}", "--terms", "dense_bce"])
    with pytest.raises(SystemExit):
        compare.main([str(log)])
