"""Speed of diffusers_city's sparse attention (bucketed SDPA) on city-like sparse structures.

1. Window attention (EarthCrafter's sparse Swin layers) over the surface voxels of a synthetic
   extruded-box city (height field of random boxes, only the exposed shell kept), window 8,
   unshifted and shifted: ms per call with the cached packing plan, forward and forward+backward,
   and effective TFLOP/s counting only useful, unpadded FLOPs (4 * sum(L_g^2) * head_dim per head).
   Baseline: dense SDPA over the same number of tokens cut into equal-length chunks.
2. Serialized attention (GaussianCity's point transformer): 32,768 points, 1024-point patches,
   one batch item and many instances (GaussianCity gives each building its own batch item);
   attention alone and a full pre-LN transformer block per layer at PTv3's stage widths.
3. Checks: GPU keys equal CPU keys for every order; GPU attention vs float64 CPU attention.

Writes ``results.json`` and ``results.md`` to ``--out`` and prints the markdown table last.

    PYTHONPATH=src python benchmarks/sparse_attention.py --out runs/bench_sparse_attention
    PYTHONPATH=src python benchmarks/sparse_attention.py --device cpu --quick --out /tmp/bench_attn
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers_city.export import write_text_atomic
from diffusers_city.sparse.attention import (
    AttentionGroups,
    SparseTransformerBlock,
    grouped_attention,
    serialized_groups,
    window_groups,
)
from diffusers_city.sparse.serialize import ORDERS, serialize
from diffusers_city.sparse.tensor import SparseTensor

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def city_voxels(side: int, seed: int = 0, max_height: int = 64) -> torch.Tensor:
    """Surface voxels ``[N, 4]`` int32 (batch 0) of a random extruded-box city on a
    ``side x side`` ground plane: every column keeps its top voxel and the wall voxels that
    stick out above its lowest 4-neighbour."""
    g = torch.Generator().manual_seed(seed)
    height = torch.zeros(side, side, dtype=torch.long)
    n_boxes = max(1, side * side // 150)
    corners = torch.randint(0, side, (n_boxes, 2), generator=g)
    sizes = torch.randint(4, 24, (n_boxes, 2), generator=g)
    tops = torch.randint(4, max_height, (n_boxes,), generator=g)
    for (x, y), (sx, sy), top in zip(corners.tolist(), sizes.tolist(), tops.tolist()):
        block = height[x : x + sx, y : y + sy]
        block.clamp_(min=top)
    padded = F.pad(height[None, None].float(), (1, 1, 1, 1), value=0.0)[0, 0].long()
    lowest = torch.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]).amin(0)
    low = torch.minimum(height, lowest + 1)
    counts = (height - low + 1).flatten()
    columns = torch.repeat_interleave(torch.arange(side * side), counts)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    z = low.flatten()[columns] + torch.arange(columns.numel()) - starts
    coords = torch.stack([torch.zeros_like(z), columns // side, columns % side, z], 1)
    return coords.int()


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def random_qkv(n: int, heads: int, head_dim: int, device, dtype, grad: bool = False) -> list[torch.Tensor]:
    return [torch.randn(n, heads, head_dim, device=device, dtype=dtype, requires_grad=grad) for _ in range(3)]


def bench_grouped(name: str, plan: AttentionGroups, heads: int, head_dim: int, args, device, dtype, build_ms: float):
    q, k, v = random_qkv(plan.num_tokens, heads, head_dim, device, dtype, grad=True)
    flops = plan.useful_flops(heads, head_dim)
    fwd = time_ms(lambda: grouped_attention(q, k, v, plan), device, args.reps, args.warmup)
    grad = torch.randn_like(v)

    def fwd_bwd() -> None:
        torch.autograd.grad(grouped_attention(q, k, v, plan), (q, k, v), grad)

    fwd_bwd_ms = time_ms(fwd_bwd, device, args.reps, args.warmup)
    return {
        "name": name,
        "tokens": plan.num_tokens,
        "groups": plan.num_groups,
        "buckets": len(plan.buckets),
        "mean_group": plan.num_tokens / max(plan.num_groups, 1),
        "padding": plan.gather_index.numel() / max(plan.num_tokens, 1) - 1.0,
        "heads": heads,
        "head_dim": head_dim,
        "plan_ms": build_ms,
        "fwd_ms": fwd,
        "fwd_bwd_ms": fwd_bwd_ms,
        "useful_tflops_fwd": flops / fwd / 1e9,
        "useful_tflops_fwd_bwd": 3.5 * flops / fwd_bwd_ms / 1e9,
    }


def bench_dense(tokens: int, chunk: int, heads: int, head_dim: int, args, device, dtype):
    chunks = max(1, tokens // chunk)
    q, k, v = (torch.randn(chunks, heads, chunk, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    flops = 4 * chunks * chunk * chunk * head_dim * heads
    fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), device, args.reps, args.warmup)
    grad = torch.randn_like(v)

    def fwd_bwd() -> None:
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)

    fwd_bwd_ms = time_ms(fwd_bwd, device, args.reps, args.warmup)
    return {
        "name": f"dense SDPA, chunks of {chunk}",
        "tokens": chunks * chunk,
        "groups": chunks,
        "buckets": 1,
        "mean_group": float(chunk),
        "padding": 0.0,
        "heads": heads,
        "head_dim": head_dim,
        "plan_ms": 0.0,
        "fwd_ms": fwd,
        "fwd_bwd_ms": fwd_bwd_ms,
        "useful_tflops_fwd": flops / fwd / 1e9,
        "useful_tflops_fwd_bwd": 3.5 * flops / fwd_bwd_ms / 1e9,
    }


def timed_build(build: Callable[[], AttentionGroups], device: torch.device) -> tuple[AttentionGroups, float]:
    build()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    plan = build()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return plan, (time.perf_counter() - t0) * 1e3


def window_section(args, device, dtype) -> list[dict]:
    coords = city_voxels(args.city_side, seed=0).to(device)
    rows = []
    heads, head_dim = args.window_heads, args.head_dim
    for shift in (0, args.window // 2):
        plan, build_ms = timed_build(lambda: window_groups(coords, args.window, shift), device)
        label = f"window {args.window}{' shifted' if shift else ''}"
        rows.append(bench_grouped(label, plan, heads, head_dim, args, device, dtype, build_ms))
    mean = rows[0]["mean_group"]
    chunk_mean = max(8, int(round(mean / 8)) * 8)
    for chunk in sorted({chunk_mean, args.window**3}):
        rows.append(bench_dense(coords.shape[0], chunk, heads, head_dim, args, device, dtype))
    for row in rows:
        row["section"] = "window"
    return rows


def point_set(n_points: int, instances: int, device) -> torch.Tensor:
    """``n_points`` surface voxels of a city; with ``instances > 1`` the city is cut into
    ``instances`` x-y lots, each its own batch item (GaussianCity's per-instance batches)."""
    side = 8
    coords = city_voxels(side)
    while coords.shape[0] < n_points:
        side *= 2
        coords = city_voxels(side)
    g = torch.Generator().manual_seed(1)
    coords = coords[torch.randperm(coords.shape[0], generator=g)[:n_points]]
    if instances > 1:
        per_axis = max(1, int(round(instances**0.5)))
        lot = max(1, side // per_axis)
        bx = torch.clamp(coords[:, 1] // lot, max=per_axis - 1)
        by = torch.clamp(coords[:, 2] // lot, max=per_axis - 1)
        _, batch = torch.unique(bx * per_axis + by, return_inverse=True)
        coords[:, 0] = batch.int()
    return coords.to(device)


def serialized_section(args, device, dtype) -> list[dict]:
    rows = []
    for instances in (1, args.instances):
        coords = point_set(args.points, instances, device)
        items = int(coords[:, 0].max()) + 1

        def build() -> AttentionGroups:
            keys = serialize(coords, args.order)
            return serialized_groups(keys, coords[:, 0], args.patch)

        plan, build_ms = timed_build(build, device)
        for width in args.widths:
            heads = max(1, width // args.ptv3_head_dim)
            name = f"serialized {args.order}, {items} item(s), attention"
            row = bench_grouped(name, plan, heads, width // heads, args, device, dtype, build_ms)
            block = SparseTransformerBlock(width, heads, "serialized", patch_size=args.patch, order=args.order)
            block = block.to(device=device, dtype=dtype)
            x = SparseTensor(torch.randn(coords.shape[0], width, device=device, dtype=dtype), coords)
            with torch.no_grad():
                block(x)  # builds and caches the plan
                row["block_fwd_ms"] = time_ms(lambda: block(x), device, args.reps, args.warmup)
            row["section"] = "serialized"
            rows.append(row)
    return rows


def checks(args, device, dtype) -> dict:
    """Serialization keys and attention outputs on ``device`` against the CPU, float64."""
    coords = city_voxels(min(args.city_side, 48), seed=3)
    out = {}
    for order in ORDERS:
        keys = serialize(coords.to(device), order).cpu()
        out[f"keys_equal_cpu_{order}"] = bool(torch.equal(keys, serialize(coords, order)))
    heads, head_dim = 2, 32
    q, k, v = random_qkv(coords.shape[0], heads, head_dim, "cpu", torch.float64)
    plans = {
        "window": lambda cc: window_groups(cc, args.window, args.window // 2),
        "serialized": lambda cc: serialized_groups(serialize(cc, "hilbert"), cc[:, 0], 256),
    }
    for name, plan in plans.items():
        reference = grouped_attention(q, k, v, plan(coords))
        gpu_plan = plan(coords.to(device))
        for dt_name, dt in (("fp32", torch.float32), (args.dtype, dtype)):
            got = grouped_attention(q.to(device, dt), k.to(device, dt), v.to(device, dt), gpu_plan).double().cpu()
            out[f"max_abs_err_{name}_{dt_name}"] = float((got - reference).abs().max())
    return out


def markdown(rows: list[dict], device_name: str, dtype_name: str) -> str:
    lines = [
        f"Sparse attention on {device_name}, {dtype_name}; medians; TFLOP/s count useful (unpadded) FLOPs only, "
        "fwd+bwd as 3.5x fwd FLOPs.",
        "",
        "| case | tokens | groups | mean L | pad | heads x dim | plan ms | fwd ms | fwd TFLOP/s "
        "| fwd+bwd ms | fwd+bwd TFLOP/s | block fwd ms |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        block = f"{r['block_fwd_ms']:.3f}" if "block_fwd_ms" in r else "-"
        lines.append(
            f"| {r['name']} | {r['tokens']} | {r['groups']} | {r['mean_group']:.1f} | {100 * r['padding']:.0f}% "
            f"| {r['heads']}x{r['head_dim']} | {r['plan_ms']:.2f} | {r['fwd_ms']:.3f} | {r['useful_tflops_fwd']:.2f} "
            f"| {r['fwd_bwd_ms']:.3f} | {r['useful_tflops_fwd_bwd']:.2f} | {block} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--city-side", type=int, default=256, help="city ground plane side in voxels (EarthCrafter L=256)")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--window-heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--points", type=int, default=32768)
    p.add_argument("--patch", type=int, default=1024)
    p.add_argument("--instances", type=int, default=36, help="batch items of the per-instance point set")
    p.add_argument("--order", default="grid", choices=ORDERS, help="GaussianCity uses its grid order (Eq. 13)")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 256, 512], help="PTv3 stage widths")
    p.add_argument("--ptv3-head-dim", type=int, default=16)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    if args.quick:
        args.city_side, args.points, args.patch, args.instances = 32, 2048, 256, 4
        args.window_heads, args.head_dim, args.widths = 2, 32, [32]
        args.reps, args.warmup = 2, 1
    positive = ("city_side", "window", "window_heads", "head_dim", "points", "patch", "instances", "ptv3_head_dim")
    positive += ("reps",)
    for name in positive:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if any(w <= 0 for w in args.widths):
        raise ValueError(f"--widths must be positive, got {args.widths}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available (use --device cpu)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows, errors = [], {}
    for name, section in (("window", window_section), ("serialized", serialized_section)):
        try:
            rows += section(args, device, dtype)
        except Exception as exc:  # keep the other sections' numbers from a one-shot GPU run
            traceback.print_exc()
            errors[name] = repr(exc)
    try:
        check_results = checks(args, device, dtype)
    except Exception as exc:
        traceback.print_exc()
        check_results, errors["checks"] = {}, repr(exc)
    result = {
        "device": device_name,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "checks": check_results,
        "errors": errors,
    }
    table = markdown(rows, device_name, args.dtype)
    notes = {**check_results, **{f"ERROR {k}": v for k, v in errors.items()}}
    checks_md = "\n".join(f"- {k}: {v}" for k, v in notes.items())
    write_text_atomic(args.out / "results.json", json.dumps(result, indent=2))
    write_text_atomic(args.out / "results.md", f"{table}\n\nChecks:\n\n{checks_md}\n")
    print(checks_md)
    print()
    print(table)


if __name__ == "__main__":
    main()
