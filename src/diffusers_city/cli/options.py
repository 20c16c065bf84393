"""Options several subcommands share, validated by argparse (usage error, status 2) before any work."""

from __future__ import annotations

import argparse
import math


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
