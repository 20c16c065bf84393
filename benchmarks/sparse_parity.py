"""Parity of the spconv-triton backend with the torch reference on the GPU (fp32, IEEE).

For submanifold, strided and inverse convolutions (the latter both from the strided output and
from an unrelated coarse structure), on random clouds and city surfaces with negative
coordinates and several batch items, it runs our public layers under ``use_backend("spconv")``
and ``use_backend("torch")`` with identical weights, features and output gradients and reports
the relative error ``max|a - b| / max|b|`` of the output and of the gradients of the features,
weight and bias (required < 1e-5). Both are also compared with a float64 torch run, so a failure
can be attributed. Output sites of strided convolutions must be identical (same order).

TF32 is disabled in torch (``allow_tf32`` flags) and in spconv-triton, whose Triton dots run
``input_precision="ieee"`` for fp32 unless ``spconv_triton.constants.SPCONV_ALLOW_TF32`` is True
(its default is False; this script sets it False explicitly and records it). Only the
``torch.mm`` 1x1 path of spconv follows ``torch.backends.cuda.matmul.allow_tf32``; our layers
never call it (1x1 convs run ``F.linear`` on both backends).

By default the spconv GEMM autotuners are pinned to one tile config (autotuning only changes
the fp32 summation order, and a full sweep compiles ~37 configs per shape); ``--full-autotune``
keeps the sweep.

GPU:  PYTHONPATH=src python benchmarks/sparse_parity.py --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from diffusers_city.export import write_text_atomic
from diffusers_city.sparse import SparseTensor, available_backends, use_backend
from diffusers_city.sparse import nn as snn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_conv import city_voxels  # noqa: E402

TOLERANCE = 1e-5


def random_cloud(n: int, batch: int, low: list[int], span: list[int], seed: int) -> torch.Tensor:
    """About ``n`` distinct random voxels per box ``low .. low + span - 1`` (per axis), shuffled."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.stack([torch.randint(lo, lo + sp, (n,), generator=g) for lo, sp in zip(low, span)], 1)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=g), xyz], 1)
    coords = torch.unique(coords, dim=0)
    return coords[torch.randperm(coords.shape[0], generator=g)].to(torch.int32)


def city_batch(n: int, batch: int, offset: tuple[int, int, int]) -> torch.Tensor:
    items = []
    for b in range(batch):
        c = city_voxels(n // batch, seed=11 + b, offset=(offset[0] - 37 * b, offset[1] + 5 * b, offset[2] - b))
        c[:, 0] = b
        items.append(c)
    return torch.cat(items)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)) if b.numel() else 0.0


def make_layer(op: str, c_in: int, c_out: int, k: int, s: int, p: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if op == "subm":
        return snn.SubMConv3d(c_in, c_out, k)
    if op == "down":
        return snn.SparseConv3d(c_in, c_out, k, s, padding=p)
    return snn.SparseInverseConv3d(c_in, c_out, k, s, padding=p)


def run_backend(name, op, layer, target, coarse_coords, feats, grad_out, dtype):
    """Output, output coords and grads (feats, weight, bias) of one layer under one backend."""
    layer = layer.to(dtype)
    layer.zero_grad(set_to_none=True)
    f = feats.to(dtype).detach().requires_grad_()
    with use_backend(name):
        if op == "inverse":
            down = snn.SparseConv3d(1, 1, layer.kernel_size, layer.stride, padding=layer.padding).to(target.device, dtype)
            structure = target.replace(target.feats[:, :1].to(dtype))
            if coarse_coords is None:  # the strided output of target (the cached-map path)
                coarse = down(structure)
                x = coarse.replace(f)
            else:
                x = SparseTensor(f, coarse_coords, batch_size=target.batch_size)
            out = layer(x, structure)
        else:
            out = layer(target.replace(f))
    grads = torch.autograd.grad(out.feats, [f, layer.weight, layer.bias], grad_out.to(dtype))
    return out.feats.detach(), out.coords, grads


def run_case(case: dict, device: torch.device) -> list[dict]:
    coords = case["coords"].to(device)
    g = torch.Generator().manual_seed(case["seed"])
    rows = []
    for op, k, s, p in case["ops"]:
        c_in, c_out = case["channels"]
        target = SparseTensor(torch.zeros(coords.shape[0], 1, device=device), coords)
        coarse_coords = None
        if op == "inverse":
            structure = snn.SparseConv3d(1, 1, k, s, padding=p).to(device)(target)
            n_in = structure.num_voxels
        elif op == "inverse_other":
            # random coarse voxels over the coarse bounding box of target (partly overlapping its strided output)
            lo = torch.div(coords[:, 1:].amin(0), s, rounding_mode="floor") - 1
            span = torch.div(coords[:, 1:].amax(0), s, rounding_mode="floor") - lo + 2
            other_n = max(8, target.num_voxels // 6)
            coarse_coords = random_cloud(other_n, target.batch_size, lo.tolist(), span.tolist(), case["seed"] + 1).to(device)
            n_in = coarse_coords.shape[0]
        else:
            n_in = target.num_voxels
        n_out = snn.SparseConv3d(1, 1, k, s, padding=p).to(device)(target).num_voxels if op == "down" else target.num_voxels
        feats = torch.randn(n_in, c_in, generator=g).to(device)
        grad_out = torch.randn(n_out, c_out, generator=g).to(device)
        kind = "inverse" if op.startswith("inverse") else op
        layer = make_layer(kind, c_in, c_out, k, s, p, case["seed"]).to(device)
        results = {}
        for name, dtype in (("spconv", torch.float32), ("torch", torch.float32), ("torch64", torch.float64)):
            results[name] = run_backend(name.replace("64", ""), kind, layer, target, coarse_coords, feats, grad_out, dtype)
        sp, tr, gt = results["spconv"], results["torch"], results["torch64"]
        row = {"case": case["name"], "op": f"{op} k{k} s{s} p{p}", "voxels_in": n_in, "voxels_out": n_out,
               "batch": target.batch_size, "channels": f"{c_in}->{c_out}", "same_sites": bool(torch.equal(sp[1], tr[1]))}  # fmt: skip  # noqa: E501
        for label, i in (("out", None), ("d_feats", 0), ("d_weight", 1), ("d_bias", 2)):
            a, b, ref = (sp[0], tr[0], gt[0]) if i is None else (sp[2][i], tr[2][i], gt[2][i])
            row[f"{label}_spconv_vs_torch"] = rel(a, b)
            row[f"{label}_spconv_vs_fp64"] = rel(a, ref)
            row[f"{label}_torch_vs_fp64"] = rel(b, ref)
        worst = max(row[f"{lbl}_spconv_vs_torch"] for lbl in ("out", "d_feats", "d_weight", "d_bias"))
        row["worst_spconv_vs_torch"] = worst
        row["pass"] = bool(row["same_sites"] and worst < TOLERANCE)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cases(quick: bool) -> list[dict]:
    small = {
        "name": "cloud-3k", "coords": random_cloud(4000, 2, [-40, -3, -60], [18, 18, 18], 0), "channels": (3, 17), "seed": 1,
        "ops": [("subm", 3, 1, 0), ("down", 2, 2, 0), ("down", 3, 2, 1), ("inverse", 2, 2, 0), ("inverse_other", 2, 2, 0)],
    }  # fmt: skip
    if quick:
        small["coords"] = random_cloud(300, 2, [-9, -9, -9], [8, 8, 8], 0)
        return [small]
    medium = {
        "name": "city-40k", "coords": city_batch(40_000, 2, (-1000, -250, -30)), "channels": (32, 32), "seed": 2,
        "ops": [("subm", 3, 1, 0), ("subm", 5, 1, 0), ("down", 2, 2, 0), ("down", 3, 2, 1), ("inverse", 2, 2, 0),
                ("inverse", 3, 2, 1), ("inverse_other", 2, 2, 0)],
    }  # fmt: skip
    large = {
        "name": "city-300k", "coords": city_batch(300_000, 3, (-123_456, 7, -300)), "channels": (64, 64), "seed": 3,
        "ops": [("subm", 3, 1, 0), ("down", 2, 2, 0), ("inverse", 2, 2, 0)],
    }  # fmt: skip
    return [small, medium, large]


def markdown(rows: list[dict], header: str) -> str:
    cols = ["case", "op", "voxels_in", "voxels_out", "batch", "channels", "same_sites", "out_spconv_vs_torch",
            "d_feats_spconv_vs_torch", "d_weight_spconv_vs_torch", "d_bias_spconv_vs_torch", "pass"]  # fmt: skip
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r.get(c, '-'):.2e}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (sparse_parity.json, sparse_parity.md)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="one small case")
    p.add_argument("--full-autotune", action="store_true", help="keep spconv-triton's full autotune sweep")
    args = p.parse_args(argv)
    if "spconv" not in available_backends():
        raise ValueError(f"sparse_parity needs CUDA and spconv-triton (available backends: {available_backends()})")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    import spconv_triton

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    spconv_triton.constants.SPCONV_ALLOW_TF32 = False
    from diffusers_city.sparse._spconv_backend import configure_autotune

    configure_autotune("full" if args.full_autotune else "pinned")
    env = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "spconv_triton": spconv_triton.__version__,
        "SPCONV_ALLOW_TF32": spconv_triton.constants.SPCONV_ALLOW_TF32,
        "torch_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "autotune": "full" if args.full_autotune else "pinned",
        "tolerance": TOLERANCE,
    }
    rows, start = [], time.time()
    for case in cases(args.quick):
        try:
            rows += run_case(case, device)
        except Exception as err:  # record and continue with the next case
            traceback.print_exc()
            rows.append({"case": case["name"], "error": f"{type(err).__name__}: {err}"[:300], "pass": False})
        write_text_atomic(args.out / "sparse_parity.json", json.dumps({"env": env, "rows": rows}, indent=1))
    ok = all(r.get("pass") for r in rows)
    env["seconds"] = round(time.time() - start, 1)
    header = f"## spconv vs torch parity ({env['gpu']}, fp32 IEEE, tolerance {TOLERANCE:g}): {'PASS' if ok else 'FAIL'}"
    write_text_atomic(args.out / "sparse_parity.json", json.dumps({"env": env, "rows": rows, "pass": ok}, indent=1))
    table = markdown(rows, header)
    write_text_atomic(args.out / "sparse_parity.md", table)
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
