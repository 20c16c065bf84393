"""Where a Sat2City pipeline loses height fidelity: each stage and VAE on held-out crops.

For each held-out crop (the preset's validation seeds) the height correlation (as in
``sat2city_quality.py``) of: the ground-truth voxels; the dense and sparse VAEs decoding the
posterior mean and a posterior sample of the crop's own latent; the dense diffusion stage alone
(DDIM, guidance 1 and ``--guidance``); and the sparse + appearance stages run from the
ground-truth grid; both geometry stages at ``--temperature`` (scale of the initial noise,
``Sat2CityPipeline(temperature=...)``). Also the share of posterior variance in each VAE's latent variance.

    PYTHONPATH=src python benchmarks/sat2city_stage_diagnosis.py --device cpu --num-scenes 3 --out /tmp/diag
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sat2city_common import make_dataloader, prepare_batch  # noqa: E402
from sat2city_quality import block_max, load_pipeline  # noqa: E402

from diffusers_city.export import write_text_atomic  # noqa: E402
from diffusers_city.metrics import height_fidelity  # noqa: E402
from diffusers_city.pipelines.sat2city.pipeline_sat2city import _Sampling  # noqa: E402
from diffusers_city.presets import load_preset  # noqa: E402

COLUMNS = (
    "ground_truth",
    "dense_vae_mean",
    "dense_vae_sample",
    "sparse_vae_mean",
    "sparse_vae_sample",
    "dense_stage_g1",
    "dense_stage_g",
    "sparse_stages_from_gt_grid",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: pipelines/sat2city/default)")
    p.add_argument("--preset", default="small", help="preset whose data config defines the held-out crops")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-scenes", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0, help="the second guidance scale of the dense stage")
    p.add_argument("--temperature", type=float, default=1.0, help="initial-noise scale of the dense and sparse stages")
    p.add_argument("--quick", action="store_true", help="smoke mode: untrained tiny preset, 1 scene, 2 steps")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.num_scenes, args.steps = "tiny", 1, 2
    return args


def variance_share(mean: torch.Tensor, logvar: torch.Tensor) -> float:
    """Mean over channels of posterior variance / (posterior variance + variance of the means);
    channels are dim 1 of a dense ``[B, C, ...]`` latent or of per-voxel ``[N, C]`` features."""
    dims = [d for d in range(mean.ndim) if d != 1]
    post = logvar.exp().mean(dims)
    return float((post / (post + mean.var(dims))).mean())


@torch.no_grad()
def diagnose(
    pipe, prepared: dict, clean: np.ndarray, mpp: float, k: int, steps: int, guidance: float, temperature: float, seed: int
) -> dict:
    def corr(voxels) -> float:
        pts = voxels.world_positions().float().cpu().numpy()
        return height_fidelity(pts, block_max(clean, k), mpp * k)["pearson"] if len(pts) else float("nan")

    voxels = prepared["voxels"]
    dvae, svae = pipe.dense_vae, pipe.sparse_vae
    gen = torch.Generator(device=voxels.device).manual_seed(seed)
    dense_posterior = dvae.encode(voxels).latent_dist
    enc = svae.encode(voxels)
    sparse_posterior = enc.latent_dist
    row = {
        "ground_truth": corr(voxels),
        "dense_vae_mean": corr(dvae.decode(dense_posterior.mode()).sample),
        "dense_vae_sample": corr(dvae.decode(dense_posterior.sample(gen)).sample),
        "sparse_vae_mean": corr(svae.decode(sparse_posterior.mode()).sample),
        "sparse_vae_sample": corr(svae.decode(sparse_posterior.sample(gen)).sample),
        "dense_variance_share": variance_share(dense_posterior.mean, dense_posterior.logvar),
        "sparse_variance_share": variance_share(sparse_posterior.mean.feats, sparse_posterior.logvar.feats),
    }
    grid = tuple(dvae.config.grid_size)
    shape = dvae.latent_shape(grid)
    cond = pipe.condition_encoder(prepared["ph_points"], prepared["ph_batch"], shape, 1)
    temperatures = (temperature, temperature, 1.0)
    for name, scale in (("dense_stage_g1", 1.0), ("dense_stage_g", guidance)):
        g = torch.Generator(device=voxels.device).manual_seed(seed)
        run = _Sampling(steps, g, None, [], (scale, 1.0, 1.0), temperatures)
        x = pipe._denoise("dense", pipe.dense_unet, (1, dvae.config.latent_channels, *shape), lambda t: t, cond, run)
        row[name] = corr(dvae.decode(x / dvae.config.scaling_factor).sample)
    first = voxels.replace(F.normalize(voxels.feats.float(), dim=1))
    g = torch.Generator(device=voxels.device).manual_seed(seed)
    final, _ = pipe._geometry_and_appearance(
        first, prepared["ph_points"], _Sampling(steps, g, None, [], (1.0, 1.0, 1.0), temperatures)
    )
    row["sparse_stages_from_gt_grid"] = corr(final)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("sat2city", args.preset)
    pipe = load_pipeline(args)
    grid = tuple(pipe.dense_vae.config.grid_size)
    mpp = float(preset["training"]["data"]["meters_per_pixel"])
    k = max(1, int(round(float(pipe.dense_vae.config.voxel_size) / mpp)))
    loader = make_dataloader(preset, argparse.Namespace(dataloader_num_workers=0), 1, "validation")
    rows = []
    for i, batch in zip(range(args.num_scenes), loader):
        prepared = prepare_batch(batch, grid, torch.device(args.device))
        row = {
            "scene": i,
            **diagnose(pipe, prepared, batch["height"][0, 0].numpy(), mpp, k, args.steps, args.guidance, args.temperature, i),
        }
        rows.append(row)
        print(json.dumps(row))
    write_text_atomic(
        args.out / "sat2city_stage_diagnosis.json",
        json.dumps(
            {
                "model": str(args.model),
                "steps": args.steps,
                "guidance": args.guidance,
                "temperature": args.temperature,
                "rows": rows,
            },
            indent=2,
        ),
    )
    names = [c if c != "dense_stage_g" else f"dense_stage_g{args.guidance:g}" for c in COLUMNS]
    lines = [
        (
            f"Height correlation per stage, {len(rows)} held-out crops ({args.preset}), {args.steps} DDIM steps, "
            f"temperature {args.temperature:g}"
        ),
        "",
        "| crop | " + " | ".join(names) + " | dense / sparse posterior variance share |",
        "|" + " --- |" * (len(COLUMNS) + 2),
    ]
    for r in rows:
        lines.append(
            f"| {r['scene']} | "
            + " | ".join(f"{r[c]:.3f}" for c in COLUMNS)
            + f" | {r['dense_variance_share']:.2f} / {r['sparse_variance_share']:.2f} |"
        )
    table = "\n".join(lines)
    write_text_atomic(args.out / "sat2city_stage_diagnosis.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
