"""``diffusers-city generate gaussiancity``: render a city scene folder along a camera path with the
GaussianCity pipeline; writes the frames, a GIF or MP4 and the layout's Gaussians as a 3DGS PLY.

``--out`` is replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold
only this command's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.options import add_deprecated_alias, add_device, add_max_memory_gb, add_pipeline, scene_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scene",
        type=Path,
        required=True,
        help="CityScene folder (semantic + height maps), or the --out of diffusers-city scene",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (created; replaced as a whole, so new or holding only our outputs)"
    )
    parser.add_argument("--trajectory", choices=("orbit", "drone", "street"), default="orbit")
    parser.add_argument("--frames", type=int, default=24, help="number of frames (default 24)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    add_pipeline(parser, "gaussiancity")
    parser.add_argument("--preset", default=None, help="use an untrained preset (tiny/small/paper) instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the style codes")
    parser.add_argument(
        "--decode-chunk-size",
        type=int,
        default=1,
        help="frames decoded together, once (faster on a GPU; 1: every frame on its own, as the paper)",
    )
    add_deprecated_alias(parser, "--decode_chunk_size", "--decode-chunk-size", type=int)
    parser.add_argument("--video", choices=("gif", "mp4"), default="gif")
    parser.add_argument("--fps", type=float, default=12.0)
    add_device(parser)
    add_max_memory_gb(parser, "a run")


# What this command writes in --out: frames/, <trajectory>.<video>, city.ply.
OUTPUT_STEMS = ("frames", "city", "orbit", "drone", "street")


def run(args: argparse.Namespace) -> int:
    import torch

    from ...cli.errors import resolve_device
    from ...cli.outputs import check_output_folder, published, writing
    from ...data.scene import CityScene
    from ...export.splat import write_gaussian_ply
    from ...export.video import write_video
    from ...presets import bundled_path
    from .pipeline_gaussiancity import GaussianCityPipeline

    for name in ("frames", "width", "height", "decode_chunk_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    scene_dir = scene_folder(args.scene, "--scene")
    if args.pipeline is not None and args.preset is not None:
        raise ValueError("pass --pipeline or --preset, not both")
    check_output_folder(args.out, OUTPUT_STEMS)
    device = resolve_device(args.device)
    scene = CityScene.load(scene_dir)
    if args.preset is not None:
        pipe = GaussianCityPipeline.from_preset(args.preset)
    else:
        source = args.pipeline or bundled_path("gaussiancity", "default")
        if args.pipeline is None and not (Path(source) / "model_index.json").is_file():
            raise FileNotFoundError(f"no shipped GaussianCity pipeline at {source}; pass --pipeline or --preset")
        pipe = GaussianCityPipeline.from_pretrained(source)
    pipe = pipe.to(device)
    out = pipe(
        scene=scene,
        trajectory=args.trajectory,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pil",
        return_gaussians="layout",
        decode_chunk_size=args.decode_chunk_size,
        max_memory_gb=args.max_memory_gb,
    )
    g = out.gaussians.to("cpu")
    with writing(args.out) as tmp:
        (tmp / "frames").mkdir()
        for i, image in enumerate(out.images):
            image.save(tmp / "frames" / f"frame_{i:04d}.png")
        video = write_video(tmp / f"{args.trajectory}.{args.video}", out.images, fps=args.fps)
        ply = write_gaussian_ply(
            tmp / "city.ply", g.means.numpy(), g.colors.numpy(), g.scales.numpy(), g.opacities.numpy(), g.quats.numpy()
        )
        video, ply = published([video, ply], tmp, args.out)
    print(f"wrote {len(out.images)} frames to {args.out / 'frames'}, {video} and {ply} ({len(g)} Gaussians)")
    return 0
