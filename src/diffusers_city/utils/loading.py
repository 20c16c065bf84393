"""Checks of a model right after its weights are loaded, so damage in a pipeline folder is
refused at load, naming the component and the tensor, instead of surfacing later as NaN
outputs or ``RuntimeError: Tensor on device meta``.

- Non-finite weights: a flipped byte in a ``.safetensors`` file can turn a float into NaN / inf,
  which loads without a word.
- Meta tensors: with ``low_cpu_mem_usage`` (diffusers' default), a config declaring more layers
  than the checkpoint has weights for leaves those parameters on the meta device (diffusers
  only logs "Some weights ... were not initialized").
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_loaded_model", "check_loaded_pipeline"]

_SHOWN = 5


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_loaded_model(model: torch.nn.Module, name: str) -> None:
    """Raise ``ValueError`` naming component ``name`` and the tensors when a parameter or buffer
    of ``model`` lies on the meta device (weights missing from the checkpoint) or a floating /
    complex one holds NaN / inf values (a corrupt weights file)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [n for n, t in tensors if t.is_meta]
    if meta:
        raise ValueError(
            f"{name}: {len(meta)} tensor(s) have no weights in the checkpoint (left on the meta device): {_listed(meta)}; "
            "the config declares layers the weights file lacks (config and weights from different models, or a truncated file)"
        )
    bad = []
    for n, t in tensors:
        if t.is_floating_point() or t.is_complex():
            count = int(t.numel() - torch.isfinite(t.detach()).sum())
            if count:
                bad.append(f"{n} ({count} of {t.numel()} values)")
    if bad:
        raise ValueError(f"{name}: non-finite (NaN/inf) weights in {_listed(bad)}; the weights file is corrupt")


def check_loaded_pipeline(pipeline: Any) -> None:
    """`check_loaded_model` on every ``torch.nn.Module`` component of a diffusers pipeline
    (``pipeline.components``), each named by its component name."""
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            check_loaded_model(component, name)
