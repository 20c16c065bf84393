"""Every training script, SIGKILLed mid-run and resumed in a new process, repeats the loss curve
of an uninterrupted run bit for bit (CPU).

The uninterrupted reference is the killed run itself: the steps it logged before the kill are
those of an uninterrupted run. The resumed process restarts from an earlier checkpoint than the
last step logged (like a crash after step 5 resumed from checkpoint 4) and must log exactly the
same values from there on. The killed run is given more steps than it gets to (the default
constant learning rate does not depend on ``--max_train_steps``), so that it is always killed
mid-run; the resumed process is started next to it and imports the script while the other
trains, waiting on stdin for its resume arguments, which keeps each test near 20 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_helpers import GAUSSIANCITY_TINY, SAT2CITY_TINY, logged

from diffusers_city.models.sat2city import Sat2CityDenseVAE, Sat2CitySparseVAE
from diffusers_city.presets import load_preset
from diffusers_city.training_utils import CHECKPOINT_MANIFEST, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "training"
KILL_AFTER = 5  # steps logged before the SIGKILL
TIMEOUT = 180  # seconds any one process may take (a normal one takes 5-15 s on 2 busy cores)
# Runs the script given as argv[1] with the rest of argv plus the arguments of one stdin line.
WAIT_THEN_RUN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("train_script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
sys.modules["train_script"] = script
spec.loader.exec_module(script)
sys.exit(script.main(sys.argv[2:] + sys.stdin.readline().split()))
"""
GAUSSIANCITY = [
    *GAUSSIANCITY_TINY,
    "--logging_steps",
    "1",
    "--validation_steps",
    "100",
    "--learning_rate",
    "1e-3",
    "--discriminator_lr",
    "1e-3",
    "--discriminator_warmup_steps",
    "3",
]


def _stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def script_env() -> dict[str, str]:
    """The environment of a training script's process: one thread, the repo's sources importable."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def kill_and_resume(script: str, args: list[str], output_dir: Path) -> tuple[int, int]:
    """Run ``script`` until it has logged ``KILL_AFTER`` steps, SIGKILL it, resume a new process from
    the newest checkpoint before its last logged step M up to M, and check that the resumed steps
    log exactly what the killed run logged. Returns (resumed step, M)."""
    env = script_env()
    base = [str(TRAINING / script), *args, "--output_dir", str(output_dir)]
    killed_err = open(output_dir.parent / "killed.stderr", "w+")  # noqa: SIM115 - read back on failure
    resumed_out = open(output_dir.parent / "resumed.out", "w+")  # noqa: SIM115
    killed = subprocess.Popen(
        [sys.executable, *base, "--max_train_steps", "1000"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=killed_err
    )
    resumed = subprocess.Popen(
        [sys.executable, "-c", WAIT_THEN_RUN, *base],
        env=env,
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=resumed_out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while max(logged(output_dir), default=0) < KILL_AFTER:
            if killed.poll() is not None or time.monotonic() > deadline:
                killed_err.seek(0)
                pytest.fail(f"{script} stopped (exit {killed.poll()}) before step {KILL_AFTER}:\n{killed_err.read()[-3000:]}")
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
        reference = logged(output_dir)
        last = max(reference)
        complete = [int(p.name.split("-")[1]) for p in list_checkpoints(output_dir) if (p / CHECKPOINT_MANIFEST).is_file()]
        start = max(step for step in complete if step < last)
        resumed.communicate(
            f"--max_train_steps {last} --resume_from_checkpoint {output_dir / f'checkpoint-{start}'}\n", timeout=TIMEOUT
        )
        resumed_out.seek(0)
        assert resumed.returncode == 0, resumed_out.read()[-3000:]
    finally:
        _stop(killed, resumed)
        killed_err.close()
        resumed_out.close()
    after = logged(output_dir)
    assert sorted(after) == list(range(1, last + 1))
    for step in range(start + 1, last + 1):
        assert after[step] == reference[step], f"{script}: step {step} after resuming at {start} differs"
    return start, last


def test_sat2city_vae_resumes_exactly_after_sigkill(tmp_path):
    # geometry-only phase ends at a checkpoint step: the appearance head is initialized on resume too
    start, last = kill_and_resume("train_sat2city_vae.py", [*SAT2CITY_TINY, "--geometry_only_steps", "4"], tmp_path / "vae")
    assert start < last


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """Untrained tiny VAEs, as train_sat2city_vae.py would save them."""
    folder = tmp_path_factory.mktemp("vae")
    preset = load_preset("sat2city", "tiny")
    torch.manual_seed(0)
    Sat2CityDenseVAE.from_config(preset["components"]["dense_vae"]).save_pretrained(folder / "dense_vae")
    Sat2CitySparseVAE.from_config(preset["components"]["sparse_vae"]).save_pretrained(folder / "sparse_vae")
    return folder


@pytest.mark.parametrize("stage", ["dense", "sparse", "appearance"])
def test_sat2city_diffusion_stage_resumes_exactly_after_sigkill(stage, vae_dir, tmp_path):
    # --data_echo 3: a checkpoint at an even step resumes in the middle of a batch's repeats
    args = [*SAT2CITY_TINY, "--stage", stage, "--vae_dir", str(vae_dir), "--scale_batches", "1", "--data_echo", "3"]
    start, last = kill_and_resume("train_sat2city_diffusion.py", args, tmp_path / stage)
    assert start < last


def test_gaussiancity_resumes_exactly_after_sigkill(tmp_path):
    start, last = kill_and_resume("train_gaussiancity.py", GAUSSIANCITY, tmp_path / "gc")
    assert start < last


def test_sigterm_stops_after_the_step_and_saves_checkpoint_and_weights(tmp_path):
    out = tmp_path / "vae"
    env = script_env()
    args = [str(TRAINING / "train_sat2city_vae.py"), *SAT2CITY_TINY, "--checkpointing_steps", "1000", "--max_train_steps", "1000"]
    with open(tmp_path / "run.log", "w+") as log:
        run = subprocess.Popen(
            [sys.executable, *args, "--output_dir", str(out)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while max(logged(out), default=0) < 2:
                assert run.poll() is None and time.monotonic() < deadline, "the run stopped before step 2"
                time.sleep(0.05)
            run.send_signal(signal.SIGTERM)
            code = run.wait(timeout=TIMEOUT)
        finally:
            _stop(run)
        log.seek(0)
        text = log.read()
    assert code == 0, text[-3000:]
    last = max(logged(out))
    assert f"SIGTERM: stopping at step {last}" in text
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{last}"]
    assert (out / f"checkpoint-{last}" / CHECKPOINT_MANIFEST).is_file()
    assert (out / "dense_vae" / "config.json").is_file() and (out / "sparse_vae" / "config.json").is_file()
    assert last < 1000
