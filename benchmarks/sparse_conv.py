"""Sparse convolution speed: default CUDA path vs spconv-triton called directly vs the torch reference.

Voxels are the surfaces of a synthetic city (extruded boxes of varied footprints and heights on
gentle terrain: roofs, facades and ground), not random clouds. For every (kind, voxels, channels,
precision) it times, as medians over CUDA events after warm-up:

- map: kernel-map build alone on a fresh structure (ours: coordinate shift + spconv pairs; direct:
  spconv pair generation on pre-shifted indices; torch: the reference hash/searchsorted map);
- conv: forward with the map cached (ours: ``SubMConv3d``/``SparseConv3d`` layer; direct: spconv's
  ``SubMConv3d`` module reusing its ``indice_key`` for submanifold, spconv's implicit-GEMM op with
  prebuilt pairs for strided convs, whose pairs spconv modules cannot reuse; torch: reference);
- total: forward on a fresh structure (map + conv; direct: the spconv module).

bf16 rows run our layers and the torch reference under ``torch.autocast(bfloat16)`` with fp32
weights; spconv modules ignore autocast in eval mode, so "direct" gets bf16 features and weights.
fp32 rows use IEEE fp32 everywhere (TF32 off in torch and in spconv-triton).

GPU:  PYTHONPATH=src python benchmarks/sparse_conv.py --out OUT
CPU smoke run (torch reference only):  python benchmarks/sparse_conv.py --device cpu --quick --out OUT
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from diffusers_city.export import write_text_atomic
from diffusers_city.sparse import SparseTensor, available_backends, use_backend
from diffusers_city.sparse import nn as snn
from diffusers_city.sparse.backend import get_backend


def city_height_field(size: int, seed: int) -> np.ndarray:
    """Integer heights [size, size] in voxels: terrain plus extruded boxes (buildings)."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, 4)
    terrain = 6 + 3 * np.sin(i / size * 2 * np.pi + phase[0]) * np.cos(j / size * 3 * np.pi + phase[1])
    terrain += 1.5 * np.sin((i + j) / size * 5 * np.pi + phase[2])
    height = np.floor(terrain).astype(np.int64)
    for _ in range(max(1, size * size // 350)):
        w, d = rng.integers(4, 28, 2)
        x0, y0 = rng.integers(0, size, 2)
        top = int(terrain[x0, y0]) + int(rng.choice([rng.integers(4, 15), rng.integers(15, 60)], p=[0.7, 0.3]))
        block = height[x0 : x0 + w, y0 : y0 + d]
        np.maximum(block, top, out=block)
    return height


def surface_voxels(height: np.ndarray) -> np.ndarray:
    """(x, y, z) of the surface: each column's top plus the walls down to its lowest neighbour."""
    padded = np.pad(height, 1, mode="edge")
    low = np.minimum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:], height])
    counts = (height - low + 1).reshape(-1)
    i, j = np.meshgrid(np.arange(height.shape[0]), np.arange(height.shape[1]), indexing="ij")
    starts = np.repeat(low.reshape(-1), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([np.repeat(i.reshape(-1), counts), np.repeat(j.reshape(-1), counts), starts + within], 1)


def city_voxels(target: int, seed: int = 0, offset: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
    """About ``target`` surface voxels of a synthetic city, as int32 coords [N, 4] (batch 0)."""
    size = max(8, int(math.sqrt(target / 2.5)))
    for _ in range(4):
        xyz = surface_voxels(city_height_field(size, seed))
        if abs(len(xyz) - target) < 0.05 * target:
            break
        size = max(8, int(size * math.sqrt(target / len(xyz))))
    coords = np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz + np.asarray(offset)], 1)
    return torch.from_numpy(coords).to(torch.int32)


def bench(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fresh(x: SparseTensor) -> SparseTensor:
    """Same data with an empty cache (forces a kernel-map build)."""
    return x.derive(x.feats, x.coords)


class Direct:
    """spconv-triton called directly on pre-shifted non-negative indices."""

    def __init__(self, x: SparseTensor, layer: torch.nn.Module, kind: str, dtype: torch.dtype) -> None:
        import spconv_triton.pytorch as spconv
        from spconv_triton.core import ConvAlgo
        from spconv_triton.pytorch import ops as spops

        self.spconv, self.spops, self.algo = spconv, spops, ConvAlgo.MaskImplicitGemm
        shift = torch.div(x.coords[:, 1:].amin(0) - 4, 2, rounding_mode="floor") * 2  # keeps stride-2 alignment
        self.indices = x.coords.clone()
        self.indices[:, 1:] -= shift
        self.shape = [int(v) + 8 for v in self.indices[:, 1:].amax(0).tolist()]
        self.feats = x.feats.to(dtype)
        self.kind, self.k = kind, layer.kernel_size
        c_in, c_out = layer.in_channels, layer.out_channels
        if kind == "subm":
            self.module = spconv.SubMConv3d(c_in, c_out, self.k, padding=self.k // 2, indice_key="bench")
        else:
            self.module = spconv.SparseConv3d(c_in, c_out, self.k, stride=layer.stride, padding=layer.padding)
        self.module.load_state_dict(layer.state_dict())
        self.module = self.module.to(device=x.device, dtype=dtype).eval()
        self.batch_size = x.batch_size
        self.keyed = self.module(self.tensor())  # registers the subm indice_key
        self.pairs = self.build_pairs()

    def tensor(self, indice_dict: dict | None = None):
        return self.spconv.SparseConvTensor(self.feats, self.indices, self.shape, self.batch_size, indice_dict=indice_dict)

    def build_pairs(self):
        subm = self.kind == "subm"
        return self.spops.get_indice_pairs_implicit_gemm(
            self.indices, self.batch_size, self.shape, self.algo, [self.k] * 3,
            [1 if subm else self.module.stride[0]] * 3, [self.k // 2 if subm else self.module.padding[0]] * 3,
            [1] * 3, [0] * 3, subm=subm, transpose=False, is_train=not subm,
        )  # fmt: skip

    def conv_cached(self):
        if self.kind == "subm":
            return self.module(self.tensor(self.keyed.indice_dict)).features
        res = self.pairs
        out, _, _ = self.spops.implicit_gemm(
            self.feats, self.module.weight, res[2], res[4], res[6], res[2].shape[1], res[8], False, False,
            bias=self.module.bias,
        )  # fmt: skip
        return out

    def conv_fresh(self):
        return self.module(self.tensor()).features


def run_row(args, kind: str, n: int, channels: int, precision: str, device: torch.device) -> dict:
    coords = city_voxels(n, seed=n % 97, offset=(-700, 300, -40)).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(coords.shape[0], channels, generator=g).to(device)
    x = SparseTensor(feats, coords)
    if kind == "subm":
        layer = snn.SubMConv3d(channels, channels, 3)
    else:
        layer = snn.SparseConv3d(channels, channels, 2, 2)
    layer = layer.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    row = {"kind": kind, "voxels": int(coords.shape[0]), "channels": channels, "precision": precision}
    backends = ["torch"] + (["spconv"] if device.type == "cuda" and "spconv" in available_backends() else [])
    warm, iters = args.warmup, args.iters
    outputs = {}
    with torch.no_grad(), autocast:
        for name in backends:
            with use_backend(name):
                backend = get_backend(device)
                label = "ours" if name == "spconv" else "torch"
                build = lambda: backend.build_map(fresh(x), kind, layer.kernel_size, getattr(layer, "stride", 1), 0)  # noqa: E731
                row[f"map_{label}_ms"] = bench(build, device, warm, iters)
                outputs[label] = layer(x).feats.float()
                row[f"conv_{label}_ms"] = bench(lambda: layer(x), device, warm, iters)
                row[f"total_{label}_ms"] = bench(lambda: layer(fresh(x)), device, warm, iters)
    if "ours" in outputs:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        with torch.no_grad():
            direct = Direct(x, layer, kind, dtype)
            row["map_direct_ms"] = bench(direct.build_pairs, device, warm, iters)
            row["conv_direct_ms"] = bench(direct.conv_cached, device, warm, iters)
            row["total_direct_ms"] = bench(direct.conv_fresh, device, warm, iters)
            outputs["direct"] = direct.conv_cached().float()
        row["conv_overhead_pct"] = 100 * (row["conv_ours_ms"] / row["conv_direct_ms"] - 1)
        row["total_overhead_pct"] = 100 * (row["total_ours_ms"] / row["total_direct_ms"] - 1)
        scale = outputs["direct"].abs().max().clamp_min(1e-12)
        row["max_rel_diff_ours_vs_direct"] = float((outputs["ours"] - outputs["direct"]).abs().max() / scale)
    ref = outputs["torch"]
    for label in ("ours",):
        if label in outputs:
            row["max_rel_diff_ours_vs_torch"] = float((outputs[label] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    return row


COLUMNS = [
    ("kind", "kind"), ("voxels", "voxels"), ("channels", "C"), ("precision", "prec"),
    ("map_ours_ms", "map ours"), ("map_direct_ms", "map direct"), ("map_torch_ms", "map torch"),
    ("conv_ours_ms", "conv ours"), ("conv_direct_ms", "conv direct"), ("conv_torch_ms", "conv torch"),
    ("conv_overhead_pct", "conv ovh %"), ("total_ours_ms", "total ours"), ("total_direct_ms", "total direct"),
    ("total_torch_ms", "total torch"), ("total_overhead_pct", "total ovh %"),
]  # fmt: skip


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key, "-")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Times in ms (median). map = kernel-map build; conv = forward with cached map; total = fresh structure.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (sparse_conv.json, sparse_conv.md)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes and channels (CPU smoke run)")
    p.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated voxel counts")
    p.add_argument("--channels", default="32,128,256", help="comma-separated channel counts")
    p.add_argument("--kinds", default="subm,down")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--autotune", choices=("pinned", "full"), default="pinned", help="spconv-triton tile autotuning")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=540.0, help="skip remaining rows after this wall time")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.channels, args.warmup, args.iters = "2000,5000", "8,16", 1, 2
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.channels = [int(c) for c in args.channels.split(",")]
    args.kinds = args.kinds.split(",")
    args.precisions = args.precisions.split(",")
    if any(k not in ("subm", "down") for k in args.kinds):
        raise ValueError(f"--kinds takes subm and/or down, got {args.kinds}")
    if any(p_ not in ("fp32", "bf16") for p_ in args.precisions):
        raise ValueError(f"--precisions takes fp32 and/or bf16, got {args.precisions}")
    if any(s < 1 for s in args.sizes) or any(c < 1 for c in args.channels):
        raise ValueError("--sizes and --channels must be positive")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available (use --device cpu --quick)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    env = {"device": str(device), "torch": torch.__version__, "backends": available_backends()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        if "spconv" in available_backends():
            import spconv_triton

            from diffusers_city.sparse._spconv_backend import configure_autotune

            spconv_triton.constants.SPCONV_ALLOW_TF32 = False
            env["spconv_triton"] = spconv_triton.__version__
            env["autotune"] = configure_autotune(args.autotune)
    header = f"## Sparse conv benchmark ({env.get('gpu', 'cpu')}, torch {torch.__version__}, spconv autotune {env.get('autotune', '-')})"  # noqa: E501
    rows, start = [], time.time()
    for precision in args.precisions:
        for kind in args.kinds:
            for channels in args.channels:
                for n in args.sizes:
                    if time.time() - start > args.max_seconds:
                        rows.append(
                            {"kind": kind, "voxels": n, "channels": channels, "precision": precision, "skipped": "time budget"}
                        )
                        continue
                    try:
                        row = run_row(args, kind, n, channels, precision, device)
                    except Exception as err:  # keep going: one failing row must not lose the others
                        traceback.print_exc()
                        row = {"kind": kind, "voxels": n, "channels": channels, "precision": precision}
                        row["error"] = f"{type(err).__name__}: {err}"[:300]
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    write_text_atomic(args.out / "sparse_conv.json", json.dumps({"env": env, "rows": rows}, indent=1))
    table = markdown(rows, header)
    write_text_atomic(args.out / "sparse_conv.json", json.dumps({"env": env, "rows": rows}, indent=1))
    write_text_atomic(args.out / "sparse_conv.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
