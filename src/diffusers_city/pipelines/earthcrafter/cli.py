"""``diffusers-city generate earthcrafter``: semantic map / aerial image / nothing -> a 3D tile, written as
a 3DGS PLY of its 2D Gaussians, a GLB mesh, a coloured point cloud PLY, an orbit GIF / MP4 and, for a
semantic map, ``input_output.png`` (the map beside a large render).

``tile.ply`` is the standard 3DGS layout (``export/splat.py``) with each 2D Gaussian as a flat 3D one
(its third scale near zero), so any viewer of that layout draws it as flat splats; viewers that
need the degree-3 ``f_rest`` fields get them (``sh_degree=3``, see ``export/splat.py``). ``--out`` is
replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold only these outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.area import add_area_arguments, is_area_folder, process_device, run_area
from ...cli.options import add_device, add_max_memory_gb, add_pipeline, scene_folder

OUTPUT_STEMS = ("tile", "tile_points", "orbit", "input_output")
"""What this command writes in --out (with their side files)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument(
        "--semantic-map",
        type=Path,
        default=None,
        help="[L, L] class-id map (PNG of ids or .npy), or a CityScene folder (georeferenced outputs)",
    )
    condition.add_argument("--image", type=Path, default=None, help="aerial orthophoto of the tile (RGB PNG/JPEG, S x S)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (tile.ply, tile.glb, tile_points.ply, orbit.gif)")
    add_pipeline(
        parser,
        "earthcrafter",
        old="--pretrained",
        default_text="none, required: no trained default ships yet; tiny/small/paper: an untrained preset",
    )
    parser.add_argument("--steps", type=int, default=25, help="flow steps per stage (default 25)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (1 = off, default 3)")
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="guidance only at noise levels sigma in [LO, HI] (0..1, 1 = pure noise; default: the pipeline's, every step)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=24, help="orbit frames (default 24)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--video", choices=("gif", "mp4"), default="gif")
    parser.add_argument("--fps", type=float, default=12.0)
    add_device(parser)
    add_max_memory_gb(parser, "a frame request (a large area: one tile)")
    add_area_arguments(parser)


def _load_pipeline(source: str):
    import torch

    from ...presets import available_sizes
    from .pipeline_earthcrafter import EarthCrafterPipeline

    if source in available_sizes("earthcrafter") and not Path(source).exists():
        return EarthCrafterPipeline.from_preset(source)
    return EarthCrafterPipeline.from_pretrained(source, dtype=torch.float32)


def _area_map(semantic_map, resolution: int):
    """The semantic map (array or ``CityScene``) when it is larger than one L x L tile, else ``None``."""
    from ...data.scene import CityScene
    from .pipeline_earthcrafter import _array

    if semantic_map is None:
        return None
    area = semantic_map if isinstance(semantic_map, CityScene) else _array(semantic_map, "--semantic-map")
    shape = area.shape if isinstance(area, CityScene) else area.shape[-2:]
    return area if max(shape) > resolution else None


def run(args: argparse.Namespace) -> int:
    import torch

    from ...cli.errors import resolve_device
    from ...cli.outputs import check_output_folder, published, writing
    from ...data.scene import CityScene
    from .demo import write_tile

    if args.pipeline is None:
        raise ValueError("--pipeline is required: a pipeline folder, Hub repo id or preset size (no trained default ships yet)")
    if not is_area_folder(args.out):  # an area run's folder is checked (and resumed) by the area path
        check_output_folder(args.out, OUTPUT_STEMS)
    device = resolve_device(args.device)
    if args.image is not None and not args.image.is_file():
        raise FileNotFoundError(f"--image {args.image}: no such file")
    semantic_map = args.semantic_map
    if semantic_map is not None and semantic_map.is_dir():
        semantic_map = CityScene.load(scene_folder(semantic_map, "--semantic-map"))
    elif semantic_map is not None and not semantic_map.is_file():
        raise FileNotFoundError(f"--semantic-map {semantic_map}: no such file (or CityScene folder)")
    pipe = _load_pipeline(args.pipeline)
    interval = {} if args.guidance_interval is None else {"guidance_interval": tuple(args.guidance_interval)}
    area = _area_map(semantic_map, pipe.resolution)
    if area is not None:
        pipe = pipe.to(process_device(device))
        return run_area(
            args,
            lambda: pipe.generate_area(
                area,
                args.out,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                **interval,
                seed=args.seed,
                overlap=args.overlap,
                max_memory_gb=args.max_memory_gb,
            ),
        )
    if is_area_folder(args.out):
        check_output_folder(args.out, OUTPUT_STEMS)  # refuses it: this map is one tile
    pipe = pipe.to(device)
    output = pipe(
        semantic_map,
        args.image,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        **interval,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        output_type="mesh",
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        max_memory_gb=args.max_memory_gb,
    )
    with writing(args.out) as tmp:
        written = write_tile(
            pipe,
            output,
            tmp,
            frames=args.frames,
            size=(args.width, args.height),
            video=args.video,
            fps=args.fps,
            semantic_map=semantic_map,
        )
        paths = published(written, tmp, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0
