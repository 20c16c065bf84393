"""Where a Sat2City VAE training step spends its time: data loading vs. the model step.

Times (1) the training data loader alone (batches per second with N workers), (2) one full VAE
training step (forward, backward, optimizer) on a fixed cached batch, split into forward and
backward with CUDA synchronisation, for the sparse backends available. Prints a markdown table.

GPU:  PYTHONPATH=src python benchmarks/sat2city_train_throughput.py --out OUT
CPU:  PYTHONPATH=src python benchmarks/sat2city_train_throughput.py --device cpu --quick --out OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from sat2city_common import make_dataloader, prepare_batch  # noqa: E402
from train_sat2city_vae import vae_losses  # noqa: E402

from diffusers_city import DenseGeometryVAE, SparseGeometryVAE  # noqa: E402
from diffusers_city.presets import load_preset  # noqa: E402
from diffusers_city.sparse import available_backends, use_backend  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(preset: dict, workers: int, batch_size: int, batches: int) -> float:
    """Seconds per batch of the training loader after its first batch."""
    args = argparse.Namespace(dataloader_num_workers=workers)
    it = iter(make_dataloader(preset, args, batch_size))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / batches


def time_steps(preset: dict, batch: dict, device: torch.device, steps: int) -> dict[str, float]:
    """Median forward / backward+optimizer seconds of VAE steps on one fixed batch."""
    dense = DenseGeometryVAE.from_config(preset["components"]["dense_vae"]).to(device)
    sparse = SparseGeometryVAE.from_config(preset["components"]["sparse_vae"]).to(device)
    opt = torch.optim.AdamW(itertools.chain(dense.parameters(), sparse.parameters()), lr=1e-4)
    weights = preset["training"]["vae"]["loss_weights"]
    color_points = int(preset["training"]["vae"]["color_points_per_scene"])
    fwd, bwd = [], []
    for _ in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        terms = vae_losses(dense, sparse, batch, weights, color_points)
        sync(device)
        t1 = time.perf_counter()
        terms["loss"].backward()
        opt.step()
        opt.zero_grad()
        sync(device)
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    med = lambda xs: sorted(xs[1:])[len(xs[1:]) // 2]  # noqa: E731  (first step is warm-up)
    return {"forward_s": med(fwd), "backward_opt_s": med(bwd), "first_step_s": fwd[0] + bwd[0]}


def profile_step(preset: dict, batch: dict, device: torch.device) -> None:
    """torch.profiler table (top 25 ops by self device time, else self CPU time) of one VAE step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        time_steps(preset, batch, device, 1)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="small")
    p.add_argument("--workers", default="0,8,14")
    p.add_argument("--quick", action="store_true", help="tiny preset, few batches (CPU smoke run)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one step per backend")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.workers = "tiny", "0"
    device = torch.device(args.device)
    preset = load_preset("sat2city", args.preset)
    bs = int(preset["training"]["vae"]["train_batch_size"])
    grid = tuple(preset["components"]["dense_vae"]["grid_size"])
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        rows.append({"what": f"data loader, {w} workers, batch {bs}", "seconds": time_loader(preset, w, bs, 2 if args.quick else 6)})
        print(rows[-1], flush=True)
    raw = next(iter(make_dataloader(preset, argparse.Namespace(dataloader_num_workers=0), bs)))
    batch = prepare_batch(raw, grid, device)
    for backend in available_backends() if device.type == "cuda" else ["torch"]:
        with use_backend(backend):
            r = time_steps(preset, batch, device, 2 if args.quick else 5)
            if args.profile:
                profile_step(preset, batch, device)
        for k, v in r.items():
            rows.append({"what": f"VAE step ({backend}), {k}", "seconds": v})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table = [f"Sat2City VAE training throughput, preset {args.preset}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}",
             "", "| what | seconds |", "| --- | ---: |"] + [f"| {r['what']} | {r['seconds']:.3f} |" for r in rows]
    (args.out / "throughput.json").write_text(json.dumps(rows, indent=1))
    (args.out / "throughput.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
