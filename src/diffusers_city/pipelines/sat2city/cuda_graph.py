"""One denoising step replayed as a CUDA graph.

A Sat2City stage runs its U-Net on the same structure for every DDIM step. After one eager step
(which builds and caches the kernel maps and attention plans), the step's kernels can be
captured once and replayed: the per-step launch and Python overhead goes, the arithmetic stays.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedStep:
    """``step(latents, t) -> tensor``: eager on the first call, then captured on the second and
    replayed with ``latents`` and ``t`` copied into static buffers. The returned tensor is the
    graph's output buffer, overwritten by the next call."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_done = False

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.eager_done:
            self.eager_done = True
            return self.step(latents, t)
        if self.graph is None:
            self._capture(latents, t)
        self.latents.copy_(latents)
        self.t.copy_(t)
        self.graph.replay()
        return self.out

    def _capture(self, latents: torch.Tensor, t: torch.Tensor) -> None:
        device = latents.device
        self.latents = latents.clone()
        self.t = torch.as_tensor(t, device=device).clone()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            self.step(self.latents, self.t)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.step(self.latents, self.t)
