"""GaussianCity speed and memory: ms per 960x540 frame (BEV visibility + decoding + rasterization)
and peak GPU memory on layouts of 1 km^2 and 16 km^2 (must stay flat: ratio <= 1.1).

Camera as in the paper (fx = fy = 1528.15, principal point (480, 270)), on a drone orbit 400 m
from the layout centre at 300 m altitude; the same orbit over both layouts. Layouts are synthetic
Manhattan grids at 1 m/px (blocks of towers, roads, parks, water). Timings are averaged over
``--frames`` frames after ``--warmup``, with CUDA synchronisation, IO excluded.

    python benchmarks/gaussiancity_speed.py --out out/gc_speed            # paper preset, one H100
    python benchmarks/gaussiancity_speed.py --out out/gc_speed --bf16     # bf16 autocast decoding
    python benchmarks/gaussiancity_speed.py --out out/gc_speed --bf16 --cuda-graphs  # + graph replay
    python benchmarks/gaussiancity_speed.py --out out/gc_speed --bf16 --decode_chunk_size 8  # 8 frames per decode
    python benchmarks/gaussiancity_speed.py --device cpu --quick --out /tmp/gc_speed
    python benchmarks/gaussiancity_speed.py --out out/gc_speed --profile 5  # + torch.profiler tables

``--profile N`` profiles N more frames of the 1 km2 layout after the timed ones and writes
``profile.md``: host time and CUDA runtime calls (kernel launches, memcpys: where the host
syncs) per labelled step of the frame (``bev.*``, ``decode.*``), then the ops by self device
time and by host time, to tell kernel time from launch and sync overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_city.data.classes import GROUND, ROAD, ROOF, VEGETATION, WATER
from diffusers_city.export import write_text_atomic
from diffusers_city.models.gaussiancity import BEVPointDecoder, bev
from diffusers_city.models.gaussiancity.bev import (
    BEVPoints,
    visible_bev_points_per_camera,
)
from diffusers_city.models.gaussiancity.point_hierarchy import PointHierarchy
from diffusers_city.pipelines.gaussiancity import GaussianCityPipeline
from diffusers_city.render import Cameras, render_gaussians
from diffusers_city.utils.cuda_graph import CapturedCall


def manhattan_layout(size_px: int, seed: int = 0, block: int = 80, road: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Semantic and height maps (1 m/px) of a grid city: blocks of 2x2 towers, parks, a river."""
    rng = np.random.default_rng(seed)
    sem = np.full((size_px, size_px), ROAD, dtype=np.uint8)
    hgt = np.zeros((size_px, size_px), dtype=np.float32)
    period = block + road
    idx = np.arange(size_px) % period
    inside = idx < block
    lot = (idx % (block // 2)) < (block // 2 - 4)
    n_blocks = size_px // period + 1
    kind = rng.choice(3, size=(n_blocks, n_blocks), p=[0.8, 0.15, 0.05])  # towers, park, plaza
    heights = rng.uniform(10, 120, size=(2 * n_blocks, 2 * n_blocks)).astype(np.float32)
    bi = np.arange(size_px) // period
    li = (np.arange(size_px) % period) // (block // 2)
    k = kind[bi[:, None], bi[None, :]]
    block_mask = inside[:, None] & inside[None, :]
    towers = block_mask & (k == 0) & lot[:, None] & lot[None, :]
    sem[block_mask & (k == 1)] = VEGETATION
    sem[block_mask & (k == 2)] = GROUND
    sem[towers] = ROOF
    hgt[towers] = heights[(2 * bi + li)[:, None], (2 * bi + li)[None, :]][towers]
    river = np.abs(np.arange(size_px) - size_px // 3) < 20
    sem[river, :] = WATER
    hgt[river, :] = 0.0
    return sem, hgt


def paper_cameras(centre: float, n: int, width: int, height: int, scale: float = 1.0) -> Cameras:
    """Drone orbit of ``n`` frames around ``(centre, centre)``: radius 400 m, altitude 300 m."""
    angles = 2 * math.pi * torch.arange(n) / n
    eye = torch.stack([centre + 400 * torch.cos(angles), centre + 400 * torch.sin(angles), torch.full((n,), 300.0)], 1)
    target = torch.tensor([centre, centre, 0.0]).expand(n, 3)
    cams = Cameras.look_at(eye, target, width=width, height=height, focal=1528.15 * scale)
    return cams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames(pipe, layout, styles, host_cams, cams, max_distance: float, device, autocast, views) -> tuple[int, int, list[float]]:
    """A chunk of frames as ``GaussianCityPipeline.decode_visible`` and the pipeline's loop run it:
    visibility from the host cameras, one decode of the points any of them sees, one rasterization
    per frame with the device cameras ``cams``. Returns the points decoded, the points rasterized
    (summed over the frames) and the synchronised end times of the three phases. ``views``: the
    trajectory's ``bev.ViewCache``."""
    ends = []
    with torch.no_grad():
        options = {"max_distance": max_distance, "device": device, "cache": views}
        pts, rows = visible_bev_points_per_camera(layout, host_cams, **options)
        sync(device)
        ends.append(time.perf_counter())
        with autocast:
            g = pipe.decode_points(layout, pts, styles, device)
        g = type(g)(**{k: getattr(g, k).float() for k in ("means", "quats", "scales", "opacities", "colors")})
        per_frame = [g] if len(rows) == 1 else [g[r] for r in rows]
        sync(device)
        ends.append(time.perf_counter())
        for j, gj in enumerate(per_frame):
            render_gaussians(gj, cams[j])
        sync(device)
        ends.append(time.perf_counter())
    return len(pts), sum(len(gj) for gj in per_frame), ends


def _labelled(name: str, fn):
    def wrapped(*a, **k):
        with torch.profiler.record_function(name):
            return fn(*a, **k)

    return wrapped


_LABELLED = (  # (owner, attribute, label): the steps of a frame that the profile names
    (bev, "_view_window", "bev.view_window"),
    (bev, "_columns", "bev.columns"),
    (bev, "_max_pyramid", "bev.max_pyramid"),
    (bev, "_camera_rays", "bev.camera_rays"),
    (bev, "march", "bev.march"),
    (bev, "_points_of", "bev.points_of"),
    (BEVPoints, "select", "decode.select"),
    (GaussianCityPipeline, "_scene_features", "decode.scene_features"),
    (BEVPointDecoder, "forward", "decode.decoder_forward"),
    (BEVPointDecoder, "hierarchy", "decode.hierarchy"),
    (PointHierarchy, "padded", "decode.pad_hierarchy"),
    (CapturedCall, "__call__", "decode.graph_replay"),
    (BEVPointDecoder, "gaussians", "decode.gaussians"),
)
_HOST_CALLS = ("cudaMemcpyAsync", "cudaStreamSynchronize", "cudaLaunchKernel", "cudaGraphLaunch")


def _per_label_table(prof, frames: int) -> str:
    """Host time and CUDA runtime calls per frame under each labelled step (innermost label;
    ``frame`` labels a whole chunk of frames)."""
    labels = {label for _, _, label in _LABELLED} | {"frame"}
    host, calls = {}, {}
    for e in prof.events():
        if e.name in labels:
            host[e.name] = host.get(e.name, 0.0) + e.cpu_time_total / 1000
        if e.name in _HOST_CALLS:
            parent = e.cpu_parent
            while parent is not None and parent.name not in labels:
                parent = parent.cpu_parent
            key = (parent.name if parent is not None else "-", e.name)
            calls[key] = calls.get(key, 0) + 1
    header = "| step | host ms/frame (incl. nested) | " + " | ".join(f"{c}/frame" for c in _HOST_CALLS) + " |"
    rows = [header, "| --- | --- | " + " | ".join("---" for _ in _HOST_CALLS) + " |"]
    for label in sorted(host, key=lambda k: -host[k]):
        counts = " | ".join(f"{calls.get((label, c), 0) / frames:.0f}" for c in _HOST_CALLS)
        rows.append(f"| {label} | {host[label] / frames:.2f} | {counts} |")
    return "\n".join(rows)


def profile_frames(pipe, layout, styles, cams: Cameras, args, device, autocast) -> str:
    """torch.profiler tables of ``args.profile`` frames, the frame's steps labelled (``bev.*``,
    ``decode.*``), with each step's host time and CUDA runtime calls (syncs hide in memcpys)."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _LABELLED]
    for (owner, name, label), (_, _, fn) in zip(_LABELLED, saved):
        setattr(owner, name, _labelled(label, fn))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    max_distance = float(pipe.scene_encoder.config.max_view_distance)
    views = bev.ViewCache(layout, device)
    chunk = args.decode_chunk_size
    device_cams = cams.to(device)
    try:
        with torch.profiler.profile(activities=activities) as prof:
            for c in range(math.ceil(args.profile / chunk)):
                index = [(c * chunk + j) % len(cams) for j in range(chunk)]
                with torch.profiler.record_function("frame"):
                    frames(pipe, layout, styles, cams[index], device_cams[index], max_distance, device, autocast, views)
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    events = prof.key_averages()
    sort_device = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    count = math.ceil(args.profile / chunk) * chunk
    return "\n\n".join(
        [
            f"## per step ({count} frames in chunks of {chunk})\n\n{_per_label_table(prof, count)}",
            f"## by self device time ({count} frames)\n\n```\n{events.table(sort_by=sort_device, row_limit=30)}\n```",
            f"## by total host time (labelled ranges first)\n\n```\n{events.table(sort_by='cpu_time_total', row_limit=40)}\n```",
        ]
    )


def bench_layout(pipe, size_px: int, cams: Cameras, args, device) -> dict:
    sem, hgt = manhattan_layout(size_px, seed=size_px)
    layout = pipe.prepare_layout(sem, hgt)
    styles = pipe.sample_styles(layout, torch.Generator().manual_seed(0)).to(device)
    max_distance = float(pipe.scene_encoder.config.max_view_distance)
    times = {"visibility": [], "decode": [], "raster": [], "total": []}
    decoded, rasterized = [], []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    views = bev.ViewCache(layout, device)
    chunk = args.decode_chunk_size
    device_cams = cams.to(device)
    warmup = math.ceil(args.warmup / chunk)
    for c in range(warmup + math.ceil(args.frames / chunk)):
        index = [(c * chunk + j) % len(cams) for j in range(chunk)]
        sync(device)
        t0 = time.perf_counter()
        n_decoded, n_rasterized, (t1, t2, t3) = frames(
            pipe, layout, styles, cams[index], device_cams[index], max_distance, device, autocast, views
        )
        if c >= warmup:  # per frame
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[key].append(value * 1000 / chunk)
            decoded.append(n_decoded / chunk)
            rasterized.append(n_rasterized / chunk)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if args.profile and size_px == min(args.sizes):
        write_text_atomic(args.out / "profile.md", profile_frames(pipe, layout, styles, cams, args, device, autocast))
    ms = {k: float(np.mean(v)) for k, v in times.items()}
    return {
        "layout_km2": (size_px / 1000) ** 2,
        "layout_px": size_px,
        "points_per_frame": float(np.mean(rasterized)),
        "points_decoded_per_frame": float(np.mean(decoded)),
        "decode_chunk_size": args.decode_chunk_size,
        "ms_per_chunk": ms["total"] * args.decode_chunk_size,
        "ms_per_frame": ms["total"],
        "fps": 1000.0 / ms["total"],
        "ms_visibility": ms["visibility"],
        "ms_decode": ms["decode"],
        "ms_raster": ms["raster"],
        "peak_gpu_mb": peak / 2**20,
        "weights_mb": base / 2**20,
        "view_window_builds": views.builds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--pipeline", default=None, help="a trained pipeline folder instead of the preset")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the decoders")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="enable_cuda_graphs (building decoder replayed as a CUDA graph)"
    )
    parser.add_argument(
        "--decode_chunk_size",
        type=int,
        default=1,
        help="frames decoded together, once (the pipeline's decode_chunk_size; 1: per frame, as the paper)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny preset, small layouts and frames")
    parser.add_argument("--profile", type=int, default=0, help="also profile this many frames (profile.md)")
    args = parser.parse_args(argv)
    if args.decode_chunk_size < 1:
        raise ValueError(f"--decode_chunk_size must be >= 1, got {args.decode_chunk_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu --quick)")
    args.out.mkdir(parents=True, exist_ok=True)
    width, height, scale = 960, 540, 1.0
    args.sizes = (1000, 4000)
    if args.quick:
        args.preset, args.frames, args.warmup = "tiny", 2, 1
        width, height, scale = 96, 54, 0.1
        args.sizes = (1000, 1200)
    pipe = GaussianCityPipeline.from_pretrained(args.pipeline) if args.pipeline else GaussianCityPipeline.from_preset(args.preset)
    pipe = pipe.to(device)
    pipe.enable_cuda_graphs(args.cuda_graphs)
    results = []
    for size in args.sizes:
        cams = paper_cameras(size / 2, max(args.frames, 1), width, height, scale)
        results.append(bench_layout(pipe, size, cams, args, device))
        print(json.dumps(results[-1]), flush=True)
    ratio = results[1]["peak_gpu_mb"] / results[0]["peak_gpu_mb"] if results[0]["peak_gpu_mb"] else float("nan")
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.pipeline or args.preset,
        "bf16": args.bf16,
        "cuda_graphs": args.cuda_graphs,
        "decode_chunk_size": args.decode_chunk_size,
        "graph_captures": pipe._graphed.captures if pipe._graphed is not None else 0,
        "image": [width, height],
        "frames": args.frames,
        "results": results,
        "peak_memory_ratio_16_over_1": ratio,
        "goals": {"fps>=100": results[0]["fps"] >= 100, "memory_ratio<=1.1": bool(ratio <= 1.1)},
    }
    write_text_atomic(args.out / "gaussiancity_speed.json", json.dumps(summary, indent=2))
    lines = [
        (
            f"GaussianCity speed ({summary['device']}, preset {summary['preset']}, {width}x{height}, bf16={args.bf16}, "
            f"cuda_graphs={args.cuda_graphs}, graph captures {summary['graph_captures']}, "
            f"decode_chunk_size={args.decode_chunk_size}; ms per frame, chunk ms = latency of a chunk)"
        ),
        "",
        "| layout | points/frame | decoded/frame | view windows built | visibility ms | decode ms | raster ms | total ms | FPS | chunk ms | peak GPU MB |",  # noqa: E501
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['layout_km2']:.2f} km2 | {r['points_per_frame']:.0f} | {r['points_decoded_per_frame']:.0f} "
            f"| {r['view_window_builds']} | {r['ms_visibility']:.1f} | {r['ms_decode']:.1f} | {r['ms_raster']:.1f} "
            f"| {r['ms_per_frame']:.1f} | {r['fps']:.1f} | {r['ms_per_chunk']:.1f} | {r['peak_gpu_mb']:.0f} |"
        )
    lines.append(f"\npeak memory ratio 16 km2 / 1 km2: {ratio:.3f} (goal <= 1.1)")
    table = "\n".join(lines)
    write_text_atomic(args.out / "gaussiancity_speed.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
