"""Memory estimates checked before allocating: an input too large for this machine is refused
with its estimate, instead of dying in the allocator (numpy's ``MemoryError``, an abort, the
OOM killer) after minutes of work.

Every public entry point that allocates with its input's size takes ``max_memory_gb``: ``None``
(the default) means the memory available right now (:func:`available_memory_gb`); a number
is the user's own limit, which may be higher (swap, memory that will be freed) or lower.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MemoryLimitError", "available_memory_gb", "check_memory", "memory_limit_gb"]

GB = 1e9


class MemoryLimitError(ValueError):
    """An estimated peak memory exceeds the limit (a ``ValueError``: the input is too large)."""


def _meminfo_available() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), else ``None``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> float | None:
    """Room left under this process's cgroup v2 memory limit in bytes, else ``None`` (no limit)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def _sysconf_available() -> float | None:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory_gb(device: torch.device | str | None = None) -> float:
    """Memory a new allocation can get now, in GB (1e9 bytes).

    On a CUDA ``device``: its free memory. Otherwise host memory: the smaller of Linux's
    ``MemAvailable`` and the room under a cgroup limit (containers), else the free physical
    pages (``os.sysconf``); ``inf`` where the platform tells nothing.
    """
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free / GB
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not known:
        known = [v for v in (_sysconf_available(),) if v is not None]
    return max(0.0, min(known)) / GB if known else math.inf


def memory_limit_gb(max_memory_gb: Any, device: torch.device | str | None = None) -> float:
    """The limit in GB: ``max_memory_gb`` when it is a finite number > 0, the available memory when
    it is ``None``; ``ValueError`` for anything else (NaN, inf, <= 0, booleans, strings)."""
    if max_memory_gb is None:
        return available_memory_gb(device)
    if isinstance(max_memory_gb, (bool, np.bool_)) or not isinstance(max_memory_gb, numbers.Real):
        raise ValueError(f"max_memory_gb must be a number of GB (or None: the available memory), got {max_memory_gb!r}")
    value = float(max_memory_gb)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"max_memory_gb must be a finite number > 0 (or None: the available memory), got {max_memory_gb!r}")
    return value


def check_memory(
    estimate_bytes: float, max_memory_gb: Any, what: str, device: torch.device | str | None = None, hint: str = ""
) -> float:
    """Refuse (:class:`MemoryLimitError`, naming ``what`` and the estimate) when ``estimate_bytes``
    exceeds the limit of ``max_memory_gb`` (see :func:`memory_limit_gb`); returns the limit in GB."""
    limit = memory_limit_gb(max_memory_gb, device)
    need = float(estimate_bytes) / GB
    if need > limit:
        source = "the available memory" if max_memory_gb is None else "max_memory_gb"
        raise MemoryLimitError(
            f"{what}: estimated peak memory {need:.3g} GB exceeds {source} ({limit:.3g} GB); "
            f"{hint + '; ' if hint else ''}or raise max_memory_gb"
        )
    return limit
