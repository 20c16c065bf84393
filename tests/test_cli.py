"""The diffusers-city command line: dispatch, lazy subcommands, info and demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusers_city import cli, presets
from diffusers_city.cli.errors import ExitCode


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
        assert out_dir.is_dir() and not any(out_dir.iterdir())  # an empty folder that becomes --out/<system>
        (out_dir / "city.ply").write_text("ply")
        return [out_dir / "city.ply"]

    fake_demo(monkeypatch, "sat2city", run_demo)
    rc, out, _ = run_main(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert rc == 0
    assert [device for _, device in calls] == ["cpu"] and calls[0][0].parent == tmp_path / "demo"
    assert (tmp_path / "demo" / "sat2city" / "city.ply").read_text() == "ply"
    assert "gaussiancity: skipped" in out and str(tmp_path / "demo" / "sat2city" / "city.ply") in out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["sat2city"]


def test_demo_failure_exits_1(capsys, monkeypatch, bundled, tmp_path):
    def run_demo(out_dir: Path, device: str) -> list[Path]:
        raise RuntimeError("weights do not match")

    fake_demo(monkeypatch, "gaussiancity", run_demo)
    rc, _, err = run_main(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert rc == 1 and "weights do not match" in err and "gaussiancity: FAILED" in err


def test_demo_rejects_a_bad_device(capsys, bundled):
    rc, _, err = run_main(capsys, "demo", "--device", "not-a-device")
    assert rc == ExitCode.DEVICE_UNAVAILABLE and "--device not-a-device" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        rc, _, err = run_main(capsys, "demo", "--device", "cuda")
        assert rc == ExitCode.DEVICE_UNAVAILABLE and "--device cuda: no cuda device" in err


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


def test_help_of_every_command_imports_no_torch_diffusers_or_pipeline():
    """``--help`` is instant: the console script parses before ``diffusers_city/__init__`` runs, and
    no subcommand module imports torch, diffusers or a pipeline at its top."""
    commands = [[], ["generate"], ["info"], ["demo"], ["scene"], *(["generate", name] for name in cli.registered_systems())]
    code = (
        "import sys, _diffusers_city_cli\n"
        f"for command in {commands!r}:\n"
        "    sys.argv = ['diffusers-city', *command, '--help']\n"
        "    try:\n"
        "        _diffusers_city_cli.main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, command\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')\n"
        "         or m.startswith('diffusers_city.pipelines.') and m.rpartition('.')[2].startswith('pipeline')]\n"
        "print('HEAVY', sorted(heavy)[:8])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
    assert done.stdout.count("usage: diffusers-city") == len(commands)


# -- failures: one line, no traceback, an exit status per kind, outputs checked first -------------


def test_exit_statuses_are_distinct_and_listed_in_every_help(capsys):
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    for argv in (["--help"], ["scene", "--help"], ["generate", "sat2city", "--help"]):
        rc, out, _ = run_main(capsys, *argv)
        assert rc == 0 and "exit status:" in out
        for code in ExitCode:
            assert f"  {int(code):>3}  " in out


def _saved_tiny_gaussiancity(path: Path) -> Path:
    from diffusers_city import GaussianCityPipeline

    GaussianCityPipeline.from_preset("tiny").save_pretrained(path)
    return path


def _error_of(fn) -> BaseException:
    try:
        fn()
    except BaseException as error:  # noqa: B036 - the error under test, whatever it is
        return error
    raise AssertionError("no error raised")


def test_errors_are_sorted_by_kind(tmp_path):
    """Real errors of the libraries we call, as they reach the command line."""
    import errno

    import numpy as np
    from PIL import Image

    from diffusers_city import GaussianCityPipeline
    from diffusers_city.cli.errors import DeviceUnavailableError, OutputNotWritableError, classify
    from diffusers_city.utils.memory import MemoryLimitError

    weights = _saved_tiny_gaussiancity(tmp_path / "pipe")
    tensor_file = weights / "scene_encoder" / "diffusion_pytorch_model.safetensors"
    tensor_file.write_bytes(tensor_file.read_bytes()[:100])
    png = tmp_path / "cut.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(png)
    png.write_bytes(png.read_bytes()[:-40])

    def read_truncated_png():
        with Image.open(png) as img:
            img.load()

    cases = [
        (ValueError("bad"), ExitCode.BAD_INPUT),
        (_error_of(lambda: open(tmp_path / "missing")), ExitCode.MISSING_FILE),
        (_error_of(lambda: GaussianCityPipeline.from_pretrained(weights)), ExitCode.CORRUPT_FILE),
        (_error_of(read_truncated_png), ExitCode.CORRUPT_FILE),
        (_error_of(lambda: Image.open(tmp_path / "pipe" / "model_index.json")), ExitCode.CORRUPT_FILE),
        (_error_of(lambda: json.loads("{")), ExitCode.CORRUPT_FILE),
        (MemoryLimitError("too big"), ExitCode.OUT_OF_MEMORY),
        (MemoryError(), ExitCode.OUT_OF_MEMORY),
        (OutputNotWritableError("--out x is not writable"), ExitCode.OUTPUT_NOT_WRITABLE),
        (OSError(errno.ENOSPC, "No space left on device"), ExitCode.OUTPUT_NOT_WRITABLE),
        (DeviceUnavailableError("--device foo"), ExitCode.DEVICE_UNAVAILABLE),
        (RuntimeError("a bug"), ExitCode.FAILED),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ]
    for error, code in cases:
        assert classify(error)[0] == code, (error, classify(error))
    assert "DIFFUSERS_CITY_TRACEBACK" in classify(RuntimeError("a bug"))[1]
    error = KeyboardInterrupt()
    error.add_note("(tile tile_0001_0000 failed)")  # an area run names the tile it stopped on
    assert classify(error) == (ExitCode.INTERRUPTED, "interrupted (tile tile_0001_0000 failed)")


@pytest.fixture
def scene_dir(tmp_path_factory):
    from diffusers_city.data import procedural_city

    path = tmp_path_factory.mktemp("scene") / "city"
    procedural_city(2, size_m=48.0, with_points=False, with_image=False).save(path)
    return path


def _generate(capsys, scene_dir, out, *extra):
    argv = ["generate", "gaussiancity", "--scene", str(scene_dir), "--out", str(out), "--preset", "tiny"]
    argv += ["--frames", "3", "--width", "32", "--height", "24", *extra]
    return run_main(capsys, *argv)


@pytest.mark.skipif(Path("/sys").is_dir() and os.access("/sys", os.W_OK) and os.geteuid() != 0, reason="/sys is writable")
def test_unwritable_output_fails_before_any_work(capsys, scene_dir, monkeypatch):
    from diffusers_city.pipelines.gaussiancity.pipeline_gaussiancity import GaussianCityPipeline

    monkeypatch.setattr(GaussianCityPipeline, "from_preset", lambda *a, **k: pytest.fail("work began"))
    rc, _, err = _generate(capsys, scene_dir, "/sys/x")
    assert rc == ExitCode.OUTPUT_NOT_WRITABLE and "--out /sys/x is not writable" in err and "Traceback" not in err
    rc, _, err = run_main(capsys, "scene", "--size", "16", "--out", "/sys/x/y")
    assert rc == ExitCode.OUTPUT_NOT_WRITABLE and "not writable" in err
    rc, out, err = run_main(capsys, "demo", "--out", "/sys/x", "--device", "cpu")
    assert rc == ExitCode.OUTPUT_NOT_WRITABLE and "--out /sys/x is not writable" in err and "running" not in out


def test_bad_device_is_refused_cleanly(capsys, scene_dir, tmp_path):
    rc, _, err = _generate(capsys, scene_dir, tmp_path / "out", "--device", "foo")
    assert rc == ExitCode.DEVICE_UNAVAILABLE and "--device foo: not a torch device" in err and "Traceback" not in err
    hm = tmp_path / "hm.npy"
    np.save(hm, np.eye(32) * 200)
    rc, _, err = run_main(
        capsys, "generate", "sat2city", "--height-map", str(hm), "--out", str(tmp_path / "o"), "--device", "cuda:7"
    )
    assert rc == ExitCode.DEVICE_UNAVAILABLE and "--device cuda:7" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_corrupt_weights_and_inputs_get_one_line_and_their_status(capsys, scene_dir, tmp_path):
    from PIL import Image

    weights = _saved_tiny_gaussiancity(tmp_path / "pipe")
    file = weights / "building_decoder" / "diffusion_pytorch_model.safetensors"
    file.write_bytes(file.read_bytes()[:-64])
    argv = ["generate", "gaussiancity", "--scene", str(scene_dir), "--out", str(tmp_path / "out"), "--pipeline", str(weights)]
    rc, _, err = run_main(capsys, *argv)
    assert rc == ExitCode.CORRUPT_FILE and "Traceback" not in err
    assert err.splitlines()[-1].startswith("diffusers-city generate gaussiancity: error: corrupt or unreadable file:")
    png = tmp_path / "cut.png"
    Image.fromarray((np.eye(64) * 200).astype(np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:-30])
    argv = ["generate", "sat2city", "--height-map", str(png), "--out", str(tmp_path / "o"), "--preset", "tiny", "--steps", "1"]
    rc, _, err = run_main(capsys, *argv)
    assert rc == ExitCode.CORRUPT_FILE and "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    laz = tmp_path / "bad.laz"
    laz.write_bytes(b"LASF" + bytes(range(256)) * 16)  # a signature, then a header past the file's end
    rc, _, err = run_main(capsys, "scene", "--from", str(laz), "--out", str(tmp_path / "s"))
    assert rc == ExitCode.CORRUPT_FILE and "bad.laz" in err and "Traceback" not in err


def test_memory_estimates_refuse_with_status_5(capsys, scene_dir, tmp_path):
    rc, _, err = run_main(capsys, "scene", "--size", "20000", "--out", str(tmp_path / "big"))
    assert rc == ExitCode.OUT_OF_MEMORY and "procedural_city of 20000x20000 px" in err and "estimated peak memory" in err
    rc, _, err = _generate(capsys, scene_dir, tmp_path / "out", "--max-memory-gb", "0.0001")
    assert rc == ExitCode.OUT_OF_MEMORY and "exceeds max_memory_gb (0.0001 GB)" in err
    for bad in ("nan", "inf", "-1", "0", "lots"):
        rc, _, err = run_main(capsys, "scene", "--size", "16", "--max-memory-gb", bad, "--out", str(tmp_path / "s"))
        assert rc == ExitCode.BAD_INPUT and "argument --max-memory-gb:" in err
    rc, _, err = _generate(capsys, scene_dir, tmp_path / "out", "--max-memory-gb", "nan")
    assert rc == ExitCode.BAD_INPUT and "argument --max-memory-gb: must be a finite number of GB > 0" in err
    assert sorted(tmp_path.iterdir()) == []


def test_reruns_replace_outputs_whole_and_clean_what_a_killed_run_left(capsys, scene_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _generate(capsys, scene_dir, out, "--frames", "4")[0] == 0
    assert len(list((out / "frames").iterdir())) == 4
    # what a killed run leaves: a temp file of atomic_write inside, a partial folder beside
    (out / ".city.ply.abcd1234.tmp.ply").write_bytes(b"x" * 100)
    (tmp_path / ".out.k1ll3d00.partial").mkdir()
    assert _generate(capsys, scene_dir, out, "--frames", "2")[0] == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_0000.png", "frame_0001.png"]
    assert sorted(p.name for p in out.iterdir()) == ["city.ply", "frames", "orbit.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a run failing while it writes leaves the previous outputs as they were
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr("diffusers_city.export.video.write_video", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    rc, _, err = _generate(capsys, scene_dir, out, "--frames", "3")
    assert rc == ExitCode.OUTPUT_NOT_WRITABLE and "full" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_folder_holding_other_files_is_refused_untouched(capsys, scene_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, _, err = _generate(capsys, scene_dir, out)
    assert rc == ExitCode.BAD_INPUT and "holds files this command does not write (notes.txt)" in err
    rc, _, err = run_main(capsys, "scene", "--size", "16", "--out", str(out))
    assert rc == ExitCode.BAD_INPUT and "notes.txt" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` 8-bit gray pixels, with no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_by_its_size(capsys, tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    argv = ["generate", "sat2city", "--height-map", str(bomb), "--out", str(tmp_path / "o"), "--preset", "tiny"]
    rc, _, err = run_main(capsys, *argv)
    assert rc == ExitCode.OUT_OF_MEMORY and "bomb.png" in err and "Traceback" not in err
    huge = _png_header_only(tmp_path / "huge.png", 12_000, 12_000)  # below PIL's bomb limit, above 8 GB
    rc, _, err = run_main(capsys, *argv[:3], str(huge), *argv[4:], "--max-memory-gb", "8")
    assert rc == ExitCode.OUT_OF_MEMORY and "height map of 12000x12000 px" in err
    assert not (tmp_path / "o").exists()


def test_a_permission_error_while_writing_outputs_is_status_6(tmp_path):
    from diffusers_city.cli.errors import OutputNotWritableError, classify
    from diffusers_city.cli.outputs import writing

    out = tmp_path / "out"
    with pytest.raises(OutputNotWritableError, match="could not be written") as caught:
        with writing(out):
            raise PermissionError(13, "Permission denied")
    assert classify(caught.value)[0] == ExitCode.OUTPUT_NOT_WRITABLE and not out.exists()


def test_threads_default_to_the_physical_cores_of_the_affinity_and_can_be_set(capsys, monkeypatch):
    from diffusers_city.cli import threads

    monkeypatch.delenv(threads.ENV, raising=False)
    cores = threads.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert threads.choose_threads(None) == (cores, "physical cores of this process's CPU affinity")
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr("diffusers_city.cli.info.collect", lambda n: seen.append(torch.get_num_threads()) or {"x": "y"})
    assert cli.main(["info", "--threads", "3"]) == 0
    monkeypatch.setenv(threads.ENV, "2")
    assert cli.main(["info"]) == 0
    assert seen == [3, 2] and torch.get_num_threads() == before
    monkeypatch.setenv(threads.ENV, "zero")
    assert cli.main(["info"]) == 2 and "DIFFUSERS_CITY_THREADS='zero'" in capsys.readouterr().err
    rc, _, err = run_main(capsys, "info", "--threads", "0")
    assert rc == 2 and "--threads: must be >= 1" in err


def test_info_says_the_thread_count_and_its_source(capsys, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_CITY_THREADS", "1")
    rc, out, _ = run_main(capsys, "info", "--json")
    assert rc == 0 and json.loads(out)["torch threads"] == "1 (set by the CLI from $DIFFUSERS_CITY_THREADS)"
