"""Shared pieces of the ``training/`` scripts: flags, accelerate setup, the optimizer step and its
bookkeeping, checkpoints, EMA, validation images and pushing to the Hub.

Every script runs under ``accelerate launch`` (CPU or 1..N GPUs). The flow is::

    args = training_parser("...").parse_args()
    accelerator = setup_accelerator(args)
    ema = create_ema(model, args)                 # before accelerator.prepare
    model, optimizer, ... = accelerator.prepare(...)
    global_step = maybe_resume(accelerator, args)
    ...  each micro-step: optimizer_step(...) in accelerator.accumulate, StepLosses.add(terms);
    ...  each optimizer step: StepLosses.finish, step_emas, finish_step (log, checkpoint, validate)
    with export.atomic.atomic_folders(out / "unet") as (tmp,): model.save_pretrained(tmp)
    if accelerator.is_main_process and args.push_to_hub:
        push_folder_to_hub(args, folder, "sat2city", {...})

A SIGTERM (``timeout``, a cluster's preemption) asks the run to stop: at the end of the optimizer
step it is in, it saves a checkpoint and its weights as at ``--max_train_minutes`` and exits
normally (``stop_requested``); a second SIGTERM terminates it at once.

Checkpoints hold safetensors and JSON only (no pickle, so loading one cannot run code) and a
``checkpoint.json`` manifest written last; ``maybe_resume`` refuses a checkpoint holding a pickle
file and names a truncated or unfinished one.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import string
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import SchedulerType
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from .export.atomic import atomic_write, fsync_tree, remove_stale_partials, write_text_atomic
from .presets import BUNDLED_ROOT, load_preset, read_preset

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_FORMAT = "diffusers-city-checkpoint/1"
CHECKPOINT_MANIFEST = "checkpoint.json"  # written last: only a complete checkpoint has one
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
_MANIFEST_COUNTS = ("step", "accelerator_step", "processes", "models", "optimizers", "schedulers", "emas")
RUN_FILE = "run.json"
LOG_FILE = "train_log.jsonl"
MODEL_CARDS_DIR = Path(__file__).resolve().parent / "assets" / "model_cards"
_TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}
_RESERVED_CARD_FIELDS = ("repo_id", "system_card", "training_details")
_CARD_HPARAMS = (
    "preset",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "max_train_steps",
    "mixed_precision",
    "use_ema",
    "ema_decay",
    "seed",
)

# The accelerator made by the last `setup_accelerator` call, so `create_ema(model, args)` can
# register the EMA weights for checkpointing without the accelerator being passed around.
_current_accelerator: weakref.ReferenceType[Accelerator] | None = None
# Set by the SIGTERM handler of `setup_accelerator`; `out_of_time` reads it.
_stop_requested = False
# The EMAs `save_checkpoint` / `maybe_resume` carry, per accelerator, in `create_ema` order.
_emas: weakref.WeakKeyDictionary[Accelerator, list[EMAModel]] = weakref.WeakKeyDictionary()


class CheckpointError(ValueError):
    """A checkpoint that is not loaded: it holds a pickle file, or it is incomplete."""


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return number


def training_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the flags every training script shares; scripts add their own on top."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add(
        "--preset",
        default="tiny",
        help="model size: a preset name of pipelines/<system>/presets/ (tiny, small, paper) or a path to a preset JSON",
    )
    add("--output_dir", default="training_output", help="checkpoints, logs, validation images and the final pipeline")
    add("--seed", type=int, default=0)
    add("--train_batch_size", type=_positive_int, default=4, help="batch size per device")
    add("--gradient_accumulation_steps", type=_positive_int, default=1)
    add("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    add("--learning_rate", type=float, default=1e-4)
    add("--lr_scheduler", choices=[s.value for s in SchedulerType], default="constant")
    add("--lr_warmup_steps", type=_non_negative_int, default=0)
    add("--max_train_steps", type=_positive_int, default=1000)
    add("--checkpointing_steps", type=_positive_int, default=500)
    add("--checkpoints_total_limit", type=_positive_int, default=None, help="keep at most this many checkpoints")
    add("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint-N folder (path or name in output_dir)')
    add("--use_ema", action="store_true", help="keep an exponential moving average of the weights")
    add("--ema_decay", type=float, default=0.9999)
    add("--max_train_minutes", type=float, default=None, help="stop (and save) after this many minutes")
    add("--validation_steps", type=_positive_int, default=500)
    add("--logging_steps", type=_positive_int, default=10)
    add(
        "--report_to",
        choices=("tensorboard", "wandb", "none"),
        default=None,
        help="tracker (default: tensorboard when installed, else none, quietly; one named here but not installed warns)",
    )
    add("--dataloader_num_workers", type=_non_negative_int, default=0)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None, help="repo id to push to (default: the output_dir name)")
    add("--hub_token", default=None, help="token for --push_to_hub (default: the saved login)")
    add("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    add("--cpu", action="store_true", help="train on CPU even when a GPU is available")
    return parser


def load_training_preset(args: argparse.Namespace, system: str) -> dict[str, Any]:
    """The preset named by ``--preset``: a JSON file path, or a size of ``pipelines/<system>/presets/``."""
    path = Path(args.preset)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"--preset {args.preset}: no such file")
        return read_preset(path)
    return load_preset(system, args.preset)


def _tracker(report_to: str | None) -> str | None:
    """The tracker to log with: ``report_to`` when its package is installed (a warning when not);
    by default tensorboard when it is installed, else none (no warning: nobody asked for it)."""
    if report_to is None:
        return "tensorboard" if importlib.util.find_spec(_TRACKER_MODULES["tensorboard"]) is not None else None
    if report_to == "none":
        return None
    if importlib.util.find_spec(_TRACKER_MODULES[report_to]) is None:
        logger.warning(
            "--report_to %s: package %s is not installed, not logging to a tracker", report_to, _TRACKER_MODULES[report_to]
        )
        return None
    return report_to


def _tracker_config(args: argparse.Namespace) -> dict[str, int | float | str | bool]:
    """Hyper-parameters a tracker can store (scalars and strings; never the token)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


def setup_accelerator(args: argparse.Namespace, run: dict[str, str] | None = None) -> Accelerator:
    """``Accelerator`` writing under ``args.output_dir`` (``logs/`` for trackers), seeded with ``args.seed``.

    What interrupted saves left in ``output_dir`` and its ``validation/step-*`` folders
    (``remove_stale_partials``) is removed. With
    ``run`` (what identifies the run, e.g. ``{"script": ..., "preset": ..., "stage": ...}``) the
    output folder is claimed for it: recorded in ``output_dir/run.json``, and refused when it holds
    another run's files (``claim_output_dir``).
    """
    global _current_accelerator
    output_dir = Path(args.output_dir)
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs"))
    log_with = _tracker(args.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_config=project_config,
        cpu=args.cpu,
    )
    if run is not None:
        check_output_dir(output_dir, run, resuming=bool(args.resume_from_checkpoint))
        accelerator.wait_for_everyone()  # every process checked before the main one records the run
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (output_dir, *output_dir.glob("validation/step-*")):
            remove_stale_partials(folder)
        if run is not None:
            write_text_atomic(output_dir / RUN_FILE, json.dumps(run, indent=2, sort_keys=True))
    accelerator.wait_for_everyone()
    if log_with is not None:
        accelerator.init_trackers(output_dir.resolve().name, config=_tracker_config(args))
    _current_accelerator = weakref.ref(accelerator)
    request_stop_on_sigterm()
    return accelerator


def request_stop_on_sigterm() -> None:
    """Make the next SIGTERM a stop request (``stop_requested``) instead of the end of the process;
    the handler is one-shot: it puts the previous one back, so a second SIGTERM acts as before.
    Does nothing outside the main thread (where Python cannot install signal handlers)."""
    global _stop_requested
    _stop_requested = False
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    previous = getattr(previous, "previous", previous)  # an earlier run's handler: chain to what it replaced

    def handler(signum, frame) -> None:
        global _stop_requested
        _stop_requested = True
        signal.signal(signal.SIGTERM, previous)
        logger.warning("SIGTERM: stopping after this optimizer step (checkpoint and weights are saved)")

    handler.previous = previous
    signal.signal(signal.SIGTERM, handler)


def stop_requested() -> bool:
    """Whether a SIGTERM asked this process to stop since ``setup_accelerator``."""
    return _stop_requested


def check_output_dir(output_dir: str | Path, run: dict[str, str], resuming: bool) -> None:
    """Refuse an ``output_dir`` that holds another run's files, before anything is written.

    A folder whose ``run.json`` records a different run (another script, preset or stage: its
    checkpoints and ``latent_scale.json`` would be taken for this run's) is always refused; one
    holding an earlier run's checkpoints, ``run.json`` or ``train_log.jsonl`` only when not resuming
    (``--resume_from_checkpoint``), since a fresh run would overwrite and interleave them.
    """
    output_dir = Path(output_dir)
    record = output_dir / RUN_FILE
    if record.is_file():
        try:
            recorded = json.loads(record.read_text())
        except ValueError:
            recorded = None
        if recorded != run:
            raise ValueError(
                f"--output_dir {output_dir} holds another run ({record}: {recorded}); this run is {run}: "
                "choose another --output_dir"
            )
    found = [p.name for p in (record, output_dir / LOG_FILE) if p.exists()] + [p.name for p in list_checkpoints(output_dir)]
    if found and not resuming:
        raise ValueError(
            f"--output_dir {output_dir} holds an earlier run's files ({', '.join(found)}): continue it with "
            "--resume_from_checkpoint latest, or choose another --output_dir"
        )


def refuse_shipped_paths(paths: dict[str, str | Path | None], update_shipped: bool) -> None:
    """Refuse output ``paths`` (flag name: path) inside the package's shipped files (the
    top-level ``pipelines/`` folder, which the package bundles, and the package itself) unless ``update_shipped``
    (``--update_shipped``): the demos and tests read those files, so only an explicit flag may
    change them."""
    shipped = (BUNDLED_ROOT.resolve(), Path(__file__).resolve().parent)
    inside = [
        f"{flag} {path}"
        for flag, path in paths.items()
        if path is not None and any(Path(path).resolve().is_relative_to(root) for root in shipped)
    ]
    if inside and not update_shipped:
        raise ValueError(
            f"{', '.join(inside)}: inside the shipped files ({' or '.join(map(str, shipped))}); "
            "pass --update_shipped to replace them, or write elsewhere"
        )


def out_of_time(accelerator: Accelerator, args: argparse.Namespace, start: float) -> bool:
    """Whether ``--max_train_minutes`` has passed since ``start`` (``time.time()``), or a SIGTERM
    asked to stop (``stop_requested``), on any process.

    Every process gets the same answer, so all of them stop at the same step and the collective
    checkpoint save that follows cannot hang on a process that kept training.
    """
    late = _stop_requested
    if args.max_train_minutes is not None:
        late = late or (time.time() - start) / 60 >= args.max_train_minutes
    if accelerator.num_processes == 1:
        return late
    flag = torch.tensor([float(late)], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def log_step(accelerator: Accelerator, args: argparse.Namespace, logs: dict[str, float], step: int, start: float) -> None:
    """Send ``logs`` to the trackers, print them, and (main process) append them with the step and
    the seconds since ``start`` to ``output_dir/train_log.jsonl``: a loss curve that needs no tracker."""
    accelerator.log(logs, step=step)
    elapsed = time.time() - start
    accelerator.print(f"step {step} ({elapsed:.0f} s): " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
    if accelerator.is_main_process:
        record = {"step": step, "elapsed_s": round(elapsed, 3), **logs}
        with open(Path(args.output_dir) / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def echo_batches(loader: Iterable[Any], echo: int, start: int = 0) -> Iterator[Any]:
    """Each batch of ``loader`` ``echo`` times in a row, from micro-step ``start`` on.

    Data echoing (Choi et al., 2019): when loading is slower than the training step, reusing a
    batch for several steps keeps the accelerator busy. Diffusion losses draw fresh noise,
    timesteps and condition dropout at every step, so the repeats are not identical examples.
    Resuming at micro-step ``start`` skips ``start // echo`` batches and gives the current one
    its remaining repeats, exactly as an uninterrupted run would.
    """
    if echo < 1:
        raise ValueError(f"data echo must be >= 1, got {echo}")
    done = start % echo
    for batch in itertools.islice(iter(loader), start // echo, None):
        for _ in range(echo - done):
            yield batch
        done = 0


def optimizer_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    max_grad_norm: float = 1.0,
) -> None:
    """One micro-step inside ``accelerator.accumulate``: backward, then on the step's last
    micro-step clip the gradients of ``params`` to ``max_grad_norm``; step the optimizer and the
    learning rate and clear the gradients (accelerate skips them until the gradients sync)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()


class StepLosses:
    """The loss terms of one optimizer step, averaged over its gradient-accumulation micro-steps.

    ``add`` each micro-step's terms (``"loss"`` among them); on the step's last micro-step
    ``finish`` returns the means and starts the next step, and ``logs`` turns means into the
    global-batch means (over processes too) for ``log_step``, a collective call.
    """

    def __init__(self, accumulation_steps: int) -> None:
        self.accumulation_steps = accumulation_steps
        self._sum: torch.Tensor | None = None
        self._last: dict[str, torch.Tensor] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        micro = torch.stack([v.detach().float() for v in terms.values()]) / self.accumulation_steps
        self._sum = micro if self._sum is None else self._sum + micro
        self._last = terms

    def finish(self, step: int) -> torch.Tensor:
        """The step's mean terms; a ``RuntimeError`` naming the terms when the last micro-step's
        loss is not finite, so a diverged run stops before its weights are stepped on."""
        if not math.isfinite(float(self._last["loss"].detach())):
            terms = {k: float(v) for k, v in self._last.items()}
            raise RuntimeError(f"non-finite loss at step {step}: {terms}")
        means, self._sum = self._sum, None
        return means

    def logs(self, accelerator: Accelerator, means: torch.Tensor, lr_scheduler: Any) -> dict[str, float]:
        """``means`` averaged over the processes too (global-batch means), with the learning rate."""
        terms = dict(zip(self._last, accelerator.reduce(means, "mean").tolist()))
        return terms | {"lr": lr_scheduler.get_last_lr()[0]}


def step_emas(emas: Iterable[EMAModel | None], modules: Iterable[torch.nn.Module]) -> None:
    """Step each EMA on its module's parameters (``None``: that module keeps no EMA)."""
    for ema, module in zip(emas, modules):
        if ema is not None:
            ema.step(module.parameters())


def finish_step(
    accelerator: Accelerator,
    args: argparse.Namespace,
    step: int,
    start: float,
    logs: Callable[[], dict[str, float]],
    images: Callable[[], dict[str, Image.Image]],
) -> bool:
    """The bookkeeping after optimizer step ``step`` of a run begun at ``start`` (``time.time()``);
    returns whether to stop.

    At ``--logging_steps`` it logs ``logs()`` (which may be a collective call, so it is made on
    every process), at ``--checkpointing_steps`` it saves a checkpoint, at ``--validation_steps``
    the main process writes ``images()``, and past ``--max_train_minutes`` (or after a SIGTERM) it
    saves a checkpoint and says to stop, in this order on every run (an exact resume depends on it).
    """
    if step % args.logging_steps == 0:
        log_step(accelerator, args, logs(), step, start)
    if step % args.checkpointing_steps == 0:
        save_checkpoint(accelerator, args, step)
    if step % args.validation_steps == 0 and accelerator.is_main_process:
        log_validation_images(accelerator, args, images(), step)
    if not out_of_time(accelerator, args, start):
        return False
    why = "SIGTERM" if _stop_requested else f"--max_train_minutes {args.max_train_minutes}"
    accelerator.print(f"{why}: stopping at step {step}")
    save_checkpoint(accelerator, args, step)
    return True


def card_fields(args: argparse.Namespace, system: str, stage: str) -> dict[str, str]:
    """Model-card fields of one trained ``stage`` of ``system`` (a display name)."""
    return {
        "title": f"{system} {stage} ({args.preset})",
        "description": f"{system} {stage} trained on procedural cities with diffusers-city.",
        "stage": stage,
        "preset": str(args.preset),
    }


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest (smallest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def step_seed(seed: int, step: int) -> int:
    """Seed of one optimizer step's random draws: a run's randomness that depends only on
    (seed, step) is repeated exactly by a run resumed at any step."""
    return seed * 1_000_003 + step


def maybe_resume(accelerator: Accelerator, args: argparse.Namespace) -> int:
    """Restore model/optimizer/scheduler/EMA/RNG state from ``--resume_from_checkpoint``; returns the global step.

    ``latest`` picks the ``checkpoint-N`` with the largest N in ``output_dir`` (0 and a warning
    when there is none); any other value is a checkpoint folder, as a path or a name in ``output_dir``.
    A checkpoint holding a pickle file, or an incomplete one, is refused before anything is loaded
    (``CheckpointError``, naming the file and an earlier complete checkpoint). Records of
    ``train_log.jsonl`` after the resumed step are dropped, so the log stays one loss curve.
    """
    if not args.resume_from_checkpoint:
        return 0
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(args.output_dir)
        if not checkpoints:
            logger.warning("--resume_from_checkpoint latest: no checkpoint in %s, starting from step 0", args.output_dir)
            return 0
        path = checkpoints[-1]
    else:
        path = Path(args.resume_from_checkpoint)
        if not path.is_dir():
            path = Path(args.output_dir) / args.resume_from_checkpoint
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such checkpoint folder")
    match = CHECKPOINT_RE.match(path.name)
    if match is None:
        raise ValueError(f"--resume_from_checkpoint {path}: expected a folder named checkpoint-<step>")
    manifest = verify_checkpoint(path)
    if manifest["step"] != int(match.group(1)):
        raise CheckpointError(f"{path} holds the state of step {manifest['step']}, not {match.group(1)}")
    counts = {
        "models": len(accelerator._models),
        "optimizers": len(accelerator._optimizers),
        "schedulers": len(accelerator._schedulers),
        "emas": len(_emas.get(accelerator, [])),
    }
    saved = {k: manifest[k] for k in counts}
    if saved != counts:
        raise CheckpointError(
            f"{path} holds {saved}, this run prepared {counts} (a checkpoint of another script, or --use_ema changed)"
        )
    _check_fits(accelerator, path)
    accelerator.print(f"Resuming from {path}")
    _load_state(accelerator, path, manifest)
    if accelerator.is_main_process:
        _truncate_log(Path(args.output_dir) / LOG_FILE, manifest["step"])
    accelerator.wait_for_everyone()
    return manifest["step"]


def _is_pickle(file: Path) -> bool:
    """A pickle by its suffix, or by its first bytes (pickle protocols 2-5, torch.save's zip) for
    files that are neither safetensors nor JSON (those are validated by their own parsers)."""
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return True
    if suffix in (".safetensors", ".json"):
        return False
    with open(file, "rb") as f:
        return f.read(4).startswith(_PICKLE_MAGIC)


def _pickles(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and _is_pickle(p))


def _unreadable(file: Path) -> str | None:
    """Why ``file`` (a checkpoint's JSON or safetensors file) does not parse; only headers are read."""
    try:
        if file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
        elif file.suffix == ".safetensors":
            with safe_open(file, "pt") as f:
                f.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, which is no ValueError
        return f"{type(err).__name__}: {err}"
    return None


def _incomplete(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    """Why the checkpoint folder ``path`` is incomplete (``None`` when it is not) and its manifest."""
    try:
        manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {CHECKPOINT_MANIFEST}: its save did not finish", None
    except (OSError, ValueError) as err:
        return f"{CHECKPOINT_MANIFEST} unreadable: {err}", None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        return f"{CHECKPOINT_MANIFEST} is not a {CHECKPOINT_FORMAT} manifest", None
    files = manifest.get("files")
    counts_ok = all(isinstance(manifest.get(k), int) and manifest[k] >= 0 for k in _MANIFEST_COUNTS)
    if not (counts_ok and isinstance(files, dict) and all(isinstance(v, int) for v in files.values())):
        return f"{CHECKPOINT_MANIFEST} lacks {list(_MANIFEST_COUNTS)} counts or its files list", None
    root = path.resolve()
    for name, size in files.items():
        file = path / name
        if not file.resolve().is_relative_to(root):
            return f"{CHECKPOINT_MANIFEST} lists {name}, outside the checkpoint", None
        if not file.is_file():
            return f"{name} missing", None
        if file.stat().st_size != size:
            return f"{name} truncated: {file.stat().st_size} of {size} bytes", None
        problem = _unreadable(file)
        if problem is not None:
            return f"{name} unreadable: {problem}", None
    return None, manifest


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The manifest of the checkpoint folder ``path``, read without loading anything else.

    Raises ``CheckpointError`` when the folder holds a pickle file (``*.pkl``, ``*.bin``, ``*.pt``,
    ``*.pth``, ... or any other file starting like a pickle: loading one can run code) or is
    incomplete (no manifest, a file missing, of another size than recorded, or whose JSON or
    safetensors header does not parse); the message names the file and the newest earlier complete
    checkpoint of the same folder to resume from instead.
    """
    path = Path(path)
    pickles = _pickles(path)
    if pickles:
        raise CheckpointError(
            f"{path}: refusing to load {pickles[0].relative_to(path)}: pickle files can run code when loaded, and "
            "diffusers-city checkpoints hold only safetensors and JSON (checkpoints written by accelerate's save_state, "
            "as older versions did, cannot be resumed)"
        )
    problem, manifest = _incomplete(path)
    if problem is None:
        return manifest
    match = CHECKPOINT_RE.match(path.name)
    earlier = [
        p
        for p in list_checkpoints(path.parent)
        if match is None or int(CHECKPOINT_RE.match(p.name).group(1)) < int(match.group(1))
    ]
    usable = next((p for p in reversed(earlier) if not _pickles(p) and _incomplete(p)[0] is None), None)
    offer = (
        f"resume from {usable.name} with --resume_from_checkpoint {usable}"
        if usable is not None
        else "no earlier complete checkpoint: start afresh without --resume_from_checkpoint"
    )
    raise CheckpointError(f"{path.name} is incomplete ({problem}); {offer}")


def _truncate_log(path: Path, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (and no half-written line of a killed run)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str) -> None:
    """Tensors of the per-parameter state as safetensors, the rest (hyper-parameters) as JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, folder / f"{name}.safetensors")
    _write_json(folder / f"{name}.json", {"state": scalars, "param_groups": state["param_groups"]})


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str) -> None:
    saved = _read_json(folder / f"{name}.json")
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in load_file(folder / f"{name}.safetensors").items():
        index, field = key.split(".", 1)
        state.setdefault(int(index), {})[field] = tensor
    for index, values in saved["state"].items():
        state.setdefault(int(index), {}).update(values)
    live = optimizer.state_dict()["param_groups"]
    # JSON turns tuples (Adam's betas) into lists: give them back the live groups' types
    groups = [
        {k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in group.items()}
        for group, now in zip(saved["param_groups"], live)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's global generators: torch (CPU, CUDA) as tensors, Python and NumPy as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": random.getstate(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_states(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in tensors])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _save_state(accelerator: Accelerator, folder: Path) -> None:
    """The main process's share of a checkpoint: models, optimizers, schedulers, EMAs, grad scaler."""
    for i, model in enumerate(accelerator._models):
        save_model(accelerator.unwrap_model(model), str(folder / f"model_{i}.safetensors"))
    for i, optimizer in enumerate(accelerator._optimizers):
        _save_optimizer(optimizer, folder, f"optimizer_{i}")
    for i, scheduler in enumerate(accelerator._schedulers):
        _write_json(folder / f"scheduler_{i}.json", scheduler.state_dict())
    for i, ema in enumerate(_emas.get(accelerator, [])):
        state = ema.state_dict()
        save_file(
            {str(k): p.detach().cpu().contiguous() for k, p in enumerate(state.pop("shadow_params"))},
            folder / f"ema_{i}.safetensors",
        )
        _write_json(folder / f"ema_{i}.json", state)
    if accelerator.scaler is not None:
        _write_json(folder / "scaler.json", accelerator.scaler.state_dict())


def _shapes(file: Path) -> dict[str, list[int]]:
    with safe_open(file, "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def _check_fits(accelerator: Accelerator, folder: Path) -> None:
    """Refuse, before anything is loaded, weights of other names or shapes than this run's models
    and EMAs (a checkpoint of another preset), naming the file and the first tensor that differs."""
    expected = {
        f"model_{i}.safetensors": {k: list(v.shape) for k, v in accelerator.unwrap_model(m).state_dict().items()}
        for i, m in enumerate(accelerator._models)
    }
    for i, ema in enumerate(_emas.get(accelerator, [])):
        expected[f"ema_{i}.safetensors"] = {str(k): list(p.shape) for k, p in enumerate(ema.shadow_params)}
    for name, wanted in expected.items():
        saved = _shapes(folder / name)
        differs = next((k for k in saved if saved[k] != wanted.get(k)), None)
        if differs is None and name.startswith("ema_") and len(saved) != len(wanted):
            differs = f"{len(saved)} of {len(wanted)} tensors"
        if differs is not None:
            raise CheckpointError(
                f"{folder / name} does not fit this run (tensor {differs}: saved {saved.get(differs)}, "
                f"this run {wanted.get(differs)}): a checkpoint of another preset or model"
            )


def _load_state(accelerator: Accelerator, folder: Path, manifest: dict[str, Any]) -> None:
    emas = _emas.get(accelerator, [])
    for i, model in enumerate(accelerator._models):
        load_model(accelerator.unwrap_model(model), folder / f"model_{i}.safetensors")
    for i, optimizer in enumerate(accelerator._optimizers):
        _load_optimizer(optimizer, folder, f"optimizer_{i}")
    for i, scheduler in enumerate(accelerator._schedulers):
        scheduler.load_state_dict(_read_json(folder / f"scheduler_{i}.json"))
    for i, ema in enumerate(emas):
        shadow = load_file(folder / f"ema_{i}.safetensors")
        params = [shadow[str(k)].to(old.device) for k, old in enumerate(ema.shadow_params)]
        ema.load_state_dict({**_read_json(folder / f"ema_{i}.json"), "shadow_params": params})
    if accelerator.scaler is not None and (folder / "scaler.json").is_file():
        accelerator.scaler.load_state_dict(_read_json(folder / "scaler.json"))
    rank = accelerator.process_index
    if (folder / f"rng_state_{rank}.json").is_file():
        _set_rng_states(load_file(folder / f"rng_state_{rank}.safetensors"), _read_json(folder / f"rng_state_{rank}.json"))
    else:
        logger.warning("%s has no RNG state of process %d (saved by %d processes)", folder, rank, manifest["processes"])
    accelerator.step = manifest["accelerator_step"]


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, global_step: int) -> Path:
    """Save the training state (models, optimizers, schedulers, EMA, RNG) to ``output_dir/checkpoint-<step>``.

    Safetensors for tensors, JSON for the rest; the ``checkpoint.json`` manifest (step, counts,
    every file's size) is written last. The state is written to a hidden folder, flushed to disk
    and renamed into place, so an interrupted save never looks like a checkpoint to
    ``maybe_resume``; only then are the oldest checkpoints deleted (main process only) so that at
    most ``checkpoints_total_limit`` remain, so a killed save always leaves the previous one.
    """
    output_dir = Path(args.output_dir)
    final = output_dir / f"checkpoint-{global_step}"
    partial = output_dir / f".checkpoint-{global_step}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        _save_state(accelerator, partial)
    accelerator.wait_for_everyone()
    tensors, states = _rng_states()
    save_file(tensors, partial / f"rng_state_{accelerator.process_index}.safetensors")
    _write_json(partial / f"rng_state_{accelerator.process_index}.json", states)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "step": global_step,
            "accelerator_step": accelerator.step,
            "processes": accelerator.num_processes,
            "models": len(accelerator._models),
            "optimizers": len(accelerator._optimizers),
            "schedulers": len(accelerator._schedulers),
            "emas": len(_emas.get(accelerator, [])),
            "files": files,
        }
        _write_json(partial / CHECKPOINT_MANIFEST, manifest)
        fsync_tree(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if args.checkpoints_total_limit is not None:
            older = [p for p in list_checkpoints(output_dir) if p != final]
            for path in older[: max(len(older) + 1 - args.checkpoints_total_limit, 0)]:
                logger.info("removing old checkpoint %s", path)
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


def model_from_preset_or_folder(cls: type, config: dict[str, Any], init_from: str | Path | None) -> torch.nn.Module:
    """``cls`` built from the preset's ``config``, or warm-started from the saved model folder
    ``init_from`` (e.g. a subfolder of a shipped pipeline) in fp32.

    Sessions that cannot keep their checkpoints continue from weights that were kept; the optimizer
    then starts fresh. The folder's config must equal the preset's (the same architecture; a VAE's
    ``scaling_factor`` may differ), else the warm start is refused naming the keys that differ.
    """
    if init_from is None:
        return cls.from_config(config)
    folder = Path(init_from)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init_from {folder}: not a saved {cls.__name__} folder (no config.json)")
    saved = _read_json(folder / "config.json")
    kept = [k for k in config if not k.startswith("_") and k != "scaling_factor" and k in saved]
    differ = sorted(k for k in kept if saved[k] != config[k])
    if saved.get("_class_name", cls.__name__) != cls.__name__ or differ:
        raise ValueError(f"--init_from {folder}: a {saved.get('_class_name')} whose config differs from the preset's in {differ}")
    return cls.from_pretrained(folder, torch_dtype=torch.float32, use_safetensors=True)


def create_ema(model: torch.nn.Module, args: argparse.Namespace, accelerator: Accelerator | None = None) -> EMAModel | None:
    """diffusers ``EMAModel`` of ``model``'s parameters when ``--use_ema``, else ``None``.

    The EMA is moved to the accelerator's device and registered with it, so
    ``save_checkpoint``/``maybe_resume`` carry it (shadow weights as safetensors, counters as
    JSON). ``accelerator`` defaults to the one made by the last ``setup_accelerator`` call. Call
    before ``accelerator.prepare``, in the same order on every run.
    """
    if not args.use_ema:
        return None
    if accelerator is None:
        accelerator = _current_accelerator() if _current_accelerator is not None else None
    if accelerator is None:
        raise ValueError("create_ema needs an accelerator: call setup_accelerator(args) first")
    if not 0.0 < args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in (0, 1), got {args.ema_decay}")
    config = getattr(model, "config", None)
    ema = EMAModel(
        model.parameters(),
        decay=args.ema_decay,
        model_cls=type(model) if config is not None else None,
        model_config=config,
    )
    ema.to(accelerator.device)
    _emas.setdefault(accelerator, []).append(ema)
    return ema


def _safe_image_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _write_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")


def log_validation_images(
    accelerator: Accelerator, args: argparse.Namespace, images: dict[str, Image.Image], step: int
) -> list[Path]:
    """Write ``images`` as ``output_dir/validation/step-<step>/<name>.png`` and log them to the trackers.

    Only the main process writes; the others return ``[]``.
    """
    bad = [name for name in images if not _safe_image_name(name)]
    if bad:
        raise ValueError(f"validation image names must be plain file names, got {bad}")
    not_images = [name for name, image in images.items() if not isinstance(image, Image.Image)]
    if not_images:
        raise ValueError(f"validation images must be PIL images: {not_images}")
    if not accelerator.is_main_process:
        return []
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in images.items():
        path = folder / f"{name}.png"
        _write_png_atomic(image, path)
        paths.append(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            arrays = {f"validation/{k}": np.asarray(v.convert("RGB"))[None] for k, v in images.items()}
            tracker.log_images(arrays, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({f"validation/{k}": [v] for k, v in images.items()}, step=step)
    return paths


def _card_template_path(card_template: str) -> Path:
    path = Path(card_template)
    if path.suffix == ".md" and path.is_file():
        return path
    path = MODEL_CARDS_DIR / f"{card_template}.md"
    if not path.is_file():
        available = sorted(p.stem for p in MODEL_CARDS_DIR.glob("*.md")) if MODEL_CARDS_DIR.is_dir() else []
        raise FileNotFoundError(
            f"model card template {card_template!r}: neither a .md file nor one of {available} in {MODEL_CARDS_DIR}"
        )
    return path


def _substitute(template_path: Path, fields: dict[str, Any]) -> str:
    template = string.Template(template_path.read_text())
    missing = sorted(
        {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {None} - set(fields)
    )
    if missing:
        raise ValueError(f"model card template {template_path} needs fields {missing}")
    return template.substitute({k: str(v) for k, v in fields.items()})


def render_model_card(args: argparse.Namespace, repo_id: str, card_template: str, card_fields: dict[str, Any]) -> str:
    """Markdown of the model card: ``template.md`` around the system's template, both from
    ``MODEL_CARDS_DIR`` (``diffusers_city/assets/model_cards``, package data).

    The system template (``<card_template>.md`` there, or a path) is filled with
    ``card_fields`` (``string.Template`` ``$name`` fields) and becomes ``$system_card`` of the
    generic template, which also gets ``$repo_id`` and ``$training_details`` (the run's
    hyper-parameters) plus ``card_fields``.
    """
    reserved = sorted(set(card_fields) & set(_RESERVED_CARD_FIELDS))
    if reserved:
        raise ValueError(f"card_fields may not set {reserved}: push_folder_to_hub fills them")
    system_card = _substitute(_card_template_path(card_template), card_fields)
    details = "\n".join(f"- `{k}`: {getattr(args, k)}" for k in _CARD_HPARAMS if hasattr(args, k))
    fields = {**card_fields, "repo_id": repo_id, "system_card": system_card, "training_details": details}
    return _substitute(_card_template_path("template"), fields)


def push_folder_to_hub(args: argparse.Namespace, folder: str | Path, card_template: str, card_fields: dict[str, Any]) -> str:
    """Write a model card into ``folder`` and upload the folder to ``--hub_model_id``; returns the repo id.

    The card is ``render_model_card`` text in a diffusers ``ModelCard``
    (``load_or_create_model_card`` keeps the metadata of a card already on the Hub,
    ``populate_model_card`` adds the library name and tags). ``checkpoint-*`` folders are not
    uploaded. Call it on the main process only.
    """
    from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"push_folder_to_hub: {folder} is not a folder")
    name = args.hub_model_id or Path(args.output_dir).resolve().name
    # Render with the requested name first, so a bad template or field fails before the Hub is touched.
    render_model_card(args, name, card_template, card_fields)
    repo_id = create_repo(name, exist_ok=True, token=args.hub_token).repo_id
    card = load_or_create_model_card(
        repo_id,
        token=args.hub_token,
        is_modular=True,
        update_model_card=True,
        model_description=render_model_card(args, repo_id, card_template, card_fields),
    )
    tags = [t for t in ("diffusers-city", Path(card_template).stem) if t not in (card.data.tags or [])]
    card = populate_model_card(card, tags=tags)
    with atomic_write(folder / "README.md") as tmp:
        card.save(str(tmp))
    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        token=args.hub_token,
        commit_message="Upload diffusers-city pipeline",
        ignore_patterns=["checkpoint-*", ".*.partial", ".*.old", ".*.tmp*"],
    )
    return repo_id
