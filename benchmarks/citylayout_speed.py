"""CityLayout speed and memory: seconds per km² of generated layout and peak memory per layout size.

The sliding-window sampler works on one window of tokens at a time, so its time should grow
with the area (the number of windows) and its working memory should not: peak memory is
reported for each size to show it flat. On CUDA it is ``torch.cuda.max_memory_allocated``
(reset before each size); on the CPU it is the process's peak resident set size
(``resource.getrusage``), a high-water mark that cannot be reset, so sizes run in increasing
order and each row's figure is the peak up to that size: a flat column means no size needed more
than the smallest did. The generated maps and tokens themselves grow with the area (a few
bytes per pixel). One warm-up call at the smallest size comes first; times are medians over
``--repeats`` calls, synchronised on CUDA.

    python benchmarks/citylayout_speed.py --out out/citylayout_speed                  # 0.25, 1, 4 km²
    python benchmarks/citylayout_speed.py --sizes_km2 1 16 --steps 8 --out out/citylayout_speed
    python benchmarks/citylayout_speed.py --device cpu --quick --out /tmp/citylayout_speed
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from citylayout_bench import add_pipeline_arguments, load_pipeline  # noqa: E402

from diffusers_city.export import write_text_atomic  # noqa: E402


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def timed_call(pipe, side_m: float, steps: int | None, seed: int, device: torch.device):
    """One pipeline call on a ``side_m`` square: (seconds, output)."""
    kwargs = {} if steps is None else {"num_inference_steps": steps}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = pipe(width_m=side_m, height_m=side_m, generator=torch.Generator().manual_seed(seed), **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pipeline_arguments(parser, "tiny preset, 64 m and 128 m squares, 2 steps")
    parser.add_argument("--sizes_km2", type=float, nargs="+", default=None, help="layout areas (default 0.25 1 4)")
    parser.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = args.preset or ("tiny" if args.pipeline is None else None)
        args.sizes_km2 = args.sizes_km2 or [0.064**2, 0.128**2]
        args.steps, args.repeats = args.steps or 2, 1
    sizes = sorted(args.sizes_km2 or [0.25, 1.0, 4.0])
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"--sizes_km2 must be finite and > 0, got {sizes}")
    if args.repeats < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError(f"--repeats and --steps must be >= 1, got {args.repeats} and {args.steps}")
    pipe = load_pipeline(args)
    device = pipe.device
    mpp = float(pipe.config.meters_per_pixel)

    results = []
    with torch.no_grad():
        timed_call(pipe, math.sqrt(sizes[0]) * 1000.0, args.steps, args.seed, device)  # warm-up
        for size in sizes:
            side_m = math.sqrt(size) * 1000.0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            calls = [timed_call(pipe, side_m, args.steps, args.seed + 1 + i, device) for i in range(args.repeats)]
            seconds = float(np.median([s for s, _ in calls]))
            out = calls[-1][1]
            area_km2 = out.scene.semantic.size * mpp**2 / 1e6  # the generated map, whole tokens
            grid = tuple(int(v) for v in out.tokens.shape)
            results.append(
                {
                    "size_km2": size,
                    "generated_km2": area_km2,
                    "map_px": list(out.scene.semantic.shape),
                    "token_grid": list(grid),
                    "windows": len(pipe.window_starts(grid)),
                    "seconds": seconds,
                    "seconds_per_km2": seconds / area_km2,
                    "peak_memory_gb": peak_memory_gb(device),
                }
            )
    cuda = device.type == "cuda"
    result = {
        "pipeline": args.preset or str(args.pipeline or "pipelines/citylayout/default"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "peak_memory": "torch.cuda.max_memory_allocated per size" if cuda else "process peak RSS so far (getrusage)",
        "steps": args.steps,
        "repeats": args.repeats,
        "window_tokens": int(pipe.config.window_tokens),
        "window_stride": int(pipe.config.window_stride),
        "meters_per_pixel": mpp,
        "results": results,
        "peak_memory_ratio_largest_vs_smallest": results[-1]["peak_memory_gb"] / results[0]["peak_memory_gb"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "results.json", json.dumps(result, indent=2))
    memory = "peak GB (CUDA allocated)" if cuda else "peak GB (process RSS so far)"
    lines = [
        f"CityLayout speed ({result['pipeline']}, {result['device']}), {args.steps or 'default'} steps, windows of "
        f"{result['window_tokens']} tokens at stride {result['window_stride']}; median of {args.repeats} calls after a warm-up",
        "",
        f"| km² | map px | token grid | windows | s | s per km² | {memory} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['generated_km2']:.3g} | {r['map_px'][0]}x{r['map_px'][1]} | {r['token_grid'][0]}x{r['token_grid'][1]} "
            f"| {r['windows']} | {r['seconds']:.3f} | {r['seconds_per_km2']:.3f} | {r['peak_memory_gb']:.3f} |"
        )
    lines += ["", f"Peak memory, largest vs smallest size: {result['peak_memory_ratio_largest_vs_smallest']:.2f}x"]
    table = "\n".join(lines)
    write_text_atomic(args.out / "results.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
