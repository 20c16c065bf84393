"""Shared pieces of the training-script tests: tiny CPU command lines, the loss log, a failing final save."""

import json
from pathlib import Path

from diffusers_city.training_utils import LOG_FILE

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
