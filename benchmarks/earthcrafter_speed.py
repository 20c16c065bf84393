"""EarthCrafter speed: seconds per tile per stage at 25 flow steps with guidance, peak memory.

Stages: condition encoder, occupancy flow, structure flow, structure decode (StructVAE), texture
flow, texture decode (TexVAE) and Gaussians (``to_gaussians``). Untrained weights by default
(``--pretrained`` for a trained pipeline): speed does not depend on the weights, but structure
sizes do, so an untrained run is teacher-forced on a held-out tile of the preset (validation
split, index 0): the occupied coarse cells and the StructVAE's kept voxels are that tile's, as a
trained model would give. Weights are cast to ``--dtype`` (the pipeline runs in its components'
dtype, as ``from_pretrained(torch_dtype=...)`` loads it). Warm-up calls, then timed calls, each
stage between ``torch.cuda.synchronize()``; peak memory is ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=src python benchmarks/earthcrafter_speed.py --preset paper --device cuda --dtype bf16 --out bench/ecs
    PYTHONPATH=src python benchmarks/earthcrafter_speed.py --preset small --device cpu --dtype fp32 --out bench/ecs_cpu
    PYTHONPATH=src python benchmarks/earthcrafter_speed.py --device cpu --quick --out /tmp/ecs
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from earthcrafter_bench import (  # noqa: E402
    add_model_arguments,
    check_model_arguments,
    check_tiles_fit,
    load_pipeline,
    synchronize,
    tile_preset,
)
from earthcrafter_common import make_dataset  # noqa: E402

from diffusers_city.export import write_text_atomic  # noqa: E402

STAGES = (
    "condition_encoder",
    "occupancy",
    "structure",
    "structure_decode",
    "texture",
    "texture_decode",
    "gaussians",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p, "paper", "bf16")
    p.add_argument("--steps", type=int, default=25, help="flow steps per stage")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"), help="default: the pipeline's")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--repeats", type=int, default=3, help="timed calls")
    p.add_argument("--no-teacher-forcing", action="store_true", help="untrained structure as it comes (unrealistic sizes)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny preset, fp32, 2 steps, 1 timed call")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.dtype, args.steps, args.warmup, args.repeats = args.preset or "tiny", "fp32", 2, 0, 1
    check_model_arguments(args, "paper")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--steps and --repeats must be >= 1, --warmup >= 0")
    return args


def held_out_tile(preset: dict) -> dict:
    return make_dataset(preset, "validation")[0]


def teacher_force(pipe, tile: dict) -> None:
    """Occupied cells and decoded voxels of ``tile`` in place of the untrained models' guesses."""
    target = tile["voxels"].to(pipe.device)
    cell = pipe.occupancy_transformer.config.cell_size
    occupied = torch.zeros(pipe.occupancy_shape(), device=pipe.device)
    cells = (target.coords[:, 1:].long() // cell).unique(dim=0)
    occupied[0, 0, cells[:, 0], cells[:, 1], cells[:, 2]] = 1.0
    coarse = pipe._coarse_cells
    pipe._coarse_cells = lambda occupancy, origin: coarse(occupied, origin)
    pipe.struct_vae.decode = functools.partial(
        pipe.struct_vae.decode, target=target.replace(target.feats.to(pipe.struct_vae.dtype))
    )


def instrument(pipe, times: dict, device: str) -> None:
    """Accumulate each stage's synchronised wall time in ``times``."""

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            synchronize(device)
            t = time.perf_counter()
            out = fn(*a, **k)
            synchronize(device)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    denoise = pipe._denoise
    pipe._denoise = lambda stage, *a, **k: timed(stage, denoise)(stage, *a, **k)
    pipe.encode_condition = timed("condition_encoder", pipe.encode_condition)
    pipe.struct_vae.decode = timed("structure_decode", pipe.struct_vae.decode)
    pipe.tex_vae.decode = timed("texture_decode", pipe.tex_vae.decode)
    pipe.tex_vae.to_gaussians = timed("gaussians", pipe.tex_vae.to_gaussians)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = tile_preset(args.preset)
    pipe = load_pipeline(args)
    check_tiles_fit(pipe, preset, args.preset)
    tile = held_out_tile(preset)
    forced = args.pretrained is None and not args.no_teacher_forcing
    if forced:
        teacher_force(pipe, tile)
    times: dict[str, float] = {}
    instrument(pipe, times, args.device)
    cuda = args.device == "cuda"
    interval = {} if args.guidance_interval is None else {"guidance_interval": tuple(args.guidance_interval)}
    params = sum(p.numel() for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters())
    runs = []
    for call in range(args.warmup + args.repeats):
        times.clear()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        synchronize(args.device)
        t = time.perf_counter()
        out = pipe(
            tile["semantic"].numpy(),
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(call),
            output_type="gaussians",
            **interval,
        )
        synchronize(args.device)
        total = time.perf_counter() - t
        if call >= args.warmup:
            runs.append(
                {
                    "call": call,
                    "total_s": total,
                    **{k: times.get(k, 0.0) for k in STAGES},
                    "voxels": out.voxels.num_voxels,
                    "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                }
            )
    summary = {k: float(np.median([r[k] for r in runs])) for k in ("total_s", *STAGES)}
    summary.update(voxels=runs[-1]["voxels"], peak_memory_gb=max((r["peak_memory_gb"] or 0.0) for r in runs) if cuda else None)
    result = {
        "preset": args.preset,
        "pretrained": None if args.pretrained is None else str(args.pretrained),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "guidance_interval": list(interval.get("guidance_interval", (0.0, 1.0))),
        "teacher_forced": forced,
        "parameters": params,
        "warmup": args.warmup,
        "runs": runs,
        "summary": summary,
    }
    write_text_atomic(args.out / "earthcrafter_speed.json", json.dumps(result, indent=2))
    weights = (
        str(args.pretrained) if args.pretrained else f"untrained {args.preset} weights" + (", teacher-forced" if forced else "")
    )
    mem = "-" if summary["peak_memory_gb"] is None else f"{summary['peak_memory_gb']:.2f}"
    lines = [
        f"EarthCrafter speed, {weights}, {result['device']}, {args.dtype}, {args.steps} steps per stage, guidance "
        f"{args.guidance_scale:g} interval {tuple(result['guidance_interval'])}, {params / 1e6:.1f}M parameters; "
        f"median of {args.repeats} calls after {args.warmup} warm-up",
        "",
        "| total s | cond enc | occupancy | structure | struct dec | texture | tex dec | gaussians | peak GB | voxels |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| " + " | ".join(f"{summary[k]:.3f}" for k in ("total_s", *STAGES)) + f" | {mem} | {summary['voxels']} |",
    ]
    table = "\n".join(lines)
    write_text_atomic(args.out / "earthcrafter_speed.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
