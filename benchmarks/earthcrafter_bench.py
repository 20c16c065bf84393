"""What the EarthCrafter benchmark scripts share: model arguments, loading, tiles, timing sync."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))

from earthcrafter_common import load_preset  # noqa: E402

from diffusers_city.pipelines.earthcrafter import EarthCrafterPipeline  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_arguments(p: argparse.ArgumentParser, default_preset: str, dtype: str) -> None:
    p.add_argument("--pretrained", type=Path, default=None, help="EarthCrafterPipeline folder (default: untrained --preset)")
    p.add_argument("--preset", default=None, help=f"preset of the tiles and of untrained models (default: {default_preset})")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=dtype, help=f"weights cast to this dtype (default {dtype})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def check_model_arguments(args: argparse.Namespace, default_preset: str) -> None:
    """Fill the preset default; ``ValueError`` for a missing CUDA or pipeline folder, before any work."""
    args.preset = args.preset or default_preset
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu)")
    if args.pretrained is not None and not (args.pretrained / "model_index.json").is_file():
        raise FileNotFoundError(f"--pretrained {args.pretrained}: no model_index.json (not a saved pipeline folder)")
    if args.threads:
        torch.set_num_threads(args.threads)


def keep_all_children(struct_vae) -> None:
    """An untrained StructVAE drops children at random; biasing its occupancy heads keeps them all,
    so that untrained smoke and timing runs have a structure to texture."""
    for head in struct_vae.decoder.occupancy_heads:
        torch.nn.init.constant_(head[1].bias, 3.0)


def load_pipeline(args: argparse.Namespace) -> EarthCrafterPipeline:
    """``--pretrained`` loaded in ``--dtype``, else the untrained ``--preset`` cast to it; on ``--device``."""
    dtype = DTYPES[args.dtype]
    if args.pretrained is not None:
        pipe = EarthCrafterPipeline.from_pretrained(args.pretrained, dtype=dtype)
    else:
        pipe = EarthCrafterPipeline.from_preset(args.preset)
        keep_all_children(pipe.struct_vae)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(args.device)


def tile_preset(name: str) -> dict:
    """The preset with its training data section completed (tile size, views, seeds)."""
    return load_preset(argparse.Namespace(preset=name))


def check_tiles_fit(pipe: EarthCrafterPipeline, preset: dict, name: str) -> None:
    data = preset["training"]["data"]
    if (pipe.resolution, pipe.voxel_size) != (int(data["resolution"]), float(data["voxel_size"])):
        raise ValueError(
            f"the pipeline makes {pipe.resolution}^3 tiles at {pipe.voxel_size:g} m, preset {name}'s tiles are "
            f"{data['resolution']}^3 at {data['voxel_size']:g} m: pass the preset the pipeline was trained on (--preset)"
        )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
