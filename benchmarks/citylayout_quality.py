"""CityLayout quality: statistics of generated BEV layouts against held-out procedural layouts.

There is no per-pixel ground truth for an unconditional layout, so sets of layouts are compared
by their statistics (``diffusers_city.metrics.layout_distances``): the total variation of the
class-area histograms, 1-D Wasserstein distances of log10 footprint area, building height and
log10 block area, and the road-fraction difference. Held-out layouts are procedural cities of
seeds 7000+ (training uses seeds 1000..6999), ``--size_m`` square at the pipeline's
``meters_per_pixel``, cropped to whole tokens. Rows, each against the held-out set:

- the pipeline's samples (generator seeds ``--seed`` + i);
- the perfect sampler: procedural layouts of other seeds (9000+), what a correct sampler scores
  at this set size (the distances do not reach 0: two finite sets differ);
- naive: i.i.d. tokens drawn from the token unigram frequency of training-seed layouts (1000+,
  encoded by ``pipe.encode_layout``), decoded by ``pipe.decode_tokens``: the same decoder, no
  structure between tokens;
- the VQ reconstruction of the held-out layouts (encode, decode): the tokenizer's ceiling.

The sampled rows are mean +- std over ``--repeats`` re-draws (other generator / city seeds); the
reconstruction is deterministic and computed once.

Seams: on the pipeline's samples, a band of +-2 tokens (2 f pixels) around every interior
sliding-window border (pixel rows r f and columns c f of the window starts r, c > 0) is compared
with the rest of the map (``layout_statistics(..., region=...)``), next to the same split of the
held-out procedural layouts, which have no seams: band-vs-interior distances well above the
procedural ones mean the window borders show. Time per layout and seconds per km² are printed;
the speed benchmark is ``citylayout_speed.py``.

    python benchmarks/citylayout_quality.py --out out/citylayout_quality
    python benchmarks/citylayout_quality.py --device cpu --quick --out /tmp/citylayout_quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from citylayout_bench import add_pipeline_arguments, load_pipeline  # noqa: E402

from diffusers_city.data import procedural_city  # noqa: E402
from diffusers_city.export import write_text_atomic
from diffusers_city.metrics import LAYOUT_DISTANCE_METRICS, layout_distances, layout_statistics

TRAIN_SEED = 1000  # training layouts: seeds 1000..6999
HELD_OUT_SEED = 7000
PERFECT_SAMPLER_SEED = 9000
SEAM_BAND_TOKENS = 2  # band half-width around a window border, in tokens

ROWS = (
    ("pipeline", "CityLayout pipeline samples"),
    ("perfect_sampler", "perfect sampler (procedural layouts, seeds 9000+)"),
    ("naive_tokens", "naive: i.i.d. tokens from the training unigram, same decoder"),
    ("vq_reconstruction", "VQ reconstruction of the held-out layouts (tokenizer ceiling)"),
)
SEAM_ROWS = (
    ("pipeline", "CityLayout samples: seam band vs interior"),
    ("held_out", "held-out procedural layouts (no seams): same band vs interior"),
)
METRIC_LABELS = {
    "class_tv": "class TV",
    "footprint_log10_area_w1": "footprint log10 m² W1",
    "building_height_w1": "building height W1 (m)",
    "block_log10_area_w1": "block log10 m² W1",
    "road_fraction_abs": "road fraction abs diff",
}


def procedural_layouts(first_seed: int, n: int, size_m: float, mpp: float, f: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(semantic, height) of procedural cities ``first_seed..first_seed + n - 1``, cropped to
    whole tokens of ``f`` pixels."""
    out = []
    for seed in range(first_seed, first_seed + n):
        scene = procedural_city(seed, size_m=size_m, meters_per_pixel=mpp, with_points=False, with_image=False)
        h, w = (s // f * f for s in scene.semantic.shape)
        if h == 0 or w == 0:
            raise ValueError(f"--size_m {size_m} is smaller than one token ({f} px of {mpp} m)")
        out.append((scene.semantic[:h, :w], scene.height[:h, :w]))
    return out


def token_unigram(pipe, layouts) -> torch.Tensor:
    """Frequency of each codebook entry over the VQ tokens of ``layouts`` (float64 ``[K]``)."""
    size = pipe.vqvae.config.num_vq_embeddings
    counts = torch.zeros(size, dtype=torch.float64)
    for sem, hgt in layouts:
        counts += torch.bincount(pipe.encode_layout(sem, hgt).reshape(-1).cpu(), minlength=size).double()
    return counts / counts.sum()


def naive_layouts(pipe, unigram: torch.Tensor, grids: list[tuple[int, int]], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One decoded map per token grid size of ``grids``, its tokens drawn i.i.d. from ``unigram``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for gh, gw in grids:
        tokens = torch.multinomial(unigram, gh * gw, replacement=True, generator=gen).reshape(gh, gw)
        out.append(pipe.decode_tokens(tokens))
    return out


def seam_band(pipe, grid_hw: tuple[int, int]) -> np.ndarray | None:
    """Boolean ``[H, W]`` band of +-``SEAM_BAND_TOKENS`` tokens around the pixel lines where an
    interior sliding window starts; None when one window covers the grid (no interior border)."""
    f = pipe.pixels_per_token
    band = np.zeros((grid_hw[0] * f, grid_hw[1] * f), dtype=bool)
    half = SEAM_BAND_TOKENS * f
    for r, c in pipe.window_starts(tuple(grid_hw)):
        if r > 0:
            band[max(0, r * f - half) : r * f + half] = True
        if c > 0:
            band[:, max(0, c * f - half) : c * f + half] = True
    return band if band.any() and not band.all() else None


def statistics(layouts, mpp: float) -> list[dict]:
    return [layout_statistics(sem, hgt, mpp) for sem, hgt in layouts]


def seam_distances(pipe, layouts, mpp: float) -> dict[str, float] | None:
    """``layout_distances`` of the seam bands of ``layouts`` against their interiors (pooled)."""
    band_stats, interior_stats = [], []
    for sem, hgt in layouts:
        band = seam_band(pipe, (sem.shape[0] // pipe.pixels_per_token, sem.shape[1] // pipe.pixels_per_token))
        if band is None:
            continue
        band_stats.append(layout_statistics(sem, hgt, mpp, region=band))
        interior_stats.append(layout_statistics(sem, hgt, mpp, region=~band))
    return layout_distances(band_stats, interior_stats) if band_stats else None


def summarize(runs: list[dict[str, float]]) -> dict:
    """Mean and standard deviation of each metric over ``runs`` (NaN-propagating), and the runs."""
    return {
        **{m: float(np.mean([r[m] for r in runs])) for m in LAYOUT_DISTANCE_METRICS},
        **{f"{m}_std": float(np.std([r[m] for r in runs])) for m in LAYOUT_DISTANCE_METRICS},
        "per_repeat": runs,
    }


def sample_layouts(pipe, n: int, size_m: float, steps: int | None, first_seed: int, device: torch.device):
    """``n`` pipeline samples (semantic, height) from generator seeds ``first_seed + i``, and the
    seconds each call took (synchronised)."""
    kwargs = {} if steps is None else {"num_inference_steps": steps}
    layouts, seconds = [], []
    for i in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = pipe(width_m=size_m, height_m=size_m, generator=torch.Generator().manual_seed(first_seed + i), **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        layouts.append((out.scene.semantic, out.scene.height))
    return layouts, seconds


def _cell(row: dict, m: str, with_std: bool) -> str:
    return f"{row[m]:.3f} +- {row[m + '_std']:.3f}" if with_std else f"{row[m]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pipeline_arguments(parser, "tiny preset, 2 layouts of 128 m, 2 steps, 1 repeat")
    parser.add_argument("--num_layouts", type=int, default=8, help="layouts per set")
    parser.add_argument("--train_layouts", type=int, default=8, help="training-seed layouts of the naive token unigram")
    parser.add_argument("--size_m", type=float, default=None, help="side of each square layout (default 1024, quick 128)")
    parser.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=None, help="re-draws of the sampled sets (default 3, quick 1)")
    parser.add_argument("--seed", type=int, default=0, help="first generator seed of the pipeline's samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = args.preset or ("tiny" if args.pipeline is None else None)
        args.num_layouts, args.train_layouts = 2, 2
        args.size_m, args.steps = args.size_m or 128.0, args.steps or 2
        args.repeats = args.repeats or 1
    args.size_m = args.size_m or 1024.0
    args.repeats = args.repeats or 3
    for name in ("num_layouts", "train_layouts", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    pipe = load_pipeline(args)
    device = pipe.device
    mpp, f, n = float(pipe.config.meters_per_pixel), pipe.pixels_per_token, args.num_layouts

    with torch.no_grad():
        held_out = procedural_layouts(HELD_OUT_SEED, n, args.size_m, mpp, f)
        reference = statistics(held_out, mpp)
        grids = [(sem.shape[0] // f, sem.shape[1] // f) for sem, _ in held_out]
        unigram = token_unigram(pipe, procedural_layouts(TRAIN_SEED, args.train_layouts, args.size_m, mpp, f))
        recon = [pipe.decode_tokens(pipe.encode_layout(sem, hgt)) for sem, hgt in held_out]
        runs = {k: [] for k, _ in ROWS if k != "vq_reconstruction"}
        seam_runs, seconds, areas_km2 = [], [], []
        for r in range(args.repeats):
            samples, took = sample_layouts(pipe, n, args.size_m, args.steps, args.seed + r * n, device)
            seconds += took
            areas_km2 += [sem.size * mpp**2 / 1e6 for sem, _ in samples]
            runs["pipeline"].append(layout_distances(statistics(samples, mpp), reference))
            perfect = procedural_layouts(PERFECT_SAMPLER_SEED + r * n, n, args.size_m, mpp, f)
            runs["perfect_sampler"].append(layout_distances(statistics(perfect, mpp), reference))
            naive = naive_layouts(pipe, unigram, grids, args.seed + r)
            runs["naive_tokens"].append(layout_distances(statistics(naive, mpp), reference))
            seam_runs.append(seam_distances(pipe, samples, mpp))
        held_out_seams = seam_distances(pipe, held_out, mpp)

    rows = {k: summarize(v) for k, v in runs.items()}
    rows["vq_reconstruction"] = summarize([layout_distances(statistics(recon, mpp), reference)])
    seams = None
    if held_out_seams is not None and all(s is not None for s in seam_runs):
        seams = {"pipeline": summarize(seam_runs), "held_out": summarize([held_out_seams])}
    result = {
        "pipeline": args.preset or str(args.pipeline or "pipelines/citylayout/default"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "num_layouts": n,
        "train_layouts": args.train_layouts,
        "size_m": args.size_m,
        "meters_per_pixel": mpp,
        "steps": args.steps,
        "repeats": args.repeats,
        "seeds": {
            "train": TRAIN_SEED,
            "held_out": HELD_OUT_SEED,
            "perfect_sampler": PERFECT_SAMPLER_SEED,
            "generator": args.seed,
        },
        "codebook_size": int(pipe.vqvae.config.num_vq_embeddings),
        "seconds_per_layout": float(np.mean(seconds)),
        "seconds_per_km2": float(np.sum(seconds) / np.sum(areas_km2)),
        "rows": rows,
        "seams": seams,
        "seam_band_px": SEAM_BAND_TOKENS * f,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "results.json", json.dumps(result, indent=2))

    header = "| method | " + " | ".join(METRIC_LABELS[m] for m in LAYOUT_DISTANCE_METRICS) + " |"
    rule = "| --- |" + " --- |" * len(LAYOUT_DISTANCE_METRICS)
    lines = [
        f"CityLayout quality ({result['pipeline']}, {result['device']}): {n} layouts of {args.size_m:g} m at {mpp:g} m/px "
        f"against {n} held-out procedural layouts (seeds {HELD_OUT_SEED}+; training seeds {TRAIN_SEED}..6999), "
        f"mean +- std over {args.repeats} re-draws; lower is better",
        "",
        header,
        rule,
    ]
    for key, label in ROWS:
        with_std = key != "vq_reconstruction" and args.repeats > 1
        lines.append(f"| {label} | " + " | ".join(_cell(rows[key], m, with_std) for m in LAYOUT_DISTANCE_METRICS) + " |")
    lines.append("")
    if seams is None:
        lines.append("Seams: one sliding window covers the layout at this size, no interior window border to score.")
    else:
        lines += [
            f"Seams: a band of +-{SEAM_BAND_TOKENS * f} px around the interior window borders vs the rest",
            "",
            header,
            rule,
        ]
        for key, label in SEAM_ROWS:
            with_std = key == "pipeline" and args.repeats > 1
            lines.append(f"| {label} | " + " | ".join(_cell(seams[key], m, with_std) for m in LAYOUT_DISTANCE_METRICS) + " |")
    lines += [
        "",
        f"Time: {result['seconds_per_layout']:.2f} s per layout, {result['seconds_per_km2']:.2f} s per km² "
        f"({args.steps or 'default'} steps; the speed benchmark is citylayout_speed.py)",
    ]
    table = "\n".join(lines)
    write_text_atomic(args.out / "results.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
