"""Shared pieces of the ``training/`` scripts: flags, accelerate setup, checkpoints, EMA,
validation images and pushing to the Hub.

Every script runs under ``accelerate launch`` (CPU or 1..N GPUs). The flow is::

    args = training_parser("...").parse_args()
    accelerator = setup_accelerator(args)
    ema = create_ema(model, args)                 # before accelerator.prepare
    model, optimizer, ... = accelerator.prepare(...)
    global_step = maybe_resume(accelerator, args)
    ...  save_checkpoint(accelerator, args, step) / log_validation_images(...)
    if accelerator.is_main_process and args.push_to_hub:
        push_folder_to_hub(args, folder, "sat2city", {...})
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import string
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import SchedulerType
from diffusers.training_utils import EMAModel
from PIL import Image

from .export.atomic import atomic_write
from .presets import BUNDLED_ROOT, load_preset, read_preset

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MODEL_CARDS_DIR = BUNDLED_ROOT.resolve().parent / "model_cards"
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
        default="tensorboard",
        help="tracker; falls back to none when its package is not installed",
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


def _tracker(report_to: str) -> str | None:
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


def setup_accelerator(args: argparse.Namespace) -> Accelerator:
    """``Accelerator`` writing under ``args.output_dir`` (``logs/`` for trackers), seeded with ``args.seed``."""
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
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if log_with is not None:
        accelerator.init_trackers(output_dir.resolve().name, config=_tracker_config(args))
    _current_accelerator = weakref.ref(accelerator)
    return accelerator


def out_of_time(accelerator: Accelerator, args: argparse.Namespace, start: float) -> bool:
    """Whether ``--max_train_minutes`` has passed since ``start`` (``time.time()``) on any process.

    Every process gets the same answer, so all of them stop at the same step and the collective
    checkpoint save that follows cannot hang on a process that kept training.
    """
    if args.max_train_minutes is None:
        return False
    late = (time.time() - start) / 60 >= args.max_train_minutes
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
        with open(Path(args.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as log:
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


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest (smallest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def maybe_resume(accelerator: Accelerator, args: argparse.Namespace) -> int:
    """Restore model/optimizer/EMA/RNG state from ``--resume_from_checkpoint``; returns the global step.

    ``latest`` picks the ``checkpoint-N`` with the largest N in ``output_dir`` (0 and a warning
    when there is none); any other value is a checkpoint folder, as a path or a name in ``output_dir``.
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
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(str(path))
    return int(match.group(1))


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, global_step: int) -> Path:
    """Save the accelerator state (models, optimizers, EMA, RNG) to ``output_dir/checkpoint-<step>``.

    The oldest checkpoints are deleted first (main process only) so that at most
    ``checkpoints_total_limit`` remain. The state is written to a hidden folder and renamed
    into place, so an interrupted save never looks like a checkpoint to ``maybe_resume``.
    """
    output_dir = Path(args.output_dir)
    final = output_dir / f"checkpoint-{global_step}"
    if accelerator.is_main_process and args.checkpoints_total_limit is not None:
        older = [p for p in list_checkpoints(output_dir) if p != final]
        excess = len(older) + 1 - args.checkpoints_total_limit
        for path in older[: max(excess, 0)]:
            logger.info("removing old checkpoint %s", path)
            shutil.rmtree(path)
    partial = output_dir / f".checkpoint-{global_step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def create_ema(model: torch.nn.Module, args: argparse.Namespace, accelerator: Accelerator | None = None) -> EMAModel | None:
    """diffusers ``EMAModel`` of ``model``'s parameters when ``--use_ema``, else ``None``.

    The EMA is moved to the accelerator's device and registered for checkpointing, so
    ``save_checkpoint``/``maybe_resume`` carry it. ``accelerator`` defaults to the one made by
    the last ``setup_accelerator`` call. Call before ``accelerator.prepare``.
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
    accelerator.register_for_checkpointing(ema)
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
    """Markdown of the model card: ``model_cards/template.md`` around the system's template.

    The system template (``model_cards/<card_template>.md`` or a path) is filled with
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
        ignore_patterns=["checkpoint-*", ".checkpoint-*", ".*.tmp"],
    )
    return repo_id
