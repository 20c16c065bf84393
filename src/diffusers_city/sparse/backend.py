"""Run-time choice of the sparse-convolution backend, per device.

``"spconv"`` (spconv-triton, CUDA only) is the default for CUDA tensors when it imports;
``"torch"`` (the vectorized pure-torch reference in ``_torch_backend``) runs everywhere and is
the default elsewhere. ``use_backend(name)`` overrides the choice inside a ``with`` block
(context-local, so threads and async tasks do not leak it); without one, the environment variable
``DIFFUSERS_CITY_SPARSE_BACKEND`` (read at each call) picks it for a whole process, e.g. for a
training script run under ``accelerate launch``. Both backends implement the same
semantics (see ``kernel_map``) and take weights ``[out, kx, ky, kz, in]`` unchanged.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from .tensor import SparseTensor

BACKEND_NAMES = ("torch", "spconv")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("diffusers_city_sparse_backend", default=None)


class ConvBackend(Protocol):
    """What a backend implements; kernel size comes from the weight, stride/padding are ints."""

    name: str

    def subm_conv(self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...

    def down_conv(
        self, x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Output features, output coords [M, 4] int32 (lexicographic order), cache for the output."""
        ...

    def inverse_conv(
        self,
        x: SparseTensor,
        target: SparseTensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int,
        padding: int,
    ) -> torch.Tensor: ...

    def build_map(self, x: SparseTensor, kind: str, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        """Build and cache the kernel map only (``kind`` "subm" or "down"); for timing."""
        ...


@functools.cache
def _available() -> tuple[str, ...]:
    if not torch.cuda.is_available():
        return ("torch",)
    try:
        import spconv_triton.pytorch  # noqa: F401
    except Exception:
        return ("torch",)
    return ("torch", "spconv")


def available_backends() -> list[str]:
    """Backends usable in this process: always ``"torch"``; ``"spconv"`` with CUDA + spconv-triton."""
    return list(_available())


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` ("torch" or "spconv") for sparse convolutions inside the block."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of {BACKEND_NAMES}")
    if name not in available_backends():
        raise ValueError(f"sparse backend {name!r} is not available here (needs CUDA and spconv-triton)")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def compute_dtype(feats: torch.Tensor) -> torch.dtype:
    """dtype convolutions multiply in: the autocast dtype inside autocast (float16/32 and bfloat16
    features), else the features' own dtype."""
    device_type = feats.device.type
    if torch.is_autocast_enabled(device_type) and feats.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(device_type)
    return feats.dtype


def backend_name(device: torch.device) -> str:
    """Name of the backend that runs on ``device`` right now."""
    name = _override.get()
    if name is not None:
        if name == "spconv" and device.type != "cuda":
            raise ValueError(f"the spconv backend needs CUDA tensors, got device {device}")
        return name
    env = os.environ.get("DIFFUSERS_CITY_SPARSE_BACKEND")
    if env:
        if env not in available_backends():
            raise ValueError(f"DIFFUSERS_CITY_SPARSE_BACKEND={env!r} is not usable here; available: {available_backends()}")
        if env == "torch" or device.type == "cuda":
            return env
    return "spconv" if device.type == "cuda" and "spconv" in _available() else "torch"


def get_backend(device: torch.device) -> ConvBackend:
    """The backend object for ``device`` (see ``backend_name``)."""
    if backend_name(device) == "spconv":
        from ._spconv_backend import SPCONV_BACKEND

        return SPCONV_BACKEND
    from ._torch_backend import TORCH_BACKEND

    return TORCH_BACKEND
