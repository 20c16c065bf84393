"""Where a Sat2City training step spends its time: data loading vs. the model step.

Times (1) the training data loader alone (seconds per batch with N workers), (2) full training
steps (forward, backward, optimizer) on a fixed cached batch, split into forward and backward
with CUDA synchronisation, for every requested ``--stages`` (``vae``: both VAEs as in
``train_sat2city_vae.py``; ``dense`` / ``sparse`` / ``appearance``: one diffusion stage as in
``train_sat2city_diffusion.py``, on randomly initialised frozen VAEs) and every sparse backend
available. ``--profile`` prints torch.profiler's top ops of one step and counts the
``index_put_`` calls (the backward of plain advanced indexing ``t[idx]``, which sorts its indices
on CUDA and was ~80% of the GPU step before the gathers went through ``index_select`` /
``embedding``). Prints a markdown table.

GPU:  PYTHONPATH=src python benchmarks/sat2city_train_throughput.py --profile --out OUT
CPU:  PYTHONPATH=src python benchmarks/sat2city_train_throughput.py --device cpu --quick --out OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from diffusers import DDIMScheduler  # noqa: E402
from sat2city_common import make_dataloader, prepare_batch  # noqa: E402
from train_sat2city_diffusion import UNETS, StageData, diffusion_loss  # noqa: E402
from train_sat2city_vae import vae_losses  # noqa: E402

from diffusers_city import Sat2CityDenseVAE, Sat2CitySparseVAE  # noqa: E402
from diffusers_city.models.sat2city import HeightFieldEncoder, Sat2CityDenseUNet3D, Sat2CitySparseUNet3D  # noqa: E402
from diffusers_city.presets import load_preset  # noqa: E402
from diffusers_city.sparse import available_backends, use_backend  # noqa: E402

STAGES = ("vae",) + tuple(UNETS)
INDEX_PUT_OPS = ("aten::index_put_", "aten::_index_put_impl_")
# autograd nodes of plain advanced indexing (their backward is index_put_(accumulate=True))
INDEX_BACKWARD_NODES = (": IndexBackward0", ": IndexPutBackward0", ": MaskedSelectBackward0")


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


def stage_step(preset: dict, stage: str, batch: dict, device: torch.device) -> Callable[[], torch.Tensor]:
    """Fresh models and optimizer of ``stage``; the returned closure computes one step's loss."""
    dense = Sat2CityDenseVAE.from_config(preset["components"]["dense_vae"]).to(device)
    sparse = Sat2CitySparseVAE.from_config(preset["components"]["sparse_vae"]).to(device)
    if stage == "vae":
        modules = [dense, sparse]
        weights = preset["training"]["vae"]["loss_weights"]
        color_points = int(preset["training"]["vae"]["color_points_per_scene"])

        def loss() -> torch.Tensor:
            return vae_losses(dense, sparse, batch, weights, color_points)["loss"]
    else:
        dense.eval().requires_grad_(False)
        sparse.eval().requires_grad_(False)
        data = StageData(stage, dense, sparse)
        unet_cls = Sat2CityDenseUNet3D if stage == "dense" else Sat2CitySparseUNet3D
        unet = unet_cls.from_config(preset["components"][UNETS[stage]]).to(device)
        encoder = (
            HeightFieldEncoder.from_config(preset["components"]["condition_encoder"]).to(device) if stage == "dense" else None
        )
        modules = [unet] + ([encoder] if encoder is not None else [])
        scheduler = DDIMScheduler.from_config(preset["scheduler"])
        p_drop = float(unet.config.condition_dropout)

        def loss() -> torch.Tensor:
            return diffusion_loss(data, unet, encoder, scheduler, batch, 1.0, p_drop)

    opt = torch.optim.AdamW(itertools.chain.from_iterable(m.parameters() for m in modules), lr=1e-4)

    def step() -> tuple[float, float]:
        sync(device)
        t0 = time.perf_counter()
        value = loss()
        sync(device)
        t1 = time.perf_counter()
        value.backward()
        opt.step()
        opt.zero_grad()
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    return step


def time_steps(step: Callable[[], tuple[float, float]], steps: int) -> dict[str, float]:
    """Median forward / backward+optimizer seconds of ``steps`` steps after a warm-up step."""
    first = step()
    fwd, bwd = zip(*(step() for _ in range(steps)))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"forward_s": med(fwd), "backward_opt_s": med(bwd), "first_step_s": sum(first)}


def profile_step(step: Callable[[], tuple[float, float]], device: torch.device, label: str) -> dict[str, float]:
    """torch.profiler table (top 25 ops by self device time, else self CPU time) of one warm step,
    and the calls and self time of the ``index_put_`` ops in it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    cuda = device.type == "cuda"
    print(f"### {label}", flush=True)
    print(
        events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25, max_name_column_width=60),
        flush=True,
    )
    self_time = lambda e: (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6  # noqa: E731
    total = sum(self_time(e) for e in events)
    hits = [e for e in events if e.key in INDEX_PUT_OPS or "indexing_backward" in e.key]
    backward = [e for e in events if e.key.endswith(INDEX_BACKWARD_NODES)]
    total_time = lambda e: (e.device_time_total if cuda else e.cpu_time_total) / 1e6  # noqa: E731
    summary = {
        "index_put_calls": sum(e.count for e in hits if e.key == "aten::_index_put_impl_"),
        "index_put_self_s": sum(self_time(e) for e in hits),
        "profiled_self_s": total,
        "indexing_backward_nodes": sum(e.count for e in backward),
        "indexing_backward_s": sum(total_time(e) for e in backward),
    }
    print(f"{label}: {summary}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="small")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {STAGES}")
    p.add_argument("--workers", default="0,8,14", help="loader worker counts to time ('' for none)")
    p.add_argument("--batch_size", type=int, default=None, help="override the preset's batch sizes")
    p.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 5, 2 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU timings)")
    p.add_argument("--quick", action="store_true", help="tiny preset, batch 2, no loader timing (CPU smoke run)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one step per stage and backend")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.workers, args.batch_size = "tiny", "", args.batch_size or 2
    stages = [s for s in args.stages.split(",") if s]
    if not stages or any(s not in STAGES for s in stages):
        raise ValueError(f"--stages must be a comma list of {STAGES}, got {args.stages!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = load_preset("sat2city", args.preset)
    steps = args.steps or (2 if args.quick else 5)
    grid = tuple(preset["components"]["dense_vae"]["grid_size"])
    rows = []
    vae_bs = args.batch_size or int(preset["training"]["vae"]["train_batch_size"])
    for w in (int(x) for x in args.workers.split(",") if x):
        rows.append({"what": f"data loader, {w} workers, batch {vae_bs}", "seconds": time_loader(preset, w, vae_bs, 6)})
        print(rows[-1], flush=True)
    batches = {}
    for stage in stages:
        section = "vae" if stage == "vae" else "diffusion"
        bs = args.batch_size or int(preset["training"][section]["train_batch_size"])
        if bs not in batches:
            raw = next(iter(make_dataloader(preset, argparse.Namespace(dataloader_num_workers=0), bs)))
            batches[bs] = prepare_batch(raw, grid, device)
        for backend in available_backends() if device.type == "cuda" else ["torch"]:
            label = f"{stage} step ({backend}), batch {bs}"
            with use_backend(backend):
                torch.manual_seed(0)
                step = stage_step(preset, stage, batches[bs], device)
                r = time_steps(step, steps)
                if args.profile:
                    summary = profile_step(step, device, label)
                    r["index_put_calls"] = summary["index_put_calls"]
                    r["indexing_backward_nodes"] = summary["indexing_backward_nodes"]
                    r["indexing_backward_s"] = summary["indexing_backward_s"]
                    r["index_put_share"] = summary["index_put_self_s"] / max(summary["profiled_self_s"], 1e-12)
            for k, v in r.items():
                rows.append({"what": f"{label}, {k}", "seconds": v})
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    table = [f"Sat2City training throughput, preset {args.preset}, {name}", "", "| what | value |", "| --- | ---: |"] + [
        f"| {r['what']} | {r['seconds']:.3f} |" for r in rows
    ]
    (args.out / "throughput.json").write_text(json.dumps(rows, indent=1))
    (args.out / "throughput.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
