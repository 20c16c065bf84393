"""GaussianCity quality on held-out procedural layouts: PSNR of the pipeline's renders against the
ground-truth renders (the cities' coloured surface points as small Gaussians, same cameras), next
to a per-class mean colour baseline (the BEV points coloured by their class's mean ground-truth
colour over the training cities). Goal: the pipeline >= 2 dB above the baseline.

PSNR is computed on masked images (pixels the ground truth covers, the training loss's mask).
Held-out cities use seeds 5000+ (training uses 1000+); style codes are seeded.

    python benchmarks/gaussiancity_quality.py --pipeline pipelines/gaussiancity/default --out out/gc_quality
    python benchmarks/gaussiancity_quality.py --device cpu --quick --out /tmp/gc_quality
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from diffusers_city.bev import visible_bev_points
from diffusers_city.data import NUM_CLASSES
from diffusers_city.metrics import psnr
from diffusers_city.pipelines.gaussiancity import GaussianCityPipeline
from diffusers_city.render import render_gaussians

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
    args = parser.parse_args(argv)
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
        ns = argparse.Namespace(num_cities=n, city_size_m=args.city_size_m, points_per_m2=4.0,
                                views_per_city=args.views_per_city, width=w, height=h)
        layouts, views, _ = train.procedural_views(ns, device, first_seed=first_seed)
        return layouts, views

    _, train_views = views_of(1000, args.train_cities)
    means = class_means(train_views).to(device)
    layouts, views = views_of(5000, args.num_cities)
    rows = []
    with torch.no_grad():
        for view in views:
            layout = layouts[view.city]
            cam = view.camera.to(device)
            styles = pipe.sample_styles(layout, torch.Generator().manual_seed(view.city))
            pred = train.render_view(pipe, layout, view.camera, styles, device)
            pts = visible_bev_points(layout, cam, max_distance=float(pipe.scene_encoder.config.max_view_distance), device=device)
            g = pipe.background_decoder.gaussians(pts.positions, pts.strides, pts.classes, means[pts.classes], layout.meters_per_pixel)
            base = render_gaussians(g, cam).rgb[0]
            gt, m = view.rgb.to(device), view.mask.to(device)[..., None].float()
            to_img = lambda x: (x * m).permute(2, 0, 1)[None]  # noqa: E731
            rows.append((float(psnr(to_img(pred), to_img(gt))), float(psnr(to_img(base), to_img(gt)))))
    arr = np.array(rows)
    summary = {
        "pipeline": args.preset or str(args.pipeline or "shipped default"),
        "views": len(rows),
        "psnr_pipeline": float(arr[:, 0].mean()),
        "psnr_class_mean_baseline": float(arr[:, 1].mean()),
        "gain_db": float(arr[:, 0].mean() - arr[:, 1].mean()),
        "goal_gain>=2dB": bool(arr[:, 0].mean() - arr[:, 1].mean() >= 2.0),
        "per_view": rows,
    }
    tmp = args.out / ".gaussiancity_quality.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "gaussiancity_quality.json")
    table = "\n".join([
        f"GaussianCity quality on {args.num_cities} held-out layouts, {len(rows)} views at {w}x{h} ({summary['pipeline']})",
        "",
        "| method | PSNR (dB, masked) |",
        "| --- | --- |",
        f"| GaussianCity pipeline | {summary['psnr_pipeline']:.2f} |",
        f"| per-class mean colour | {summary['psnr_class_mean_baseline']:.2f} |",
        f"| gain | {summary['gain_db']:+.2f} (goal >= +2) |",
    ])
    (args.out / "gaussiancity_quality.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
