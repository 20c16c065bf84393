"""Cost of a large Sat2City area on 1..N GPUs: wall time, tiles/s, seconds per km², peak GPU
memory of every process and a hash of the stitched output (equal for every N).

The same command on 1 GPU or N (tiles of one wave are shared out by
``PartialState.split_between_processes``):

    accelerate launch --num_processes 1 benchmarks/tiled_generation.py --size-m 1000
    accelerate launch --num_processes 4 benchmarks/tiled_generation.py --size-m 1000
    python benchmarks/tiled_generation.py --size-m 500 --model pipelines/sat2city/default   # one process

``--preset paper`` (default) is untrained, as in ``sat2city_speed.py`` (the cost of a step does
not depend on the weights; the number of voxels does a little); ``--model`` takes trained
weights. The area is a procedural city at the model's crop / 256 metres per pixel.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

import diffusers_city  # noqa: F401  (registers the pipelines)
from diffusers_city import Sat2CityPipeline
from diffusers_city.data import procedural_city
from diffusers_city.data.readers import read_ply


def stitched_hash(folder: Path) -> tuple[str, int]:
    """SHA-256 of every tile's points (mm) and colours (8 bit) in grid order, and the point count."""
    index = json.loads((folder / "index.json").read_text())
    digest, count = hashlib.sha256(), 0
    for tile in index["tiles"]:
        if "ply" in tile["files"]:
            cloud = read_ply(folder / "tiles" / tile["files"]["ply"])
            digest.update(np.round(cloud.points * 1000).astype(np.int64).tobytes())
            digest.update(np.round(cloud.colors * 255).astype(np.uint8).tobytes())
            count += len(cloud.points)
    return digest.hexdigest(), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model", default=None, help="trained pipeline folder (instead of the untrained preset)")
    parser.add_argument("--size-m", type=float, default=1000.0, help="side of the square area in metres")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--city-seed", type=int, default=4242)
    parser.add_argument("--no-bf16", action="store_true", help="fp32 instead of bf16 autocast")
    parser.add_argument("--out", type=Path, default=None, help="area folder (default /tmp/tiled_bench_<size>_<N>; replaced)")
    args = parser.parse_args(argv)

    state = PartialState()
    cuda = state.device.type == "cuda"
    pipe = Sat2CityPipeline.from_pretrained(args.model) if args.model else Sat2CityPipeline.from_preset(args.preset)
    pipe.to(state.device)
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.dense_vae.config
    extent = vae.grid_size[0] * vae.voxel_size
    scene = procedural_city(args.city_seed, size_m=args.size_m, meters_per_pixel=extent / 256)
    out = args.out or Path(f"/tmp/tiled_bench_{args.size_m:g}_{state.num_processes}")
    if state.is_main_process and out.exists():
        if not (out / "run.json").is_file():
            raise ValueError(f"{out} is not an area folder of an earlier run; pass another --out")
        shutil.rmtree(out)
    state.wait_for_everyone()

    autocast = contextlib.nullcontext() if args.no_bf16 else torch.autocast(state.device.type, dtype=torch.bfloat16)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        area = pipe.generate_area(scene, out, num_inference_steps=args.steps, seed=args.seed)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
    peaks = gather_object([(state.process_index, peak)])
    if state.is_main_process:
        digest, points = stitched_hash(out)
        km2 = (scene.shape[0] * scene.meters_per_pixel) * (scene.shape[1] * scene.meters_per_pixel) / 1e6
        tiles = len(area.tiles)
        print(f"area {km2:.3f} km2 ({scene.shape[0]}x{scene.shape[1]} px), {tiles} tiles, {state.num_processes} process(es)")
        print(f"wall {wall:.1f} s, {tiles / wall:.3f} tiles/s, {wall / km2:.1f} s/km2, {points} points")
        for index, gb in sorted(peaks):
            print(f"process {index}: peak GPU memory {gb:.2f} GB")
        print(f"stitched sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
