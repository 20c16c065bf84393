"""What the CityLayout benchmark scripts share: loading the pipeline they measure."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffusers_city.pipelines.citylayout import CityLayoutPipeline
from diffusers_city.presets import bundled_path


def add_pipeline_arguments(parser: argparse.ArgumentParser, quick: str) -> None:
    """``--out``, the pipeline to measure (``--pipeline`` / ``--preset``), ``--device`` and ``--quick``
    (whose effect ``quick`` says)."""
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--pipeline", default=None, help="trained pipeline folder or repo id (default: pipelines/citylayout/default)"
    )
    parser.add_argument("--preset", default=None, help="measure an untrained preset instead (smoke tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=f"smoke mode: {quick}")


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
