"""Which EarthCrafter stage loses the semantic map: building-column IoU against the map (as in
``earthcrafter_quality.py``: columns rising > 3 m above the tile's ground vs the map's roof cells,
judged off vegetation / construction; and the share of road / water cells left flat) of

- the ground-truth structure (the ceiling of the measure);
- the StructVAE's reconstruction (posterior mode decoded): what the latent space can hold;
- latents drawn from N(0, std of the true latents) on the true coarse cells, decoded: no flow;
- the structure flow sampled on the true coarse cells (the occupancy stage teacher-forced);
- the whole pipeline (its own occupancy stage);

and the voxel IoU of the occupancy stage's coarse cells against the true ones, on held-out tiles
(the preset's validation split), 25 flow steps, the pipeline's default guidance.

    PYTHONPATH=src python benchmarks/earthcrafter_stage_diagnosis.py --pretrained training/state/earthcrafter_small \\
        --device cpu --num-tiles 6 --out /tmp/ec_diag
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from earthcrafter_bench import add_model_arguments, check_model_arguments, check_tiles_fit, load_pipeline, tile_preset  # noqa: E402
from earthcrafter_common import make_dataset  # noqa: E402
from earthcrafter_quality import follow_semantic  # noqa: E402

from diffusers_city.export import write_text_atomic  # noqa: E402

ROWS = (
    ("ground truth", "ground-truth structure (ceiling)"),
    ("vae", "StructVAE reconstruction (posterior mode)"),
    ("noise", "N(0, latent std) latents on the true coarse cells (no flow)"),
    ("forced", "structure flow on the true coarse cells"),
    ("pipeline", "whole pipeline"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p, "small", "fp32")
    p.add_argument("--num-tiles", type=int, default=6, help="held-out validation tiles")
    p.add_argument("--first-tile", type=int, default=0, help="index of the first validation tile (others than the quality rows')")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the pipeline's)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--building-threshold-m", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="smoke mode: untrained tiny preset, 2 tiles, 2 steps, CPU")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.device, args.num_tiles, args.steps = "tiny", "cpu", 2, 2
    check_model_arguments(args, "small")
    if args.num_tiles < 1 or args.steps < 1 or args.first_tile < 0:
        raise ValueError("--num-tiles and --steps must be >= 1, --first-tile >= 0")
    if args.guidance_scale is not None and not args.guidance_scale >= 1.0:
        raise ValueError(f"--guidance-scale must be >= 1, got {args.guidance_scale}")
    return args


def true_occupancy(coords: np.ndarray, cell: int, grid: int) -> torch.Tensor:
    """``[G, G, G]`` +1 at the coarse cells holding a voxel, -1 elsewhere (the occupancy stage's target)."""
    target = torch.full((grid, grid, grid), -1.0)
    cells = torch.from_numpy(np.unique(coords // cell, axis=0))
    target[tuple(cells.T)] = 1.0
    return target


def occupancy_forcing(target: torch.Tensor, seen: dict):
    """A ``callback_on_step_end`` that records the occupancy stage's latents (``seen["occupancy"]``)
    and, with ``target`` given, replaces them by it (teacher forcing)."""

    def callback(pipe, step, t, kwargs):
        if pipe.stage != "occupancy":
            return kwargs
        if target is not None:
            kwargs = {"latents": target.to(kwargs["latents"]).expand_as(kwargs["latents"]).clone()}
        seen["occupancy"] = kwargs["latents"]
        return kwargs

    return callback


def cell_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    a, b = pred > 0, target > 0
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


@torch.inference_mode()
def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = tile_preset(args.preset)
    data = preset["training"]["data"]
    L, v = int(data["resolution"]), float(data["voxel_size"])
    pipe = load_pipeline(args)
    check_tiles_fit(pipe, preset, args.preset)
    vae, cell = pipe.struct_vae, pipe.occupancy_transformer.config.cell_size
    tiles = make_dataset(preset, "validation", with_views=False)
    structures = {key: [] for key, _ in ROWS}
    maps, cells = [], []
    guidance = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
    for i in range(args.first_tile, args.first_tile + args.num_tiles):
        s = tiles[i]
        maps.append(s["semantic"].numpy())
        voxels = s["voxels"].to(args.device)
        coords = voxels.coords[:, 1:].long().cpu().numpy()
        structures["ground truth"].append(coords)
        z = vae.encode(voxels).latent_dist.mode()
        structures["vae"].append(vae.decode(z).sample.coords[:, 1:].long().cpu().numpy())
        noise = torch.randn(z.feats.shape, generator=torch.Generator().manual_seed(i)).to(z.feats) * z.feats.std()
        structures["noise"].append(vae.decode(z.replace(noise)).sample.coords[:, 1:].long().cpu().numpy())
        target = true_occupancy(coords, cell, L // cell)
        for key, forced in (("forced", target), ("pipeline", None)):
            seen: dict = {}
            out = pipe(
                semantic_map=maps[-1],
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(i),
                output_type="voxels",
                callback_on_step_end=occupancy_forcing(forced, seen),
                **guidance,
            )
            structures[key].append(out.voxels.coords[:, 1:].long().cpu().numpy())
        cells.append(cell_iou(seen["occupancy"][0, 0].cpu(), target))
    threshold = args.building_threshold_m / v
    results = {key: follow_semantic(structures[key], maps, L, threshold) for key, _ in ROWS}
    lines = [
        f"EarthCrafter stage diagnosis, {args.pretrained or f'untrained {args.preset}'}, held-out {L}^3 tiles "
        f"{args.first_tile}..{args.first_tile + args.num_tiles - 1} at {v:g} m, {args.steps} flow steps, guidance "
        f"{args.guidance_scale or 'default'}",
        "",
        "| structure | building-column IoU | road / water cells flat |",
        "| --- | --- | --- |",
        *(f"| {label} | {results[key]['iou']:.3f} | {results[key]['flat']:.3f} |" for key, label in ROWS),
        "",
        f"Occupancy stage: coarse-cell voxel IoU against the true cells {np.mean(cells):.3f} (mean over tiles).",
    ]
    report = {
        "rows": results,
        "occupancy_cell_iou": float(np.mean(cells)),
        "tiles": [args.first_tile, args.first_tile + args.num_tiles - 1],
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
    }
    write_text_atomic(args.out / "results.json", json.dumps(report, indent=2))
    write_text_atomic(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
