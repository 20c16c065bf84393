"""GaussianCity quality on held-out procedural layouts: PSNR of the pipeline's renders against the
ground-truth renders (the cities' coloured surface points as small Gaussians, same cameras), next
to a per-class mean colour baseline (the BEV points coloured by their class's mean ground-truth
colour over the training cities). Goal: the pipeline >= 2 dB above the baseline.

PSNR is computed on masked images (pixels the ground truth covers, the training loss's mask).
Held-out cities use seeds 5000+ (training uses 1000+); style codes are seeded.

    python benchmarks/gaussiancity_quality.py --pipeline pipelines/gaussiancity/default --out out/gc_quality
    python benchmarks/gaussiancity_quality.py --device cpu --quick --out /tmp/gc_quality

``--ceilings`` adds what per-pixel mean colours score when they know more than the layout's
classes, to show which gains a layout-conditioned model can reach on these cities: means per
(class, procedural material) over the training cities (a perfect material classifier), and
oracles fitted on the scored view itself: its class means (its sun and district tints) and its
(building instance, class) means (each building's palette colours). Per-pixel painting differs
from the Gaussian-rendered baseline at edges, so these rows come with their own per-pixel
class-mean reference.

``--fit_styles STEPS`` scores GaussianCity with its style codes fitted to the city instead of
sampled (``GaussianCityPipeline.fit_styles``): on each held-out city the codes are fitted on the
even views and every method is scored on the odd ones, next to the per-(building, class) mean
colours of those same even views, the model-free use of what they show.

Distribution rows (every run): the pipeline, the per-class mean and the perfect sampler -- the
held-out city itself painted by the procedural generator from another palette seed
(``procedural_city(..., palette_seed=...)``), rendered with the same cameras -- scored on PSNR
and on the distance of their colour distributions to the ground truth's: per-(instance, class)
colour statistics and 8x8 patch statistics of the masked views, compared by sliced Wasserstein
and kernel MMD (``diffusers_city.metrics.distribution_distances``, standardised by the ground
truth), per held-out city, mean and spread over the cities. No downloaded weights; FID / KID
(Inception) are not run here.

``--decode_chunk_size K`` adds a row for renders whose views were decoded together, K of a city's
views at a time (``GaussianCityPipeline.decode_visible``, the pipeline's ``decode_chunk_size``):
each view rasterizes its own points, coloured with the union of the K views as context.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_city.data import NUM_CLASSES, procedural_city
from diffusers_city.metrics import (
    COLOR_DISTRIBUTION_METRICS,
    color_distribution_distances,
    instance_color_statistics,
    patch_statistics,
    psnr,
)
from diffusers_city.models.gaussiancity.bev import visible_bev_points
from diffusers_city.pipelines.gaussiancity import GaussianCityPipeline
from diffusers_city.render import Cameras, render_gaussians

ROOT = Path(__file__).resolve().parents[1]


def _training_module():
    """The training script's data helpers (one definition of the ground truth for both)."""
    spec = importlib.util.spec_from_file_location("train_gaussiancity", ROOT / "training" / "train_gaussiancity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_gaussiancity"] = module
    spec.loader.exec_module(module)
    return module


def class_means(views, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Mean ground-truth colour per class over the covered pixels of ``views`` (grey when unseen)."""
    sums = torch.zeros(num_classes, 3)
    counts = torch.zeros(num_classes)
    for v in views:
        cls = v.seg[v.mask]
        sums.index_add_(0, cls, v.rgb[v.mask])
        counts.index_add_(0, cls, torch.ones(cls.shape[0]))
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], torch.full((num_classes, 3), 0.5))


def _material_map(seed: int, layout) -> torch.Tensor:
    """The procedural generator's surface material raster of city ``seed`` (default style)."""
    from diffusers_city.data.procedural.layout import build_layout
    from diffusers_city.data.procedural.style import CityStyle

    return torch.from_numpy(
        build_layout(seed, layout.shape, layout.meters_per_pixel, CityStyle.from_kwargs()).material.astype(np.int64)
    )


def _point_materials(pts, materials: torch.Tensor) -> torch.Tensor:
    h, w = materials.shape
    return materials.to(pts.voxels.device)[pts.voxels[:, 1].clamp(0, h - 1), pts.voxels[:, 0].clamp(0, w - 1)]


def _label_means(labels: torch.Tensor, rgb: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(size, 3, device=rgb.device).index_add_(0, labels, rgb)
    counts = torch.zeros(size, device=rgb.device).index_add_(0, labels, torch.ones_like(labels, dtype=rgb.dtype))
    return sums / counts.clamp(min=1)[:, None], counts


class Ceilings:
    """Per-pixel mean-colour predictors that know more than the classes (see ``--ceilings``)."""

    NUM_MATERIALS = 16

    def __init__(self, train, device: torch.device) -> None:
        self.train, self.device = train, device

    def labels(self, layout, materials, camera) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel (class, material) and (instance, class) label images of one view."""
        pts = visible_bev_points(layout, camera, device=self.device)
        mat = pts.classes * self.NUM_MATERIALS + _point_materials(pts, materials)
        inst = pts.instances * NUM_CLASSES + pts.classes
        return (
            self.train.label_image(layout, camera, pts, mat, NUM_CLASSES * self.NUM_MATERIALS)[0],
            self.train.label_image(layout, camera, pts, inst, int(inst.max()) + 1 if len(pts) else 1)[0],
        )

    def fit(self, layouts, materials, views) -> None:
        """(class, material) mean colours over the training views."""
        size = NUM_CLASSES * self.NUM_MATERIALS
        sums, counts = torch.zeros(size, 3, device=self.device), torch.zeros(size, device=self.device)
        for v in views:
            mat, _ = self.labels(layouts[v.city], materials[v.city], v.camera.to(self.device))
            m = v.mask.to(self.device)
            means, n = _label_means(mat[m], v.rgb.to(self.device)[m], size)
            sums += means * n[:, None]
            counts += n
        self.material_means, self.material_counts = sums / counts.clamp(min=1)[:, None], counts

    def predict(self, layout, materials, view, class_means: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images of the four per-pixel predictors for ``view`` (masked pixels only are meaningful)."""
        cam = view.camera.to(self.device)
        gt, m, seg = view.rgb.to(self.device), view.mask.to(self.device), view.seg.to(self.device)
        mat, inst = self.labels(layout, materials, cam)
        known = (self.material_counts[mat] > 0)[..., None]
        out = {
            "class_mean_pixel": class_means[seg],
            "class_material_mean": torch.where(known, self.material_means[mat], class_means[seg]),
        }
        for name, label in (("view_class_mean", seg), ("view_instance_mean", inst)):
            means, _ = _label_means(label[m], gt[m], int(label.max()) + 1)
            out[name] = means[label]
        return out


CEILING_ROWS = (
    ("class_mean_pixel", "per-class mean colour, painted per pixel (reference for the rows below)"),
    ("class_material_mean", "per-(class, material) mean: a perfect material classifier"),
    ("view_class_mean", "oracle: the scored view's own class means (its sun, its district tints)"),
    ("view_instance_mean", "oracle: the scored view's (instance, class) means (each building's palette)"),
)


def _masked(x: torch.Tensor, view) -> torch.Tensor:
    """``[1, 3, H, W]`` image ``x [H, W, 3]`` with the pixels outside ``view``'s mask zeroed."""
    return (x * view.mask.to(x.device)[..., None].float()).permute(2, 0, 1)[None]


def masked_psnr(pred: torch.Tensor, view) -> float:
    return float(psnr(_masked(pred, view), _masked(view.rgb.to(pred.device), view)))


def _visible(pipe, layout, camera, device):
    return visible_bev_points(
        layout, camera.to(device), max_distance=float(pipe.scene_encoder.config.max_view_distance), device=device
    )


def paint_points(pipe, layout, view, colours: torch.Tensor, label_of, device) -> torch.Tensor:
    """Render of ``view`` with its visible BEV points coloured ``colours[label_of(points)]`` (no model)."""
    pts = _visible(pipe, layout, view.camera, device)
    g = pipe.background_decoder.gaussians(
        pts.positions, pts.strides, pts.classes, colours[label_of(pts)], layout.meters_per_pixel
    )
    return render_gaussians(g, view.camera.to(device)).rgb[0]


def _instance_class(pts) -> torch.Tensor:
    return pts.instances * NUM_CLASSES + pts.classes


def observed_means(train, pipe, layout, seen, class_means: torch.Tensor, device) -> torch.Tensor:
    """Mean ground-truth colour per (instance, class) over the covered pixels of the ``seen`` views;
    the class mean where they never show that pair. Indexed by ``_instance_class``."""
    size = (layout.num_instances + 1) * NUM_CLASSES
    sums, counts = torch.zeros(size, 3, device=device), torch.zeros(size, device=device)
    for v in seen:
        pts = _visible(pipe, layout, v.camera, device)
        label, _ = train.label_image(layout, v.camera, pts, _instance_class(pts), size)
        m = v.mask.to(device)
        means, n = _label_means(label[m], v.rgb.to(device)[m], size)
        sums += means * n[:, None]
        counts += n
    fallback = class_means[torch.arange(size, device=device) % NUM_CLASSES]
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], fallback)


FIT_ROWS = (
    ("sampled", "GaussianCity, sampled style codes"),
    ("fitted", "GaussianCity, style codes fitted on the city's other views"),
    ("class_mean", "per-class mean colour (training cities)"),
    ("observed_mean", "per-(building, class) mean colour of the city's other views"),
)


def fitted_style_rows(
    pipe, train, layouts, views, class_means: torch.Tensor, steps: int, device
) -> tuple[list[list[float]], float]:
    """PSNR of each scored view (odd views of every held-out city) for the ``FIT_ROWS`` methods,
    and the seconds spent fitting codes; the even views are the ones the codes and the observed
    means are fitted on."""
    rows, seconds = [], 0.0
    for c, layout in enumerate(layouts):
        city = [v for v in views if v.city == c]
        seen, scored = city[0::2], city[1::2]
        sampled = pipe.sample_styles(layout, torch.Generator().manual_seed(c))
        start = time.perf_counter()
        fitted = pipe.fit_styles(
            layout,
            Cameras.cat([v.camera for v in seen]),
            torch.stack([v.rgb for v in seen]),
            torch.stack([v.mask for v in seen]),
            styles=sampled,
            num_steps=steps,
        )
        seconds += time.perf_counter() - start
        with torch.no_grad():
            observed = observed_means(train, pipe, layout, seen, class_means, device)
            for v in scored:
                rows.append(
                    [
                        masked_psnr(train.render_view(pipe, layout, v.camera, sampled, device), v),
                        masked_psnr(train.render_view(pipe, layout, v.camera, fitted, device), v),
                        masked_psnr(paint_points(pipe, layout, v, class_means, lambda p: p.classes, device), v),
                        masked_psnr(paint_points(pipe, layout, v, observed, _instance_class, device), v),
                    ]
                )
    return rows, seconds


# palette seed of the perfect sampler: the held-out city's seed plus this
PALETTE_SEED_OFFSET = 1_000_003

DISTRIBUTION_ROWS = (
    ("pipeline", "GaussianCity pipeline"),
    ("class_mean", "per-class mean colour"),
    ("perfect_sampler", "perfect sampler (the city painted from another palette seed)"),
)
DISTRIBUTION_METRICS = COLOR_DISTRIBUTION_METRICS


def perfect_sampler_renders(train, layouts, views, first_seed: int, city_size_m: float, device) -> list[torch.Tensor]:
    """Every view rendered from its city painted from another palette seed (same geometry,
    classes and cameras): what another sample of the data's own generator scores."""
    out = []
    for c in range(len(layouts)):
        scene = procedural_city(
            first_seed + c,
            size_m=city_size_m,
            points_per_m2=4.0,
            with_image=False,
            palette_seed=first_seed + c + PALETTE_SEED_OFFSET,
        )
        gt = train._point_gaussians(scene, device)
        out += [render_gaussians(gt, v.camera.to(device)).rgb[0] for v in views if v.city == c]
    return out


def view_features(pipe, train, layout, view, images: list[torch.Tensor], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(per-(instance, class) colour statistics, 8x8 patch statistics) of each image of ``view``
    (covered pixels only; the instance labels are the layout's, shared by every image)."""
    pts = _visible(pipe, layout, view.camera, device)
    size = (layout.num_instances + 1) * NUM_CLASSES
    label, _ = train.label_image(layout, view.camera.to(device), pts, _instance_class(pts), size)
    ids = torch.where(view.mask.to(device), label + 1, 0).cpu()
    return [
        (instance_color_statistics(x.cpu(), ids), patch_statistics(_masked(x, view)[0].permute(1, 2, 0).cpu(), patch_size=8))
        for x in images
    ]


def distribution_rows(features: list[list[tuple[torch.Tensor, torch.Tensor]]], cities: list[int]) -> dict:
    """Per-city distances of each method's features (``features[view][1 + method]``) to the
    ground truth's (``features[view][0]``), their mean and standard deviation over the cities."""
    per_city = {k: {m: [] for m in DISTRIBUTION_METRICS} for k, _ in DISTRIBUTION_ROWS}
    for c in sorted(set(cities)):
        idx = [i for i, v in enumerate(cities) if v == c]

        def pooled(j):  # the city's views' (instance, patch) features of method j (0: ground truth)
            return tuple(torch.cat([features[i][j][k] for i in idx]) for k in (0, 1))

        reference = pooled(0)
        for j, (key, _) in enumerate(DISTRIBUTION_ROWS):
            for name, value in color_distribution_distances(pooled(1 + j), reference).items():
                per_city[key][name].append(value)
    return {
        key: {
            **{m: float(np.mean(v)) for m, v in metrics.items()},
            **{f"{m}_std": float(np.std(v)) for m, v in metrics.items()},
            "per_city": metrics,
        }
        for key, metrics in per_city.items()
    }


def chunked_psnr(pipe, layouts, views, chunk: int, device) -> list[float]:
    """PSNR of every view rendered with each city's views decoded together, ``chunk`` at a time
    (``GaussianCityPipeline.decode_visible``), the sampled style codes of the standard rows."""
    scores = []
    for c, layout in enumerate(layouts):
        city = [v for v in views if v.city == c]
        styles = pipe.sample_styles(layout, torch.Generator().manual_seed(c)).to(device)
        for start in range(0, len(city), chunk):
            part = city[start : start + chunk]
            decoded = pipe.decode_visible(layout, Cameras.cat([v.camera for v in part]), styles, device)
            scores += [masked_psnr(render_gaussians(g, v.camera.to(device)).rgb[0], v) for g, v in zip(decoded, part)]
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pipeline", default=None, help="trained pipeline folder or repo id (default: shipped default)")
    parser.add_argument("--preset", default=None, help="evaluate an untrained preset instead (smoke tests)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--num_cities", type=int, default=4, help="held-out cities")
    parser.add_argument("--train_cities", type=int, default=4, help="training cities for the class-mean baseline")
    parser.add_argument("--views_per_city", type=int, default=8)
    parser.add_argument("--resolution", default="256x192")
    parser.add_argument("--city_size_m", type=float, default=192.0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny preset, tiny cities and frames")
    parser.add_argument("--ceilings", action="store_true", help="also score mean-colour predictors that know more")
    parser.add_argument(
        "--fit_styles",
        type=int,
        default=0,
        metavar="STEPS",
        help="also score style codes fitted in STEPS steps on each held-out city's other views",
    )
    parser.add_argument(
        "--decode_chunk_size",
        type=int,
        default=0,
        metavar="K",
        help="also score each city's views decoded together, K at a time (decode_visible)",
    )
    args = parser.parse_args(argv)
    if args.decode_chunk_size < 0:
        raise ValueError(f"--decode_chunk_size must be >= 0 (0: no chunked row), got {args.decode_chunk_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu --quick)")
    if args.quick:
        args.preset = args.preset or "tiny"
        args.num_cities, args.train_cities, args.views_per_city = 1, 1, 2
        args.resolution, args.city_size_m = "48x36", 64.0
    if args.preset:
        pipe = GaussianCityPipeline.from_preset(args.preset)
    else:
        from diffusers_city.presets import bundled_path

        source = args.pipeline or bundled_path("gaussiancity", "default")
        pipe = GaussianCityPipeline.from_pretrained(source)
    pipe = pipe.to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    train = _training_module()
    w, h = (int(v) for v in args.resolution.split("x"))

    def views_of(first_seed: int, n: int):
        ns = argparse.Namespace(
            num_cities=n, city_size_m=args.city_size_m, points_per_m2=4.0, views_per_city=args.views_per_city, width=w, height=h
        )
        layouts, views, _ = train.procedural_views(ns, device, first_seed=first_seed)
        return layouts, views, [_material_map(first_seed + i, lay) for i, lay in enumerate(layouts)]

    train_layouts, train_views, train_materials = views_of(1000, args.train_cities)
    means = class_means(train_views).to(device)
    layouts, views, materials = views_of(5000, args.num_cities)
    ceilings = None
    if args.ceilings:
        ceilings = Ceilings(train, device)
        ceilings.fit(train_layouts, train_materials, train_views)
    rows, ceiling_rows, features, perfect_psnr = [], [], [], []
    with torch.no_grad():
        perfect = perfect_sampler_renders(train, layouts, views, 5000, args.city_size_m, device)
        for view, other in zip(views, perfect):
            layout = layouts[view.city]
            styles = pipe.sample_styles(layout, torch.Generator().manual_seed(view.city))
            pred = train.render_view(pipe, layout, view.camera, styles, device)
            base = paint_points(pipe, layout, view, means, lambda p: p.classes, device)
            rows.append((masked_psnr(pred, view), masked_psnr(base, view)))
            perfect_psnr.append(masked_psnr(other, view))
            features.append(view_features(pipe, train, layout, view, [view.rgb.to(device), pred, base, other], device))
            if ceilings is not None:
                images = ceilings.predict(layout, materials[view.city], view, means)
                ceiling_rows.append([masked_psnr(images[k], view) for k, _ in CEILING_ROWS])
        chunk_scores = chunked_psnr(pipe, layouts, views, args.decode_chunk_size, device) if args.decode_chunk_size else []
    fit_rows, fit_seconds = (
        fitted_style_rows(pipe, train, layouts, views, means, args.fit_styles, device) if args.fit_styles else ([], 0.0)
    )
    arr = np.array(rows)
    summary = {
        "pipeline": args.preset or str(args.pipeline or "shipped default"),
        "views": len(rows),
        "psnr_pipeline": float(arr[:, 0].mean()),
        "psnr_class_mean_baseline": float(arr[:, 1].mean()),
        "gain_db": float(arr[:, 0].mean() - arr[:, 1].mean()),
        "goal_gain>=2dB": bool(arr[:, 0].mean() - arr[:, 1].mean() >= 2.0),
        "psnr_perfect_sampler": float(np.mean(perfect_psnr)),
        "per_view": rows,
        "per_view_perfect_sampler": perfect_psnr,
        "distribution": distribution_rows(features, [v.city for v in views]),
    }
    if chunk_scores:
        summary["decode_chunk"] = {"size": args.decode_chunk_size, "psnr": float(np.mean(chunk_scores)), "per_view": chunk_scores}
    if fit_rows:
        summary["fitted_styles"] = {k: float(v) for (k, _), v in zip(FIT_ROWS, np.array(fit_rows).mean(0))}
        summary["fitted_styles"].update(steps=args.fit_styles, fit_seconds_per_city=fit_seconds / len(layouts))
        summary["fitted_styles"]["per_view"] = fit_rows
    if ceiling_rows:
        summary["ceilings"] = {k: float(v) for (k, _), v in zip(CEILING_ROWS, np.array(ceiling_rows).mean(0))}
    tmp = args.out / ".gaussiancity_quality.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "gaussiancity_quality.json")
    table = "\n".join(
        [
            f"GaussianCity quality on {args.num_cities} held-out layouts, {len(rows)} views at {w}x{h} ({summary['pipeline']})",
            "",
            "| method | PSNR (dB, masked) |",
            "| --- | --- |",
            f"| GaussianCity pipeline | {summary['psnr_pipeline']:.2f} |",
            f"| per-class mean colour | {summary['psnr_class_mean_baseline']:.2f} |",
            f"| gain | {summary['gain_db']:+.2f} (goal >= +2) |",
        ]
    )
    if chunk_scores:
        table += (
            f"\n| GaussianCity, a city's views decoded together, {args.decode_chunk_size} at a time "
            f"| {summary['decode_chunk']['psnr']:.2f} |"
        )
    if ceiling_rows:
        ref = summary["ceilings"]["class_mean_pixel"]
        table += "\n\n| per-pixel mean colour | PSNR (dB, masked) | gain over the per-pixel class mean |\n| --- | --- | --- |\n"
        table += "\n".join(
            f"| {label} | {summary['ceilings'][k]:.2f} | {summary['ceilings'][k] - ref:+.2f} |" for k, label in CEILING_ROWS
        )
    if fit_rows:
        fit = summary["fitted_styles"]
        table += (
            f"\n\nStyle codes fitted ({args.fit_styles} steps, {fit['fit_seconds_per_city']:.1f} s per city on {device}) "
            f"on the even views of each held-out city, "
            f"scored on its {len(fit_rows)} odd views:\n\n| method | PSNR (dB, masked) | gain over the per-class mean |\n| --- | --- | --- |\n"  # noqa: E501
        )
        table += "\n".join(f"| {label} | {fit[k]:.2f} | {fit[k] - fit['class_mean']:+.2f} |" for k, label in FIT_ROWS)
    dist = summary["distribution"]
    psnrs = {"pipeline": summary["psnr_pipeline"], "class_mean": summary["psnr_class_mean_baseline"]}
    psnrs["perfect_sampler"] = summary["psnr_perfect_sampler"]
    table += (
        f"\n\nDistribution fidelity (lower is better; per held-out city, mean +- std over {len(layouts)}): "
        "sliced Wasserstein (SWD) and kernel MMD^2 of per-(instance, class) colour statistics and of 8x8 patch "
        "statistics, against the ground truth's\n\n"
        "| method | PSNR (dB, masked) | instance SWD | instance MMD | patch SWD | patch MMD |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    table += "\n".join(
        f"| {label} | {psnrs[k]:.2f} | "
        + " | ".join(f"{dist[k][m]:.3f} +- {dist[k][m + '_std']:.3f}" for m in DISTRIBUTION_METRICS)
        + " |"
        for k, label in DISTRIBUTION_ROWS
    )
    (args.out / "gaussiancity_quality.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
