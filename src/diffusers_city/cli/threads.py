"""torch's CPU thread count for the command line.

torch starts one intra-op thread per core of the machine, even when this process may run on only
a few of them (a container, ``taskset``) or shares them: threads then wait for each other (a CPU
demo took 752 s instead of 43 s on a busy machine). The CLI uses one thread per physical core this
process may run on, unless ``--threads N`` or ``$DIFFUSERS_CITY_THREADS`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "DIFFUSERS_CITY_THREADS"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        metavar="N",
        help=f"torch CPU threads (default: ${ENV}, else the physical cores this process may use)",
    )


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (its affinity; hyper-threads count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology (not Linux): one core per CPU
    return max(len(cores), 1)


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The thread count and where it comes from: ``--threads``, ``$DIFFUSERS_CITY_THREADS`` or the cores."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get(ENV)
    if env:
        try:
            return _positive(env), f"${ENV}"
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"${ENV}={env!r}: {error}") from None
    return physical_cores(), "physical cores of this process's CPU affinity"


@contextmanager
def torch_threads(requested: int | None) -> Iterator[int]:
    """torch's intra-op thread count set by :func:`choose_threads` for the block, then put back
    (``cli.main`` called in a process that goes on, e.g. a test, leaves it as it was)."""
    import torch

    previous = torch.get_num_threads()
    threads = choose_threads(requested)[0]
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
