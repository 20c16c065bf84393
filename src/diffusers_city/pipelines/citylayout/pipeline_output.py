"""Outputs of the CityLayout pipelines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput

__all__ = ["CityLayoutGaussianCityPipelineOutput", "CityLayoutPipelineOutput"]


@dataclass
class CityLayoutPipelineOutput(BaseOutput):
    """Output of :class:`CityLayoutPipeline`.

    Args:
        scene: the generated layout as a ``CityScene`` (semantic classes, heights in metres,
            ``meters_per_pixel``, origin and CRS); ``None`` for ``output_type="latent"``.
        tokens: the token grid ``[gh, gw]`` (codebook indices) the layout was decoded from.
    """

    scene: Any
    tokens: torch.Tensor


@dataclass
class CityLayoutGaussianCityPipelineOutput(BaseOutput):
    """Output of :class:`CityLayoutGaussianCityPipeline`: GaussianCity's rendered ``images`` and
    ``gaussians`` (see ``GaussianCityPipelineOutput``) and the generated layout ``scene``."""

    images: Any
    gaussians: Any
    scene: Any
