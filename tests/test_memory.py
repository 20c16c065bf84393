"""utils.memory: the available memory, the limit a user passes, and the refusal with the estimate."""

import math

import numpy as np
import pytest

from diffusers_city.utils import memory
from diffusers_city.utils.memory import MemoryLimitError, available_memory_gb, check_memory, memory_limit_gb


def test_available_memory_is_a_positive_finite_amount_of_this_machine():
    gb = available_memory_gb()
    assert 0 < gb < math.inf
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 / 1e9 for line in f if line.startswith("MemTotal:"))
    assert gb <= total


def test_available_memory_takes_the_smaller_of_meminfo_and_cgroup(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8e9)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 3e9)
    assert available_memory_gb() == pytest.approx(3.0)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    monkeypatch.setattr(memory, "_sysconf_available", lambda: 5e9)
    assert available_memory_gb() == pytest.approx(5.0)


def test_default_limit_is_the_available_memory_and_a_user_limit_wins(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_gb", lambda device=None: 2.0)
    assert memory_limit_gb(None) == 2.0
    assert memory_limit_gb(64) == 64.0 and memory_limit_gb(np.float32(0.5)) == 0.5
    with pytest.raises(MemoryLimitError, match=r"3 GB exceeds the available memory \(2 GB\)"):
        check_memory(3e9, None, "a 3 GB thing")
    assert check_memory(3e9, 4.0, "a 3 GB thing") == 4.0
    with pytest.raises(MemoryLimitError, match=r"a 3 GB thing: .* exceeds max_memory_gb \(1 GB\); crop it; or raise"):
        check_memory(3e9, 1.0, "a 3 GB thing", hint="crop it")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0, True, np.bool_(True), "8", [8]])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="max_memory_gb must be"):
        memory_limit_gb(bad)
    with pytest.raises(ValueError, match="max_memory_gb must be"):
        check_memory(1.0, bad, "anything")
