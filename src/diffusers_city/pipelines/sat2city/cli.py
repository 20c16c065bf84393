"""``diffusers-city generate sat2city``: height map -> PLY + GLB + preview PNG with a Sat2City pipeline.

``--out`` is replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold
only this command's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.area import add_area_arguments, is_area_folder, process_device, run_area
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
    parser.add_argument(
        "--fill-nodata", action="store_true", help="fill no-data / NaN pixels of a DSM from the nearest valid one (else refused)"
    )
    add_device(parser)
    add_max_memory_gb(parser, "a height map (a large area: one tile)")
    add_area_arguments(parser)


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


# Peak bytes per map pixel while a raster is read and checked (float64 values, their float32 copy,
# masks, the nearest-pixel indices of a hole fill).
_READ_BYTES_PER_PIXEL = 64


def _load_input(path: Path, meters_per_pixel: float | None, fill_nodata: bool, max_memory_gb: float | None):
    """The map as `read_height_input` reads it: a metric ``CityScene`` (a DSM with its
    georeference, a point cloud, a scene folder) or 8-bit gray levels; a raster whose header
    promises more pixels than memory holds is refused before they are read."""
    from ...data.readers import read_height_input
    from ...utils.memory import check_memory
    from .pipeline_sat2city import height_map_shape

    if not path.exists():
        raise FileNotFoundError(f"--height-map {path}: no such file or folder")
    if path.is_dir():
        path = scene_folder(path, "--height-map")
    shape = height_map_shape(path)
    if shape is not None and len(shape) == 2:
        what = f"--height-map {path}: height map of {shape[0]}x{shape[1]} px"
        check_memory(shape[0] * shape[1] * _READ_BYTES_PER_PIXEL, max_memory_gb, what, hint="crop it")
    return read_height_input(path, meters_per_pixel, fill_nodata=fill_nodata)


def _larger_than_a_tile(pipe, height_map, meters_per_pixel: float | None) -> bool:
    """Whether the map covers more than the model's crop (then it is generated as an area);
    gray maps without ``--meters-per-pixel`` are stretched over one crop."""
    from ...data.scene import CityScene

    mpp = height_map.meters_per_pixel if isinstance(height_map, CityScene) else meters_per_pixel
    if mpp is None:
        return False
    vae = pipe.dense_vae.config
    return max(height_map.height.shape if isinstance(height_map, CityScene) else height_map.shape) * mpp > (
        vae.grid_size[0] * vae.voxel_size + 1e-6
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ...cli.errors import resolve_device
    from ...cli.outputs import check_output_folder, published, writing
    from ...presets import bundled_path
    from .demo import write_city
    from .pipeline_sat2city import Sat2CityPipeline

    if args.steps <= 0:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if not is_area_folder(args.out):  # an area run's folder is checked (and resumed) by the area path
        check_output_folder(args.out, OUTPUT_STEMS)
    device = resolve_device(args.device)
    height_map = _load_input(args.height_map, args.meters_per_pixel, args.fill_nodata, args.max_memory_gb)
    if args.preset is not None:
        pipe = Sat2CityPipeline.from_preset(args.preset, seed=args.seed)
    else:
        model = args.pipeline or bundled_path("sat2city", "default")
        if args.pipeline is None and not (model / "model_index.json").is_file():
            raise FileNotFoundError(f"no shipped Sat2City weights at {model}; pass --pipeline or --preset")
        pipe = Sat2CityPipeline.from_pretrained(model, dtype=torch.float32)
    if _larger_than_a_tile(pipe, height_map, args.meters_per_pixel):
        pipe = pipe.to(process_device(device))
        return run_area(
            args,
            lambda: pipe.generate_area(
                height_map,
                args.out,
                num_inference_steps=args.steps,
                seed=args.seed,
                meters_per_pixel=args.meters_per_pixel,
                height_range=args.height_range,
                guidance_scale=args.guidance_scale,
                temperature=args.temperature,
                overlap=args.overlap,
                max_memory_gb=args.max_memory_gb,
            ),
        )
    if is_area_folder(args.out):
        check_output_folder(args.out, OUTPUT_STEMS)  # refuses it: this map is one tile
    pipe = pipe.to(device)
    output = pipe(
        args.height_map if args.height_map.is_file() else height_map,  # a file: its memory checked before its pixels
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
