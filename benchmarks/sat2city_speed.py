"""Sat2City speed: seconds per scene per stage (DDIM 25/50/100), mesh extraction, peak memory.

Random weights (speed does not depend on them), but realistic structure sizes: the geometry
decoders prune along the voxel grid of a held-out procedural city of the preset's crop (teacher
forcing), instead of at random. Goal (paper preset, one H100): <= 3 s per scene at 50 steps per
stage, mesh extraction <= 1 s.

    PYTHONPATH=src python benchmarks/sat2city_speed.py --preset paper --device cuda --out bench/speed [--bf16]
    PYTHONPATH=src python benchmarks/sat2city_speed.py --device cpu --quick --out /tmp/speed
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))

from sat2city_common import make_dataset  # noqa: E402

from diffusers_city.export import write_text_atomic  # noqa: E402
from diffusers_city.export.mesh import mesh_from_voxels  # noqa: E402
from diffusers_city.pipelines.sat2city import Sat2CityPipeline  # noqa: E402
from diffusers_city.presets import load_preset  # noqa: E402
from diffusers_city.sparse import SparseTensor  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--scenes", type=int, default=3, help="timed scenes per step count (after one warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed scenes before the timed ones")
    p.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    p.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (components on the GPU only while used)")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="enable_cuda_graphs (each stage's U-Net step replayed as a CUDA graph)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny preset, 2 steps, 1 scene")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.steps, args.scenes, args.warmup = "tiny", [2], 1, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    return args


def ground_truth(preset: dict, device: str) -> tuple[np.ndarray, SparseTensor, dict]:
    """Held-out crop: its noisy gray height map, voxel grid (crop frame) and metadata."""
    sample = make_dataset(preset, "validation")[0]
    grid = preset["components"]["dense_vae"]["grid_size"]
    c = sample["coords"]
    inside = ((c >= 0) & (c < torch.tensor(grid))).all(1)
    v = float(sample["voxel_size"])
    coords = torch.cat([torch.zeros(int(inside.sum()), 1, dtype=torch.int64), c[inside]], 1).int()
    voxels = SparseTensor(sample["normals"][inside], coords, voxel_size=v, origin=(v / 2,) * 3).to(device)
    gray = np.round(sample["height_noisy"][0].numpy() * 255).astype(np.uint8)
    meta = {
        "meters_per_pixel": float(preset["training"]["data"]["meters_per_pixel"]),
        "height_range": (0.0, float(sample["z_max"] - sample["z_min"])),
    }
    return gray, voxels, meta


def instrument(pipe: Sat2CityPipeline, target: SparseTensor, times: dict, sync) -> None:
    """Teacher-force the decoders on ``target`` and time every stage and decoder."""

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    denoise = pipe._denoise
    pipe._denoise = lambda stage, *a, **k: timed(f"{stage}_diffusion", denoise)(stage, *a, **k)
    pipe.condition_encoder.forward = timed("condition_encoder", pipe.condition_encoder.forward)
    pipe.dense_vae.decode = timed("dense_decode", functools.partial(pipe.dense_vae.decode, target=target))
    pipe.sparse_vae.decode = timed("sparse_decode", functools.partial(pipe.sparse_vae.decode, target=target))
    pipe.sparse_vae.decode_appearance = timed("appearance_decode", pipe.sparse_vae.decode_appearance)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("sat2city", args.preset)
    pipe = Sat2CityPipeline.from_preset(args.preset)
    if args.cpu_offload:
        if not args.device.startswith("cuda"):
            raise ValueError("--cpu-offload needs --device cuda")
        pipe.enable_model_cpu_offload(device=args.device)
    else:
        pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cuda_graphs(args.cuda_graphs)
    gray, target, meta = ground_truth(preset, args.device)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    params = sum(p.numel() for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters())
    rows = []
    times: dict[str, float] = {}
    instrument(pipe, target, times, sync)
    for steps in args.steps:
        for run in range(args.warmup + args.scenes):
            times.clear()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            with autocast:
                out = pipe(gray, num_inference_steps=steps, generator=torch.Generator().manual_seed(run), **meta)
            sync()
            total = time.perf_counter() - t
            coords = ((out.points - out.origin) / out.voxel_size - 0.5).round().astype(np.int64)
            t = time.perf_counter()
            mesh = mesh_from_voxels(coords, out.voxel_size, out.origin + out.voxel_size / 2, colors=out.colors.clip(0, 1))
            times["mesh_extraction"] = time.perf_counter() - t
            if run < args.warmup:
                continue
            rows.append(
                {
                    "steps": steps,
                    "scene": run,
                    "total_s": total,
                    **{k: round(v, 4) for k, v in times.items()},
                    "voxels": int(len(out.points)),
                    "faces": int(len(mesh.faces)),
                    "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                }
            )
    summary = []
    for steps in args.steps:
        sel = [r for r in rows if r["steps"] == steps]
        keys = [
            "total_s",
            "dense_diffusion",
            "sparse_diffusion",
            "appearance_diffusion",
            "condition_encoder",
            "dense_decode",
            "sparse_decode",
            "appearance_decode",
            "mesh_extraction",
        ]
        summary.append(
            {
                "steps": steps,
                **{k: float(np.mean([r.get(k, 0.0) for r in sel])) for k in keys},
                "peak_memory_gb": sel[0]["peak_memory_gb"],
                "voxels": sel[0]["voxels"],
            }
        )
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": args.bf16,
        "cpu_offload": args.cpu_offload,
        "cuda_graphs": args.cuda_graphs,
        "threads": torch.get_num_threads(),
        "parameters": params,
        "runs": rows,
        "summary": summary,
    }
    write_text_atomic(args.out / "sat2city_speed.json", json.dumps(result, indent=2))
    lines = [
        f"Sat2City speed, preset {args.preset}, {result['device']}, bf16={args.bf16}, cpu_offload={args.cpu_offload}, cuda_graphs={args.cuda_graphs}, "  # noqa: E501
        f"{params / 1e6:.1f}M params",
        "",
        "| DDIM steps | total s | dense | sparse | appearance | cond enc | dense dec | sparse dec | app dec | mesh s | peak GB | voxels |",  # noqa: E501
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        mem = "-" if s["peak_memory_gb"] is None else f"{s['peak_memory_gb']:.2f}"
        lines.append(
            f"| {s['steps']} | {s['total_s']:.2f} | {s['dense_diffusion']:.2f} | {s['sparse_diffusion']:.2f} | "
            f"{s['appearance_diffusion']:.2f} | {s['condition_encoder']:.2f} | {s['dense_decode']:.2f} | "
            f"{s['sparse_decode']:.2f} | {s['appearance_decode']:.2f} | {s['mesh_extraction']:.2f} | {mem} | {s['voxels']} |"
        )
    table = "\n".join(lines)
    write_text_atomic(args.out / "sat2city_speed.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
