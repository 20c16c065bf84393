"""Sat2City quality on held-out procedural cities, against simple baselines.

For each held-out crop (validation seed range of the preset) the pipeline generates a city from
the noisy height map. Reported:

- height correlation: Pearson correlation between the top surface of the generated voxels and
  the clean height map (block-max to the voxel size); required >= 0.9. The same for the extruded
  noisy height map says how much the condition itself keeps of the clean heights;
- COV / MMD with Chamfer and EMD (10k points, Sat2City's protocol) of the generated voxels and of
  the baseline "extrude the noisy height map into columns" against the ground-truth point clouds;
- colour L1 at the ground-truth points (colour of the nearest generated voxel) against the
  baseline of each point's per-class mean colour (class means from training crops);
- distribution fidelity: a sampler cannot beat a mean predictor on L1, so the colours of the
  pipeline, of the per-class mean and of the perfect sampler -- the same crop painted by the
  procedural generator from another palette seed (``palette_seed_offset`` of the dataset: same
  geometry, points and condition) -- are scored by the distance of their distribution to the
  ground truth's, per held-out crop, mean +- std over the crops: per-(building instance, class)
  colour statistics of the ground-truth points (each coloured by the method: the nearest
  generated voxel for the pipeline) and 8x8 patch statistics of a nadir colour raster at the
  voxel size (the topmost ground-truth point of each cell, coloured by the method), compared by
  sliced Wasserstein and kernel MMD (``diffusers_city.metrics.distribution_distances``,
  standardised by the ground truth). The perfect sampler's colour L1 is the L1 a correct
  sampler gets: judge the pipeline's L1 near it, not against the mean's.

    PYTHONPATH=src python benchmarks/sat2city_quality.py --model pipelines/sat2city/default --device cuda --out bench/quality
    PYTHONPATH=src python benchmarks/sat2city_quality.py --device cpu --quick --out /tmp/quality
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "training"))

from sat2city_common import make_dataset  # noqa: E402

from diffusers_city.data import NUM_CLASSES  # noqa: E402
from diffusers_city.export import write_text_atomic  # noqa: E402
from diffusers_city.metrics import (  # noqa: E402
    COLOR_DISTRIBUTION_METRICS,
    color_distribution_distances,
    coverage_mmd,
    height_fidelity,
    instance_color_statistics,
    patch_statistics,
)
from diffusers_city.pipelines.sat2city import Sat2CityPipeline  # noqa: E402
from diffusers_city.pipelines.sat2city.cli import add_sampling_arguments  # noqa: E402
from diffusers_city.presets import bundled_path, load_preset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: pipelines/sat2city/default)")
    p.add_argument("--preset", default=None, help="preset whose data config defines the held-out crops (default: small)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-scenes", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    add_sampling_arguments(p)
    p.add_argument("--n-points", type=int, default=10_000)
    p.add_argument("--class-mean-scenes", type=int, default=8, help="training crops for the per-class colour means")
    p.add_argument("--quick", action="store_true", help="smoke mode: untrained tiny preset, 2 scenes, 2 steps, 2k points")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        args.preset = args.preset or "tiny"
        args.num_scenes, args.steps, args.n_points, args.class_mean_scenes = 2, 2, 2000, 2
    args.preset = args.preset or "small"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    return args


def load_pipeline(args) -> Sat2CityPipeline:
    if args.quick and args.model is None:
        pipe = Sat2CityPipeline.from_preset(args.preset)
        for decoder in (pipe.dense_vae.decoder, pipe.sparse_vae.geometry_decoder):
            for head in decoder.occupancy_heads:  # untrained: keep voxels so the smoke run has output
                torch.nn.init.constant_(head[1].bias, 3.0)
    else:
        model = args.model or bundled_path("sat2city", "default")
        if not (Path(model) / "model_index.json").is_file():
            raise FileNotFoundError(f"no Sat2City pipeline at {model}")
        pipe = Sat2CityPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(args.device)


def class_means(preset: dict, n: int) -> dict[int, np.ndarray]:
    ds = make_dataset(preset, "train")
    colors, classes = [], []
    for i in range(n):
        s = ds[i]
        colors.append(s["colors"].numpy())
        classes.append(s["point_classes"].numpy())
    colors, classes = np.concatenate(colors), np.concatenate(classes)
    return {int(c): colors[classes == c].mean(0) for c in np.unique(classes)}


def extrude_columns(height: np.ndarray, mpp: float, step: float) -> np.ndarray:
    """Baseline: every pixel of the (noisy) height map extruded into a column of points from the
    map's lowest height up to its own, every ``step`` metres (data.convert.height_map_to_points
    with fill_columns only fills down to the lowest neighbour)."""
    rows, cols = np.indices(height.shape)
    base = float(height.min())
    counts = np.floor((height - base) / step).astype(np.int64).ravel() + 1
    cell = np.repeat(np.arange(height.size), counts)
    level = np.arange(cell.size) - np.repeat(np.cumsum(counts) - counts, counts)
    z = np.minimum(base + level * step, height.ravel()[cell])
    return np.stack([(cols.ravel()[cell] + 0.5) * mpp, (rows.ravel()[cell] + 0.5) * mpp, z], 1)


def block_max(height: np.ndarray, k: int) -> np.ndarray:
    h, w = (height.shape[0] // k) * k, (height.shape[1] // k) * k
    return height[:h, :w].reshape(h // k, k, w // k, k).max(axis=(1, 3))


# palette seed of the perfect sampler: each held-out city's seed plus this
PALETTE_SEED_OFFSET = 1_000_003
PATCH_SIZE = 8

DISTRIBUTION_ROWS = (
    ("pipeline", "Sat2City (ours)"),
    ("class_mean", "per-class mean colour"),
    ("perfect_sampler", "perfect sampler (the crop painted from another palette seed)"),
)
DISTRIBUTION_METRICS = COLOR_DISTRIBUTION_METRICS


def point_instances(data, index: int, points: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-(building instance, class) id (>= 1) of each ground-truth point of sample ``index``
    (local frame): the crop's instance raster at the point's cell (0 = no instance)."""
    _, crop = data.crop(index)
    h, w = crop.instance.shape
    cells = np.floor(points[:, :2] / crop.meters_per_pixel).astype(np.int64)
    instance = crop.instance[np.clip(cells[:, 1], 0, h - 1), np.clip(cells[:, 0], 0, w - 1)]
    return instance.astype(np.int64) * NUM_CLASSES + classes + 1


def nadir_cells(points: np.ndarray, cell_m: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat cell, point index) of the topmost point of each occupied cell of a ``size`` x ``size``
    nadir raster of ``cell_m`` cells (row = y, column = x)."""
    ij = np.clip(np.floor(points[:, :2] / cell_m).astype(np.int64), 0, size - 1)
    flat = ij[:, 1] * size + ij[:, 0]
    order = np.lexsort((points[:, 2], flat))  # by cell, then height: each cell's last is its top
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    return flat[order][last], order[last]


def color_features(colors: np.ndarray, ids: np.ndarray, cells, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-(instance, class) colour statistics, patch statistics of the nadir raster) of the
    ground-truth points coloured ``colors``."""
    flat, top = cells
    raster = np.zeros((size * size, 3), dtype=np.float64)
    raster[flat] = colors[top]
    inst = instance_color_statistics(torch.from_numpy(colors.astype(np.float64)), torch.from_numpy(ids))
    return inst, patch_statistics(torch.from_numpy(raster.reshape(size, size, 3)), patch_size=PATCH_SIZE)


def distribution_row(features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Distances of each method's features to the ground truth's (``features["ground_truth"]``)."""
    out = {}
    for key, _ in DISTRIBUTION_ROWS:
        if key not in features:
            out[key] = dict.fromkeys(DISTRIBUTION_METRICS, float("nan"))
            continue
        out[key] = color_distribution_distances(features[key], features["ground_truth"])
    return out


def distribution_summary(rows: list[dict[str, dict[str, float]]]) -> dict:
    """Mean and standard deviation over the crops of every method's distances (NaN: no voxels)."""
    return {
        key: {
            **{m: float(np.nanmean([r[key][m] for r in rows])) for m in DISTRIBUTION_METRICS},
            **{f"{m}_std": float(np.nanstd([r[key][m] for r in rows])) for m in DISTRIBUTION_METRICS},
        }
        for key, _ in DISTRIBUTION_ROWS
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("sat2city", args.preset)
    pipe = load_pipeline(args)
    # the settings the table reports: the given ones, else the pipeline's stored defaults
    args.guidance_scale = args.guidance_scale if args.guidance_scale is not None else tuple(pipe.config.default_guidance_scale)
    args.temperature = args.temperature if args.temperature is not None else tuple(pipe.config.default_temperature)
    v = float(pipe.dense_vae.config.voxel_size)
    mpp = float(preset["training"]["data"]["meters_per_pixel"])
    k = max(1, int(round(v / mpp)))
    means = class_means(preset, args.class_mean_scenes)
    data = make_dataset(preset, "validation")
    repainted = make_dataset(preset, "validation", palette_seed_offset=PALETTE_SEED_OFFSET)
    raster_size = int(np.ceil(data.crop_size_px * mpp / v))
    generated, baseline, reference, per_scene = [], [], [], []
    for i in range(args.num_scenes):
        s = data[i]
        gray = np.round(s["height_noisy"][0].numpy() * 255).astype(np.uint8)
        span = float(s["z_max"] - s["z_min"])
        out = pipe(
            gray,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(i),
            meters_per_pixel=mpp,
            height_range=(0.0, span),
            guidance_scale=args.guidance_scale,
            temperature=args.temperature,
        )
        gt_points, gt_colors = s["points"].numpy(), s["colors"].numpy()
        other = repainted[i]
        if not torch.equal(other["points"], s["points"]):
            raise RuntimeError(f"the repainted crop {i} has other points than the ground truth's")
        clean = s["height"][0].numpy()
        row = {"scene": i, "voxels": int(len(out.points))}
        colorings = {"ground_truth": gt_colors, "perfect_sampler": other["colors"].numpy()}
        if len(out.points) == 0:
            row.update(height_pearson=float("nan"), color_l1=float("nan"))
        else:
            fid = height_fidelity(out.points, block_max(clean, k), mpp * k)
            row["height_pearson"] = fid["pearson"]
            _, nearest = cKDTree(out.points).query(gt_points)
            colorings["pipeline"] = np.asarray(out.colors[nearest], dtype=np.float64)
            row["color_l1"] = float(np.abs(colorings["pipeline"] - gt_colors).mean())
            generated.append(out.points)
        noisy_m = gray.astype(np.float64) / 255 * span
        baseline.append(extrude_columns(noisy_m, mpp, v))
        row["height_pearson_extrusion"] = height_fidelity(baseline[-1], block_max(clean, k), mpp * k)["pearson"]
        reference.append(gt_points)
        classes = s["point_classes"].numpy()
        fallback = np.mean(list(means.values()), axis=0)
        base_colors = np.stack([means.get(int(c), fallback) for c in classes])
        row["color_l1_class_mean"] = float(np.abs(base_colors - gt_colors).mean())
        row["color_l1_perfect_sampler"] = float(np.abs(colorings["perfect_sampler"] - gt_colors).mean())
        colorings["class_mean"] = base_colors
        ids = point_instances(data, i, gt_points, classes)
        cells = nadir_cells(gt_points, v, raster_size)
        row["distribution"] = distribution_row({m: color_features(c, ids, cells, raster_size) for m, c in colorings.items()})
        per_scene.append(row)
        print(json.dumps(row))
    metrics = {
        "generated": coverage_mmd(generated, reference, n_points=args.n_points) if generated else {},
        "baseline_extrusion": coverage_mmd(baseline, reference, n_points=args.n_points),
    }
    summary = {
        "height_pearson": float(np.nanmean([r["height_pearson"] for r in per_scene])),
        "height_pearson_extrusion": float(np.mean([r["height_pearson_extrusion"] for r in per_scene])),
        "color_l1": float(np.nanmean([r["color_l1"] for r in per_scene])),
        "color_l1_class_mean": float(np.mean([r["color_l1_class_mean"] for r in per_scene])),
        "empty_scenes": sum(r["voxels"] == 0 for r in per_scene),
    }
    l1 = {
        "pipeline": [r["color_l1"] for r in per_scene],
        "class_mean": [r["color_l1_class_mean"] for r in per_scene],
        "perfect_sampler": [r["color_l1_perfect_sampler"] for r in per_scene],
    }
    distribution = distribution_summary([r["distribution"] for r in per_scene])
    for key, values in l1.items():
        distribution[key].update(color_l1=float(np.nanmean(values)), color_l1_std=float(np.nanstd(values)))
    distribution["settings"] = {
        "palette_seed_offset": PALETTE_SEED_OFFSET,
        "instance_statistics": "colour mean and std per (building instance, class) of the ground-truth points, >= 4 points",
        "patch_statistics": f"{PATCH_SIZE}x{PATCH_SIZE} patches of a {raster_size}x{raster_size} nadir raster at {v:g} m "
        "(topmost ground-truth point per cell, empty cells 0)",
        "distances": "sliced Wasserstein (256 projections, p=2) and unbiased RBF MMD^2 (median bandwidth), "
        "features standardised by the ground truth's",
        "pipeline_colours": "nearest generated voxel at each ground-truth point",
    }
    result = {
        "preset": args.preset,
        "model": str(args.model),
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "scenes": args.num_scenes,
        "per_scene": per_scene,
        "coverage_mmd": metrics,
        "summary": summary,
        "distribution": distribution,
    }
    write_text_atomic(args.out / "sat2city_quality.json", json.dumps(result, indent=2))
    g, b = metrics["generated"], metrics["baseline_extrusion"]

    def fmt(d, key):
        return f"{d[key]:.4f}" if key in d else "-"

    lines = [
        f"Sat2City quality, preset {args.preset}, {args.num_scenes} held-out scenes, {args.steps} DDIM steps/stage, "
        f"guidance scale {args.guidance_scale}, temperature {args.temperature}",
        "",
        "| method | height r | MMD-CD | MMD-EMD | COV-CD | COV-EMD | colour L1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| Sat2City (ours) | {summary['height_pearson']:.3f} | {fmt(g, 'mmd_cd')} | {fmt(g, 'mmd_emd')} | {fmt(g, 'cov_cd')} | "
        f"{fmt(g, 'cov_emd')} | {summary['color_l1']:.4f} |",
        f"| extruded noisy height map | {summary['height_pearson_extrusion']:.3f} | {fmt(b, 'mmd_cd')} | {fmt(b, 'mmd_emd')} | {fmt(b, 'cov_cd')} | {fmt(b, 'cov_emd')} | - |",  # noqa: E501
        f"| per-class mean colour | - | - | - | - | - | {summary['color_l1_class_mean']:.4f} |",
        "",
        f"Distribution fidelity (lower is better; per held-out crop, mean +- std over {args.num_scenes}): sliced "
        "Wasserstein (SWD) and kernel MMD^2 of per-(building instance, class) colour statistics of the ground-truth "
        f"points and of {PATCH_SIZE}x{PATCH_SIZE} patch statistics of their nadir colour raster at the voxel size "
        f"({raster_size}x{raster_size}), against the ground truth's; the pipeline colours each point by its nearest voxel",
        "",
        "| method | colour L1 | instance SWD | instance MMD | patch SWD | patch MMD |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {label} | "
            + " | ".join(
                f"{distribution[key][m]:.3f} +- {distribution[key][m + '_std']:.3f}" for m in ("color_l1", *DISTRIBUTION_METRICS)
            )
            + " |"
            for key, label in DISTRIBUTION_ROWS
        ),
        "",
        f"height correlation >= 0.9 required: {'PASS' if summary['height_pearson'] >= 0.9 else 'FAIL'}",
    ]
    table = "\n".join(lines)
    write_text_atomic(args.out / "sat2city_quality.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
