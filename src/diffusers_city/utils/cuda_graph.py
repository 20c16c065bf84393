"""A function of tensors replayed as a CUDA graph: the launch and Python overhead of its kernels
goes, the arithmetic stays. Shared by the pipelines' ``enable_cuda_graphs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CapturedCall"]


class CapturedCall:
    """``fn(*inputs)`` captured once over static copies of ``inputs`` (CUDA tensors).

    Calling it with tensors of the same shapes and dtypes copies them into those buffers and
    replays the graph; the result is the graph's own output buffer, overwritten by the next call.
    ``fn`` must be free of host syncs and of data-dependent shapes.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> None:
        self.inputs = [t.detach().clone() for t in inputs]
        device = self.inputs[0].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"captured with {len(self.inputs)} inputs, got {len(inputs)}")
        for i, (buf, t) in enumerate(zip(self.inputs, inputs)):
            if buf.shape != t.shape or buf.dtype != t.dtype:
                raise ValueError(f"input {i} is {t.dtype} {list(t.shape)}, captured as {buf.dtype} {list(buf.shape)}")
            buf.copy_(t)
        self.graph.replay()
        return self.output
