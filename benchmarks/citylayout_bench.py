"""What the CityLayout benchmark scripts share: loading the pipeline they measure."""

from __future__ import annotations

import argparse

import torch

from diffusers_city.pipelines.citylayout import CityLayoutPipeline
from diffusers_city.presets import bundled_path


def load_pipeline(args: argparse.Namespace) -> CityLayoutPipeline:
    """``--preset`` (untrained) or ``--pipeline`` (default: the shipped one) in fp32 on ``--device``;
    ``ValueError`` for a CUDA device where there is none, before loading."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu --quick)")
    if args.preset:
        pipe = CityLayoutPipeline.from_preset(args.preset)
    else:
        source = args.pipeline or str(bundled_path("citylayout", "default"))
        pipe = CityLayoutPipeline.from_pretrained(source, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
