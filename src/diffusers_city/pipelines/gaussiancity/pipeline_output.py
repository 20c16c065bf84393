"""Output of :class:`GaussianCityPipeline`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ...models.gaussiancity.bev import BEVLayout
from ...render import Gaussians


@dataclass
class GaussianCityPipelineOutput(BaseOutput):
    """Output of :class:`GaussianCityPipeline`.

    Attributes:
        images: rendered frames: a list of PIL images (``"pil"``), ``[F, H, W, 3]`` float 0..1
            (``"np"``, ``"pt"``), or ``None`` for ``output_type="gaussians"``.
        gaussians: the whole layout's Gaussians (``output_type="gaussians"`` or
            ``return_gaussians="layout"``), a list with each frame's visible Gaussians
            (``return_gaussians="visible"``), else ``None``.
        styles: the ``[num_instances + 1, style_dim]`` style table used (edit it and pass it back).
        layout: the validated :class:`~diffusers_city.models.gaussiancity.bev.BEVLayout` (instance ids, boxes).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    gaussians: Gaussians | list[Gaussians] | None
    styles: torch.Tensor
    layout: BEVLayout
