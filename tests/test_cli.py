"""The diffusers-city command line: dispatch, lazy subcommands, info and demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusers_city import cli, presets


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as exit_:
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_every_subcommand(capsys):
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0
    for name in ("info", "demo", "scene", "generate"):
        assert name in out
    rc, out, _ = run_main(capsys, "generate", "--help")
    assert rc == 0 and "sat2city" in out and "gaussiancity" in out


def test_missing_subcommand_module_is_reported(capsys, monkeypatch):
    broken = {"sat2city": SimpleNamespace(description="help", cli_module="no_such_module")}
    monkeypatch.setattr(cli, "registered_systems", lambda: broken)
    rc, _, err = run_main(capsys, "generate", "sat2city")
    assert rc == 1 and "generate sat2city is not available" in err
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0 and "generate" in out


def test_info_json(capsys):
    rc, out, _ = run_main(capsys, "info", "--json")
    facts = json.loads(out)
    assert rc == 0
    for key in (
        "python",
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "gsplat",
        "spconv-triton",
        "sparse backends",
        "renderer",
        "device",
    ):
        assert facts[key], key
    assert facts["torch"] == torch.__version__
    assert facts["device"].startswith("cuda" if torch.cuda.is_available() else ("cpu", "mps"))
    if not torch.cuda.is_available():
        assert facts["renderer"].startswith("torch reference")


def test_info_survives_a_broken_sparse_module(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers_city.sparse", None)  # makes the import fail
    rc, out, _ = run_main(capsys, "info")
    assert rc == 0
    assert "diffusers_city.sparse unavailable" in out


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "pipelines"
    root.mkdir()
    monkeypatch.setattr(presets, "BUNDLED_ROOT", root)
    return root


def test_demo_without_weights_says_what_is_missing(capsys, bundled, tmp_path):
    rc, out, err = run_main(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert rc == 1
    for system in ("sat2city", "gaussiancity"):
        assert f"{system}: skipped" in out
    assert "earthcrafter" not in out, "a system without a demo (System.has_demo=False) is not listed"
    assert "model_index.json" in out and "nothing to run" in err
    assert not (tmp_path / "demo").exists()


def fake_demo(monkeypatch, system: str, run_demo) -> None:
    (presets.BUNDLED_ROOT / system / "default").mkdir(parents=True)
    (presets.BUNDLED_ROOT / system / "default" / "model_index.json").write_text("{}")
    module = types.SimpleNamespace(run_demo=run_demo)
    monkeypatch.setitem(sys.modules, f"diffusers_city.pipelines.{system}.demo", module)


def test_demo_runs_each_system_with_weights(capsys, monkeypatch, bundled, tmp_path):
    calls = []

    def run_demo(out_dir: Path, device: str) -> list[Path]:
        calls.append((out_dir, device))
        out_dir.mkdir(parents=True)
        (out_dir / "city.ply").write_text("ply")
        return [out_dir / "city.ply"]

    fake_demo(monkeypatch, "sat2city", run_demo)
    rc, out, _ = run_main(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert rc == 0
    assert calls == [(tmp_path / "demo" / "sat2city", "cpu")]
    assert "gaussiancity: skipped" in out and str(tmp_path / "demo" / "sat2city" / "city.ply") in out


def test_demo_failure_exits_1(capsys, monkeypatch, bundled, tmp_path):
    def run_demo(out_dir: Path, device: str) -> list[Path]:
        raise RuntimeError("weights do not match")

    fake_demo(monkeypatch, "gaussiancity", run_demo)
    rc, _, err = run_main(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert rc == 1 and "weights do not match" in err and "gaussiancity: FAILED" in err


def test_demo_rejects_a_bad_device(capsys, bundled):
    rc, _, err = run_main(capsys, "demo", "--device", "not-a-device")
    assert rc == 2 and "--device not-a-device" in err
    if not torch.cuda.is_available():
        rc, _, err = run_main(capsys, "demo", "--device", "cuda")
        assert rc == 2 and "CUDA is not available" in err


def test_console_script_help():
    script = shutil.which("diffusers-city") or shutil.which("diffusers-city", path=str(Path(sys.executable).parent))
    assert script is not None, "the diffusers-city console script is not installed"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "generate" in done.stdout and "demo" in done.stdout


def test_info_imports_no_other_subcommand_in_a_fresh_process():
    code = (
        "import sys; from diffusers_city.cli import main; rc = main(['info']);"
        "names = ['diffusers_city.cli.demo', 'diffusers_city.cli.scene', 'diffusers_city.pipelines.sat2city.cli',"
        " 'diffusers_city.pipelines.gaussiancity.cli'];"
        "print('LOADED', [n for n in names if n in sys.modules]); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout and "diffusers" in done.stdout
