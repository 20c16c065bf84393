"""Shared pieces of the training-script tests: tiny CPU command lines, the loss log, a failing final save,
the 2-process CPU launcher."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from diffusers_city.training_utils import LOG_FILE

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "training"
# the lines of a faulthandler dump that locate a hang (its list of extension modules is left out)
STACK_LINES = ("Fatal Python error", "Current thread", "Thread 0x", "  File")

# train_sat2city_vae.py / train_sat2city_diffusion.py: tiny preset, a log line per step,
# a checkpoint every 2 steps, no validation within the run.
SAT2CITY_TINY = [
    "--preset",
    "tiny",
    "--cpu",
    "--report_to",
    "none",
    "--logging_steps",
    "1",
    "--validation_steps",
    "100",
    "--checkpointing_steps",
    "2",
    "--use_ema",
]
# train_gaussiancity.py: 2 small procedural cities, 2 views each, a checkpoint every 2 steps.
GAUSSIANCITY_TINY = [
    "--preset",
    "tiny",
    "--num_cities",
    "2",
    "--city_size_m",
    "48",
    "--points_per_m2",
    "1",
    "--views_per_city",
    "2",
    "--resolution",
    "24x16",
    "--train_batch_size",
    "1",
    "--discriminator_channels",
    "8",
    "--report_to",
    "none",
    "--checkpointing_steps",
    "2",
    "--cpu",
    "--use_ema",
    "--ema_decay",
    "0.5",
]


def logged(output_dir: Path) -> dict[int, dict[str, float]]:
    """``train_log.jsonl`` as ``{step: values}`` without the wall-clock time (and without the
    half-written last line a killed process may leave)."""
    path = output_dir / LOG_FILE
    records = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        record.pop("elapsed_s")
        records[record.pop("step")] = record
    return records


def fail_after_saving(monkeypatch, cls: type) -> None:
    """Make ``cls.save_pretrained`` write its files, then raise ``OSError("No space left on device")``:
    a final save that fails part-way through a script's outputs."""
    save = cls.save_pretrained

    def save_then_fail(self, folder, **kwargs):
        save(self, folder, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(cls, "save_pretrained", save_then_fail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(script: str, args: list[str], timeout: float = 150, module: bool = False) -> str:
    """stdout of ``script`` (a ``training/`` script, or with ``module`` a module such as
    ``diffusers_city.cli``) run data-parallel in 2 CPU processes.

    A launch that has not finished after ``timeout`` seconds (a normal one takes 10-20 s on 2 busy
    cores) is stopped with all its processes, after SIGABRT has made every process print its
    Python stack (``PYTHONFAULTHANDLER``), and tried once more with a fresh port. The stacks of
    the stopped launch are reported as a warning, so a hang is never silent; a second hang fails.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    for attempt in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            *(["-m", script] if module else [str(TRAINING / script)]),
            *args,
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = _stop_all(proc)
            stacks = "\n".join(line for line in stderr.splitlines() if line.startswith(STACK_LINES))
            report = f"{script}: 2-process launch {attempt} hung for {timeout:.0f} s; its stacks:\n{stacks[-6000:]}"
            if attempt == 2:
                pytest.fail(report)
            warnings.warn(report, stacklevel=2)
            continue
        assert proc.returncode == 0, stderr[-3000:]
        return stdout


def _stop_all(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT (a stack dump each), then SIGKILL, to ``proc`` and all its descendants; its output.

    The workers are found through the process tree: torchrun starts each in a session of its own,
    out of reach of a process-group signal.
    """
    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for sig in (signal.SIGABRT, signal.SIGKILL):
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        time.sleep(2)
    return proc.communicate()
