"""``diffusers-city generate citylayout``: a BEV layout of ``--width-m`` x ``--height-m`` metres from
nothing, or a partial scene folder (``--scene``) filled where ``--mask`` is set; writes the layout
as a scene folder (``scene/``, the input of ``generate gaussiancity`` / ``earthcrafter``) and a
picture of its classes and heights (``layout.png``).

``--out`` is replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold
only this command's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.options import add_device, add_max_memory_gb, add_pipeline, scene_folder

# What this command writes in --out: scene/, layout.png.
OUTPUT_STEMS = ("scene", "layout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width-m", type=float, default=None, help="east-west size in metres (without --scene)")
    parser.add_argument("--height-m", type=float, default=None, help="north-south size in metres (without --scene)")
    parser.add_argument("--scene", type=Path, default=None, help="partial CityScene folder to fill where --mask is set")
    parser.add_argument(
        "--mask", type=Path, default=None, help="with --scene: .npy (bool / 0-1) or .png (white) marking the pixels to generate"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (created; replaced as a whole, so new or holding only our outputs)"
    )
    parser.add_argument("--steps", type=int, default=16, help="unmasking steps per token window (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    add_pipeline(parser, "citylayout")
    parser.add_argument("--preset", default=None, help="use an untrained preset (tiny/small/paper) instead")
    add_device(parser)
    add_max_memory_gb(parser, "a run")


def read_mask(path: Path):
    """A generate-mask from ``.npy`` (bool or 0 / 1) or an image (white, > 127, = generate)."""
    import numpy as np
    from PIL import Image

    from ...data.scene import read_npy

    if path.suffix.lower() == ".npy":
        return read_npy(path)
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def run(args: argparse.Namespace) -> int:
    import torch

    from ...cli.errors import resolve_device
    from ...cli.outputs import check_output_folder, published, writing
    from ...data.scene import CityScene
    from ...presets import bundled_path
    from .demo import write_layout_preview
    from .pipeline_citylayout import CityLayoutPipeline

    if (args.scene is None) == (args.width_m is None or args.height_m is None):
        raise ValueError("pass --width-m and --height-m, or --scene with --mask")
    if args.mask is not None and args.scene is None:
        raise ValueError("--mask needs --scene")
    if args.pipeline is not None and args.preset is not None:
        raise ValueError("pass --pipeline or --preset, not both")
    check_output_folder(args.out, OUTPUT_STEMS)
    area = {"width_m": args.width_m, "height_m": args.height_m}
    if args.scene is not None:
        if args.mask is None:
            raise ValueError("--scene needs --mask (the pixels to generate)")
        area = {"scene": CityScene.load(scene_folder(args.scene, "--scene")), "mask": read_mask(args.mask)}
    device = resolve_device(args.device)
    if args.preset is not None:
        pipe = CityLayoutPipeline.from_preset(args.preset)
    else:
        source = args.pipeline or bundled_path("citylayout", "default")
        if args.pipeline is None and not (Path(source) / "model_index.json").is_file():
            raise FileNotFoundError(f"no shipped CityLayout pipeline at {source}; pass --pipeline or --preset")
        pipe = CityLayoutPipeline.from_pretrained(source, dtype=torch.float32)
    pipe = pipe.to(device)
    scene = pipe(
        **area,
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        max_memory_gb=args.max_memory_gb,
    ).scene
    with writing(args.out) as tmp:
        folder = scene.save(tmp / "scene")
        preview = write_layout_preview(scene, tmp / "layout.png")
        folder, preview = published([folder, preview], tmp, args.out)
    w, h = scene.size_m
    print(f"wrote a {w:g} x {h:g} m layout to {folder} and {preview}")
    return 0
