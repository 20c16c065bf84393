"""``diffusers-city generate sat2city``: height map -> PLY + GLB + preview PNG with a Sat2City pipeline.

``--out`` is replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold
only this command's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.options import add_device, add_max_memory_gb, add_pipeline, scene_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--height-map",
        type=Path,
        required=True,
        help="8-bit grayscale height map (PNG/TIFF/.npy, 0..255 = height_range metres), a metric DSM "
        "(GeoTIFF, 16-bit or float raster; needs --meters-per-pixel without a georeference) or a CityScene folder",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder for city.ply, city.glb, city_preview.png (replaced as a whole: new or holding only those)",
    )
    add_pipeline(parser, "sat2city", old="--model")
    parser.add_argument("--preset", default=None, help="use an untrained preset (tiny/small/paper) instead of weights")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per stage (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meters-per-pixel", type=float, default=None)
    parser.add_argument(
        "--height-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="metres of gray 0 and 255 (default: the model's 0..max_height_m)",
    )
    add_sampling_arguments(parser)
    add_device(parser)
    add_max_memory_gb(parser, "a height map")


# What this command writes in --out: city.ply, city.glb, city_preview.png and their side files.
OUTPUT_STEMS = ("city", "city_preview")


class _PerStage(argparse.Action):
    """Stores one value as a float and three as a ``(dense, sparse, appearance)`` tuple: the two
    forms the pipeline's per-stage arguments (``guidance_scale``, ``temperature``) take."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 3):
            parser.error(f"{option_string} takes one value or three (dense sparse appearance)")
        setattr(namespace, self.dest, values[0] if len(values) == 1 else tuple(values))


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--guidance-scale`` and ``--temperature`` (one value or one per stage), shared by this
    command and the quality benchmark."""
    parser.add_argument(
        "--guidance-scale",
        type=float,
        nargs="+",
        default=None,
        metavar="G",
        action=_PerStage,
        help="classifier-free guidance (1 = off): one scale for every stage or three (dense sparse appearance); "
        "default: the pipeline's stored best",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=None,
        metavar="T",
        action=_PerStage,
        help="scale of the initial noise (1 = the trained prior, 0 = deterministic): one for every stage or three; "
        "default: the pipeline's stored best",
    )


def _load_input(path: Path):
    from ...data.scene import CityScene

    if path.is_dir():
        return CityScene.load(scene_folder(path, "--height-map"))
    if not path.is_file():
        raise FileNotFoundError(f"--height-map {path}: no such file or folder")
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from ...cli.errors import resolve_device
    from ...cli.outputs import check_output_folder, published, writing
    from ...presets import bundled_path
    from .demo import write_city
    from .pipeline_sat2city import Sat2CityPipeline

    if args.steps <= 0:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    check_output_folder(args.out, OUTPUT_STEMS)
    device = resolve_device(args.device)
    height_map = _load_input(args.height_map)
    if args.preset is not None:
        pipe = Sat2CityPipeline.from_preset(args.preset, seed=args.seed)
    else:
        model = args.pipeline or bundled_path("sat2city", "default")
        if args.pipeline is None and not (model / "model_index.json").is_file():
            raise FileNotFoundError(f"no shipped Sat2City weights at {model}; pass --pipeline or --preset")
        pipe = Sat2CityPipeline.from_pretrained(model, dtype=torch.float32)
    pipe = pipe.to(device)
    output = pipe(
        height_map,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        output_type="mesh",
        meters_per_pixel=args.meters_per_pixel,
        height_range=args.height_range,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        max_memory_gb=args.max_memory_gb,
    )
    with writing(args.out) as tmp:
        paths = published(write_city(output, tmp), tmp, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0
