"""Options several subcommands share, validated by argparse (usage error, status 2) before any work."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of GB > 0, got {text!r}")
    return value


def add_max_memory_gb(parser: argparse.ArgumentParser, what: str) -> None:
    """``--max-memory-gb``: refuse ``what`` when its estimated peak memory is larger (default: the
    memory available when the run starts; ``utils.memory``)."""
    parser.add_argument(
        "--max-memory-gb",
        type=_gigabytes,
        default=None,
        metavar="GB",
        help=f"refuse {what} estimated to need more memory (default: the memory available now)",
    )


class _DeprecatedAlias(argparse.Action):
    """A hidden earlier spelling of an option: stores into the new option's dest and says so on stderr."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` (hidden from ``--help``) as a deprecated spelling of the option ``new``."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, default=argparse.SUPPRESS, **kwargs)


def add_pipeline(
    parser: argparse.ArgumentParser, system: str, *, old: str | None = None, default_text: str | None = None
) -> None:
    """``--pipeline``: the pipeline folder or Hub repo id, the one name every ``generate`` command uses
    (``old``: an earlier spelling, still accepted with a warning)."""
    shown = default_text or f"the shipped pipelines/{system}/default"
    parser.add_argument("--pipeline", default=None, help=f"pipeline folder or Hub repo id (default: {shown})")
    if old is not None:
        add_deprecated_alias(parser, old, "--pipeline")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``, with the same default everywhere (``cli.errors.resolve_device``)."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def scene_folder(path: Path, option: str) -> Path:
    """The CityScene folder ``path`` names: ``path`` itself, or ``path/scene`` (what ``diffusers-city
    scene --out path`` writes); ``FileNotFoundError`` with a hint otherwise."""
    for folder in (path, path / "scene"):
        if (folder / "scene.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{option} {path} is not a scene folder (no scene.json in it or in {path / 'scene'}); "
        f"make one with: diffusers-city scene --out {path}"
    )
