"""One denoising step replayed as a CUDA graph.

A Sat2City stage runs its U-Net on the same structure for every DDIM step. After one eager step
(which builds and caches the kernel maps and attention plans), the step's kernels can be
captured once and replayed: the per-step launch and Python overhead goes, the arithmetic stays.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...utils.cuda_graph import CapturedCall


class GraphedStep:
    """``step(latents, t) -> tensor``: eager on the first call, then captured on the second and
    replayed with ``latents`` and ``t`` copied into static buffers. The returned tensor is the
    graph's output buffer, overwritten by the next call."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.step = step
        self.graph: CapturedCall | None = None
        self.eager_done = False

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.eager_done:
            self.eager_done = True
            return self.step(latents, t)
        t = torch.as_tensor(t, device=latents.device)
        if self.graph is None:
            self.graph = CapturedCall(self.step, [latents, t])
        return self.graph(latents, t)
