"""Models loaded by ``from_pretrained`` keep their CPU weights in memory of their own.

diffusers' default loading (``low_cpu_mem_usage=True`` with accelerate installed) puts the
tensors safetensors returns straight into the model. On the CPU those are views into the
checkpoint file's private memory map, at the byte offsets the file happens to give them:
8-byte aligned at best, where a freshly built model's tensors come from torch's allocator,
64-byte aligned. The arithmetic is not the same on both: MKL (like other BLAS libraries,
see the alignment conditions of its Conditional Numerical Reproducibility) picks its
kernel, and with it the summation order, by the operands' alignment. A one-row product
``[1, k] @ [k, n]`` (sgemv) with a weight that is not 16-byte aligned rounds differently,
so a GaussianCity pipeline reloaded from disk rendered images up to 1.2e-7 away from the one
that was saved. Copying each CPU parameter and buffer once, right after loading, gives a
loaded model the same memory layout, hence the same kernels and the same bits, as the model
that was saved; it also detaches the weights from the file.
"""

from __future__ import annotations

import functools
import inspect
import itertools

import torch


def own_storage(module: torch.nn.Module) -> torch.nn.Module:
    """Copy every CPU parameter and buffer of ``module`` into a fresh allocation, in place.

    Parameter objects stay the same (``.data`` is swapped), so shared and tied weights stay
    shared; tensors on other devices (CUDA allocations are aligned; ``meta`` holds nothing)
    are left alone. Returns ``module``.
    """
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
    return module


def load_into_own_storage(cls: type) -> type:
    """Make ``cls.from_pretrained`` (a diffusers ``ModelMixin`` class) return models with :func:`own_storage`.

    Wraps the ``from_pretrained`` that ``cls`` resolves; idempotent, and subclasses inherit
    the wrapped method. ``output_loading_info=True`` results (model, info) are handled.
    """
    func = inspect.getattr_static(cls, "from_pretrained").__func__
    if getattr(func, "_loads_into_own_storage", False):
        return cls

    @functools.wraps(func)
    def from_pretrained(klass, *args, **kwargs):
        loaded = func(klass, *args, **kwargs)
        own_storage(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    from_pretrained._loads_into_own_storage = True
    cls.from_pretrained = classmethod(from_pretrained)
    return cls
