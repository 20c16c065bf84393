"""Checks of a model right after its weights are loaded, so damage in a pipeline folder is
refused at load, naming the component and the tensor, instead of surfacing later as NaN
outputs or ``RuntimeError: Tensor on device meta``.

- Non-finite weights: a flipped byte in a ``.safetensors`` file can turn a float into NaN / inf,
  which loads without a word.
- Meta tensors: with ``low_cpu_mem_usage`` (diffusers' default), a config declaring more layers
  than the checkpoint has weights for leaves those parameters on the meta device (diffusers
  only logs "Some weights ... were not initialized").
- Config values a constructor cannot take (a ``{}`` for a channel count) raise its ``TypeError``
  (...) without naming the file; they become a ``ValueError`` naming the component's folder.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any

import torch

__all__ = ["check_loaded_model", "check_loaded_pipeline", "check_weights_on_load"]

_SHOWN = 5
# What a config value of the wrong type or range raises in a constructor (a ``{}`` for a channel
# count, a string for a list, a width whose weights cannot be allocated: torch's RuntimeError or
# MemoryError); diffusers' own refusals are ``OSError`` / ``ValueError``.
_CONFIG_ERRORS = (TypeError, AttributeError, KeyError, IndexError, ZeroDivisionError, OverflowError, RuntimeError, MemoryError)


# Models checked by their own ``from_pretrained`` during the pipeline load in progress (by id,
# kept alive for the call): the pipeline's check skips them instead of scanning their weights again.
_checked_in_load: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar("checked_in_load", default=None)


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


def check_loaded_pipeline(pipeline: Any, where: str = "pipeline", skip: dict[int, Any] | None = None) -> None:
    """`check_loaded_model` on every ``torch.nn.Module`` component of a diffusers pipeline
    (``pipeline.components``), named ``<where>: component '<name>' (<class>)``: also those
    passed in or of classes that do not check themselves on load. Components in ``skip`` (by
    id: those a wrapped ``from_pretrained`` checked during this load) are not scanned again."""
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module) and (skip is None or skip.get(id(component)) is not component):
            check_loaded_model(component, f"{where}: component {name!r} ({type(component).__name__})")


def check_weights_on_load(cls: type) -> type:
    """Make ``cls.from_pretrained`` (a diffusers ``ModelMixin`` or ``DiffusionPipeline`` class)
    refuse what it loaded with `check_loaded_model` / `check_loaded_pipeline`, and a config the
    class cannot be built from with a ``ValueError`` instead of the constructor's ``TypeError``
    (...), named by the class and the folder it was loaded from (a pipeline's component folder
    names the component). Idempotent; subclasses inherit the wrapped method; ``(model, info)`` results
    of ``output_loading_info=True`` are handled."""
    from diffusers import DiffusionPipeline

    func = inspect.getattr_static(cls, "from_pretrained").__func__
    if getattr(func, "_checks_loaded_weights", False):
        return cls

    @functools.wraps(func)
    def from_pretrained(klass, pretrained_model_name_or_path, *args, **kwargs):
        where = str(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            where = f"{where}/{kwargs['subfolder']}"
        token = _checked_in_load.set({}) if issubclass(klass, DiffusionPipeline) else None
        try:
            loaded = func(klass, pretrained_model_name_or_path, *args, **kwargs)
            checked = _checked_in_load.get()
        except _CONFIG_ERRORS as err:
            raise ValueError(
                f"{klass.__name__} from {where}: its config cannot build it ({type(err).__name__}: {err}); "
                "the folder's config files are corrupt or from another version"
            ) from err
        except ValueError as err:  # diffusers' refusals (e.g. weights of other shapes) do not all name the folder
            if where in str(err):
                raise
            raise ValueError(f"{klass.__name__} from {where}: {err}") from err
        finally:
            if token is not None:
                _checked_in_load.reset(token)
        obj = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(obj, DiffusionPipeline):
            check_loaded_pipeline(obj, f"{type(obj).__name__} from {where}", skip=checked)
        else:
            check_loaded_model(obj, f"{type(obj).__name__} from {where}")
            if checked is not None:
                checked[id(obj)] = obj
        return loaded

    from_pretrained._checks_loaded_weights = True
    cls.from_pretrained = classmethod(from_pretrained)
    return cls
