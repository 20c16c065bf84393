"""EarthCrafter quality on held-out procedural tiles, each number beside a stated baseline.

Held-out tiles: the preset's validation split (``training.data.validation_base_seed``), indices
``0 .. num_tiles - 1``; class statistics of the baselines come from training tiles. Rows:

- StructVAE reconstruction (encode -> posterior mean -> decode): voxel IoU and accuracy over the
  tile's L^3 grid; baseline: the semantic map extruded with per-class mean heights (surface voxels
  of that height field). Goal IoU >= 0.9.
- TexVAE reconstruction on the ground-truth structure: PSNR / SSIM of its 2DGS splats rendered
  from the tile's held-out views (whole frames, black background); baseline: the same splats
  with per-class mean colours. Goal >= +3 dB.
- Semantic condition followed: building columns of the generated structure (column top more
  than ``--building-threshold-m`` above the tile's ground, its 10th-percentile column top)
  against the map's building cells (IoU pooled over tiles, leaving out the cells the map marks
  as vegetation or construction: they rise too, and a column's height cannot tell a tree from a
  roof), and the fraction of road / water
  cells left flat. Baselines: the extrusion (trivially high: it is the map), the unconditional
  sample as the floor, the ground-truth structure as the measurement's ceiling. Goal IoU >= 0.7.
- Image condition followed: PSNR of the generated tile rendered straight down (a far nadir camera
  framing the tile, as the orthophoto covers it) against the input orthophoto; baseline: the
  ground-truth structure as voxel-sized surfels in per-class mean colours rendered the same way
  (and in its own colours: the ceiling of this rendering).
- Unconditional samples: COV / MMD (CD, EMD) against held-out tiles (Sat2City's protocol,
  ``metrics.coverage_mmd``); reference: tiles of another seed range (a perfect sampler);
  naive baseline: a flat ground plane.
- Guidance interval: the semantic-IoU and image-PSNR rows with guidance at every step against
  ``--candidate-interval``, on other validation tiles (indices ``num_tiles ..``).

The reported rows use the pipeline's default ``guidance_scale`` and ``guidance_interval``.

    PYTHONPATH=src python benchmarks/earthcrafter_quality.py --pretrained runs/ec/pipeline --preset small --out bench/ecq
    PYTHONPATH=src python benchmarks/earthcrafter_quality.py --vae-dirs runs/ec/struct_vae runs/ec/tex_vae \\
        --preset small --out bench/ecq_vae
    PYTHONPATH=src python benchmarks/earthcrafter_quality.py --device cpu --quick --out /tmp/ecq
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from earthcrafter_bench import (  # noqa: E402
    DTYPES,
    add_model_arguments,
    check_model_arguments,
    check_tiles_fit,
    load_pipeline,
    tile_preset,
)
from earthcrafter_common import make_dataset  # noqa: E402

from diffusers_city.data.classes import CONSTRUCTION, FACADE, NUM_CLASSES, ROAD, ROOF, VEGETATION, WATER  # noqa: E402
from diffusers_city.export import write_text_atomic  # noqa: E402
from diffusers_city.metrics import coverage_mmd, psnr, ssim, voxel_iou  # noqa: E402
from diffusers_city.models.earthcrafter import EarthCrafterStructVAE, EarthCrafterTexVAE  # noqa: E402
from diffusers_city.render import Cameras, Gaussians, render_gaussians  # noqa: E402

ROWS = ("struct_vae", "tex_vae", "semantic", "image", "unconditional", "guidance_interval")
VAE_ROWS = ("struct_vae", "tex_vae")
PERFECT_SAMPLER_SEED_OFFSET = 7_000_001  # base seed of the "other seed range" tiles, added to the validation seed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p, "small", "fp32")
    p.add_argument(
        "--vae-dirs",
        type=Path,
        nargs="+",
        default=None,
        help="VAE folders for the reconstruction rows (a struct_vae / tex_vae model folder or a training output "
        "folder holding one); default: the --pretrained pipeline's",
    )
    p.add_argument("--rows", nargs="+", choices=ROWS, default=None, help="rows to run (default: every row the models allow)")
    p.add_argument("--num-tiles", type=int, default=16, help="held-out tiles of the reported rows")
    p.add_argument("--interval-tiles", type=int, default=8, help="other held-out tiles for the guidance-interval rows")
    p.add_argument("--num-unconditional", type=int, default=8, help="unconditional samples and held-out tiles of COV/MMD")
    p.add_argument("--class-mean-tiles", type=int, default=16, help="training tiles for the per-class means")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument(
        "--candidate-interval", type=float, nargs=2, default=(0.5, 1.0), metavar=("LO", "HI"), help="compared with (0, 1)"
    )
    p.add_argument("--building-threshold-m", type=float, default=3.0, help="a building column rises this far above ground")
    p.add_argument("--n-points", type=int, default=2048, help="points per shape for COV/MMD (EMD exact up to 2048)")
    p.add_argument("--quick", action="store_true", help="smoke mode: untrained tiny preset, 2 tiles, 2 steps, CPU")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.quick:
        if args.pretrained is not None or args.vae_dirs is not None:
            raise ValueError("--quick runs the untrained tiny preset: leave out --pretrained and --vae-dirs")
        args.preset = args.preset or "tiny"
        args.num_tiles = args.interval_tiles = args.num_unconditional = args.class_mean_tiles = args.steps = 2
        args.n_points = 256
    check_model_arguments(args, "small")
    for name in ("num_tiles", "interval_tiles", "num_unconditional", "class_mean_tiles", "steps", "n_points"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    lo, hi = args.candidate_interval
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"--candidate-interval must satisfy 0 <= LO <= HI <= 1, got {lo:g} {hi:g}")
    if args.quick or args.pretrained is not None:
        available = ROWS
    elif args.vae_dirs:
        classes = {"struct_vae": EarthCrafterStructVAE, "tex_vae": EarthCrafterTexVAE}
        available = tuple(r for r in VAE_ROWS if args.rows or find_vae(args.vae_dirs, classes[r]) is not None)
        if not available:
            raise FileNotFoundError(f"--vae-dirs {[str(d) for d in args.vae_dirs]}: no StructVAE or TexVAE folder (config.json)")
    else:
        raise ValueError("give --pretrained (every row) or --vae-dirs (the VAE rows), or --quick")
    args.rows = list(args.rows or available)
    missing = [r for r in args.rows if r not in available]
    if missing:
        raise ValueError(f"rows {missing} need a pipeline (--pretrained)")
    return args


# -- models ------------------------------------------------------------------------------------
def find_vae(dirs: list[Path], cls) -> Path | None:
    """The first of ``dirs`` (or its ``struct_vae`` / ``tex_vae`` subfolder) holding a ``cls`` config."""
    sub = "struct_vae" if cls is EarthCrafterStructVAE else "tex_vae"
    for d in dirs:
        for folder in (d, d / sub):
            config = folder / "config.json"
            if config.is_file() and json.loads(config.read_text()).get("_class_name") == cls.__name__:
                return folder
    return None


def load_vaes(args, pipe, L: int) -> dict:
    """The StructVAE and TexVAE of the reconstruction rows: from ``--vae-dirs``, else the pipeline's."""
    vaes = {}
    for row, cls, attr in (("struct_vae", EarthCrafterStructVAE, "struct_vae"), ("tex_vae", EarthCrafterTexVAE, "tex_vae")):
        if row not in args.rows:
            continue
        folder = None if args.vae_dirs is None else find_vae(args.vae_dirs, cls)
        if folder is not None:
            vaes[row] = cls.from_pretrained(folder, torch_dtype=DTYPES[args.dtype]).to(args.device).eval()
        elif pipe is not None:
            vaes[row] = getattr(pipe, attr)
        else:
            raise FileNotFoundError(f"no {cls.__name__} config.json in --vae-dirs {[str(d) for d in args.vae_dirs]}")
        if vaes[row].config.resolution != L:
            raise ValueError(
                f"{cls.__name__} of resolution {vaes[row].config.resolution}, preset {args.preset}'s tiles are {L}^3"
            )
    return vaes


# -- tile geometry -----------------------------------------------------------------------------
def column_tops(coords: np.ndarray, L: int) -> np.ndarray:
    """``[L, L]`` top voxel layer of each column, indexed ``[y, x]`` (-1 where the column is empty)."""
    top = np.full(L * L, -1, np.int64)
    if len(coords):
        np.maximum.at(top, coords[:, 1] * L + coords[:, 0], coords[:, 2])
    return top.reshape(L, L)


def heightfield_voxels(top: np.ndarray) -> np.ndarray:
    """Surface voxels ``[N, 3]`` (x, y, z) of a height field of top layers ``[L, L]`` (``[y, x]``):
    each column from one above its lowest 4-neighbour (itself at the tile edge) up to its top."""
    pad = np.pad(top, 1, mode="edge")
    low = np.minimum.reduce([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
    start = np.minimum(top, low + 1).clip(0)
    counts = (top - start + 1).clip(0).ravel()
    cell = np.repeat(np.arange(top.size), counts)
    z = start.ravel()[cell] + np.arange(cell.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([cell % top.shape[1], cell // top.shape[1], z], 1)


def voxel_classes(coords: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """Class of each voxel: its column's semantic class at the column top, ``FACADE`` below it (walls)."""
    top = column_tops(coords, semantic.shape[0])
    cls = semantic[coords[:, 1], coords[:, 0]].astype(np.int64)
    return np.where(coords[:, 2] < top[coords[:, 1], coords[:, 0]], FACADE, cls)


def building_columns(coords: np.ndarray, L: int, threshold_voxels: float) -> np.ndarray:
    """``[L, L]`` bool: columns whose top rises more than ``threshold_voxels`` above the tile's
    ground (its 10th-percentile column top)."""
    top = column_tops(coords, L)
    if not (top >= 0).any():
        return np.zeros((L, L), bool)
    ground = np.percentile(top[top >= 0], 10)
    return top - ground > threshold_voxels


def nadir_camera(L: int, voxel_size: float, size: int) -> Cameras:
    """A camera far above the tile centre looking straight down, framing the ``L * voxel_size``
    square of the tile exactly on ``size x size`` pixels (nearly orthographic: 50 tiles up)."""
    extent = L * voxel_size
    dist = 50.0 * extent
    centre = [extent / 2, extent / 2, 0.0]
    return Cameras.look_at([centre[0], centre[1], dist], centre, width=size, height=size, focal=size * dist / extent)


def render_nadir(gaussians: Gaussians, L: int, voxel_size: float, size: int) -> torch.Tensor:
    """``[size, size, 3]`` straight-down render with rows along +y, like the orthophoto (the
    look-at camera's image rows run along -y)."""
    g = gaussians_float(gaussians)
    return render_gaussians(g, nadir_camera(L, voxel_size, size).to(g.means.device), mode="2dgs").rgb[0].flip(0).cpu()


def gaussians_float(g: Gaussians) -> Gaussians:
    return Gaussians(
        means=g.means.float(),
        quats=g.quats.float(),
        scales=g.scales.float(),
        opacities=g.opacities.float(),
        colors=g.colors.float(),
    )


def surfels(voxels, colors: torch.Tensor) -> Gaussians:
    """One opaque surfel per ground-truth voxel (std 0.7 voxel: a closed surface), on its normal
    (``feats[:, :3]``), coloured ``colors``."""
    return Gaussians.from_points(
        voxels.world_positions().float(), colors.float(), scale=0.7 * voxels.voxel_size, normals=voxels.feats[:, :3].float()
    )


# -- class statistics ----------------------------------------------------------------------------
def class_statistics(preset: dict, n: int) -> dict:
    """Per-class mean column-top layer and mean voxel colour (classes of ``voxel_classes``) over
    ``n`` training tiles; classes never seen take the mean over all."""
    ds = make_dataset(preset, "train")
    tops = [[] for _ in range(NUM_CLASSES)]
    colors = [[] for _ in range(NUM_CLASSES)]
    for i in range(n):
        s = ds[i]
        coords = s["voxels"].coords[:, 1:].long().numpy()
        semantic = s["semantic"].numpy()
        top = column_tops(coords, semantic.shape[0])
        for c in range(NUM_CLASSES):
            tops[c].extend(top[(semantic == c) & (top >= 0)].tolist())
        cls = voxel_classes(coords, semantic)
        rgb = s["voxels"].feats[:, 3:6].float().numpy()
        for c in range(NUM_CLASSES):
            colors[c].extend(rgb[cls == c].tolist())
    all_tops = [t for ts in tops for t in ts]
    all_rgb = np.array([c for cs in colors for c in cs]).reshape(-1, 3)
    return {
        "top": np.array([np.mean(t) if t else np.mean(all_tops) for t in tops]),
        "color": np.stack([np.mean(c, 0) if c else all_rgb.mean(0) for c in colors]).astype(np.float32),
    }


def extrusion(semantic: np.ndarray, stats: dict, L: int) -> np.ndarray:
    """Baseline structure: the map's columns at their class's mean top layer, as surface voxels."""
    return heightfield_voxels(np.rint(stats["top"][semantic]).astype(np.int64).clip(0, L - 1))


def class_mean_colors(voxels, semantic: np.ndarray, stats: dict) -> torch.Tensor:
    return torch.from_numpy(stats["color"][voxel_classes(voxels.coords[:, 1:].long().cpu().numpy(), semantic)])


# -- rows --------------------------------------------------------------------------------------
def row(measurement: str, metric: str, ours: float, baselines: dict[str, float], goal: str = "-", met: bool | None = None):
    return {"measurement": measurement, "metric": metric, "ours": float(ours), "baselines": baselines, "goal": goal, "met": met}


@torch.no_grad()
def struct_vae_rows(vae, tiles, stats, L) -> list[dict]:
    ours, base = [], []
    for s in tiles:
        voxels = s["voxels"].to(vae.device)
        gt = voxels.coords[:, 1:].long().cpu().numpy()
        recon = vae.decode(vae.encode(voxels).latent_dist.mode()).sample
        ours.append(voxel_iou(recon.coords[:, 1:].long().cpu().numpy(), gt, L))
        base.append(voxel_iou(extrusion(s["semantic"].numpy(), stats, L), gt, L))
    name = "extruded map, per-class mean heights"
    iou = float(np.mean([r["iou"] for r in ours]))
    return [
        row("StructVAE reconstruction", "voxel IoU", iou, {name: np.mean([r["iou"] for r in base])}, ">= 0.9", iou >= 0.9),
        row(
            "StructVAE reconstruction",
            "voxel accuracy",
            np.mean([r["accuracy"] for r in ours]),
            {name: np.mean([r["accuracy"] for r in base])},
        ),
    ]


@torch.no_grad()
def tex_vae_rows(vae, tiles, stats) -> list[dict]:
    scores = {"ours": [], "base": []}
    for s in tiles:
        voxels = s["voxels"].to(vae.device)
        feats = voxels.replace(s["features"].to(vae.device, vae.dtype))
        g = gaussians_float(vae.to_gaussians(vae.decode(vae.encode(feats).latent_dist.mode()).sample))
        mean = class_mean_colors(voxels, s["semantic"].numpy(), stats).to(g.means.device)
        base = Gaussians(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=mean)
        cams = s["cameras"].to(g.means.device)
        target = s["views"].float()
        for key, gs in (("ours", g), ("base", base)):
            pred = render_gaussians(gs, cams, mode="2dgs").rgb.clamp(0, 1).cpu()
            scores[key].append((psnr(pred, target, reduction="none"), ssim(pred, target, reduction="none")))
    out = {k: [float(torch.cat([v[i] for v in vs]).mean()) for i in (0, 1)] for k, vs in scores.items()}
    name = "same splats, per-class mean colours"
    gain = out["ours"][0] - out["base"][0]
    return [
        row("TexVAE reconstruction", "PSNR (dB)", out["ours"][0], {name: out["base"][0]}, ">= +3 dB over baseline", gain >= 3),
        row("TexVAE reconstruction", "SSIM", out["ours"][1], {name: out["base"][1]}),
    ]


class Sampler:
    """Pipeline calls of the generation rows, seeded by tile index, with their wall time."""

    def __init__(self, pipe, steps: int, origin: tuple[float, float, float]):
        self.pipe, self.steps, self.origin = pipe, steps, origin
        self.seconds: list[float] = []

    def __call__(self, seed: int, **kwargs):
        t = time.perf_counter()
        out = self.pipe(
            num_inference_steps=self.steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="gaussians",
            origin=self.origin,
            **kwargs,
        )
        self.seconds.append(time.perf_counter() - t)
        return out


def follow_semantic(structures: list[np.ndarray], maps: list[np.ndarray], L: int, threshold: float) -> dict[str, float]:
    """Building-column IoU pooled over tiles (on the cells not marked vegetation or construction,
    which rise without being buildings) and the fraction of road / water cells left flat."""
    inter = union = flat = flat_total = 0
    for coords, semantic in zip(structures, maps):
        built = building_columns(coords, L, threshold)
        judged = ~np.isin(semantic, (VEGETATION, CONSTRUCTION))
        r = voxel_iou(np.argwhere(built & judged), np.argwhere(semantic == ROOF), L)
        inter, union = inter + r["intersection"], union + r["union"]
        open_cells = np.isin(semantic, (ROAD, WATER))
        flat, flat_total = flat + int((open_cells & ~built).sum()), flat_total + int(open_cells.sum())
    return {"iou": inter / union if union else 1.0, "flat": flat / flat_total if flat_total else 1.0}


def coords_of(out) -> np.ndarray:
    return out.voxels.coords[:, 1:].long().numpy()


def semantic_scores(sample, tiles, L, threshold, **kwargs) -> dict[str, float]:
    maps = [s["semantic"].numpy() for s in tiles]
    gen = [coords_of(sample(s["index"], semantic_map=m, **kwargs)) for s, m in zip(tiles, maps)]
    return follow_semantic(gen, maps, L, threshold)


def image_scores(sample, tiles, L, v, **kwargs) -> float:
    values = []
    for s in tiles:
        out = sample(s["index"], image=s["image"], **kwargs)
        target = s["image"].permute(1, 2, 0).float()
        values.append(psnr(render_nadir(out.gaussians.to(sample.pipe.device), L, v, target.shape[0]).clamp(0, 1), target))
    return float(np.mean(values))


def semantic_rows(sample, tiles, stats, unconditional, L, threshold) -> list[dict]:
    maps = [s["semantic"].numpy() for s in tiles]
    ours = semantic_scores(sample, tiles, L, threshold)
    base = follow_semantic([extrusion(m, stats, L) for m in maps], maps, L, threshold)
    none = follow_semantic([unconditional[s["index"]] for s in tiles], maps, L, threshold)
    gt = follow_semantic([s["voxels"].coords[:, 1:].long().numpy() for s in tiles], maps, L, threshold)
    names = ("extruded map (trivially high: it is the map)", "unconditional sample (floor)", "ground-truth structure (ceiling)")
    return [
        row(
            "Semantic condition followed",
            "building-column IoU",
            ours["iou"],
            dict(zip(names, (base["iou"], none["iou"], gt["iou"]))),
            ">= 0.7",
            ours["iou"] >= 0.7,
        ),
        row(
            "Semantic condition followed",
            "road/water cells flat",
            ours["flat"],
            dict(zip(names, (base["flat"], none["flat"], gt["flat"]))),
        ),
    ]


def image_rows(sample, tiles, stats, L, v) -> list[dict]:
    ours = image_scores(sample, tiles, L, v)
    base, ceiling = [], []
    for s in tiles:
        voxels, target = s["voxels"].to(sample.pipe.device), s["image"].permute(1, 2, 0).float()
        mean = class_mean_colors(voxels, s["semantic"].numpy(), stats).to(voxels.device)
        for scores, colors in ((base, mean), (ceiling, voxels.feats[:, 3:6])):
            scores.append(psnr(render_nadir(surfels(voxels, colors), L, v, target.shape[0]).clamp(0, 1), target))
    baselines = {
        "ground-truth structure, per-class mean colours": float(np.mean(base)),
        "ground-truth structure, own colours (ceiling)": float(np.mean(ceiling)),
    }
    return [
        row(
            "Image condition followed",
            "nadir PSNR vs orthophoto (dB)",
            ours,
            baselines,
            "> per-class mean baseline",
            ours > baselines["ground-truth structure, per-class mean colours"],
        )
    ]


def other_seed_tiles(preset: dict):
    """Validation tiles of another base seed: samples of the data distribution itself."""
    data = dict(preset["training"]["data"])
    data["validation_base_seed"] = int(data["validation_base_seed"]) + PERFECT_SAMPLER_SEED_OFFSET
    return make_dataset({**preset, "training": {**preset["training"], "data": data}}, "validation"), data["validation_base_seed"]


def unconditional_rows(unconditional, preset, n, n_points, L, v) -> tuple[list[dict], str]:
    def centres(coords) -> np.ndarray:
        return (np.asarray(coords, np.float64) + 0.5) * v

    held_out = make_dataset(preset, "validation")
    other, other_seed = other_seed_tiles(preset)
    reference = [centres(held_out[i]["voxels"].coords[:, 1:].numpy()) for i in range(n)]
    generated = [centres(unconditional[i]) for i in range(n) if len(unconditional[i])]
    perfect = [centres(other[i]["voxels"].coords[:, 1:].numpy()) for i in range(n)]
    plane = np.argwhere(np.ones((L, L)))
    flat = [centres(np.concatenate([plane, np.zeros((len(plane), 1))], 1))] * n
    methods = {"ours": generated, "perfect": perfect, "flat": flat}
    metrics = {name: coverage_mmd(shapes, reference, n_points=n_points) for name, shapes in methods.items()}
    names = {"perfect": "tiles of another seed range (perfect sampler)", "flat": "flat ground plane"}
    rows = []
    for key, label in (("cov_cd", "COV-CD"), ("cov_emd", "COV-EMD"), ("mmd_cd", "MMD-CD"), ("mmd_emd", "MMD-EMD")):
        metric = f"{label} ({'higher' if key.startswith('cov') else 'lower'} is better)"
        rows.append(row("Unconditional samples", metric, metrics["ours"][key], {names[k]: metrics[k][key] for k in names}))
    note = (
        f"COV/MMD: {len(generated)} non-empty of {n} unconditional samples (seeds 0..{n - 1}) against validation tiles "
        f"0..{n - 1}, {n_points} points per shape, normalised; perfect sampler: validation tiles of base seed {other_seed}."
    )
    return rows, note


def interval_rows(sampler, tiles, candidate, L, v, threshold) -> tuple[list[dict], str]:
    every = (0.0, 1.0)
    results = {}
    for interval in (every, candidate):
        sampler.seconds.clear()
        sem = semantic_scores(sampler, tiles, L, threshold, guidance_interval=interval)
        img = image_scores(sampler, tiles, L, v, guidance_interval=interval)
        results[interval] = {"iou": sem["iou"], "psnr": img, "seconds": float(np.mean(sampler.seconds))}
    a, b = results[every], results[candidate]
    name = f"guidance on every step (0, 1), {sampler.steps} steps"
    label = f"guidance interval {candidate}"
    rows = [
        row("Guidance interval (other tiles)", f"building-column IoU, {label}", b["iou"], {name: a["iou"]}),
        row("Guidance interval (other tiles)", f"nadir PSNR (dB), {label}", b["psnr"], {name: a["psnr"]}),
        row("Guidance interval (other tiles)", f"seconds per call, {label}", b["seconds"], {name: a["seconds"]}),
    ]
    verdict = []
    for key, what in (("iou", "semantic IoU"), ("psnr", "image PSNR")):
        winner = f"interval {candidate}" if b[key] > a[key] else "every step" if b[key] < a[key] else "a tie"
        verdict.append(f"{what}: {winner} ({b[key]:.4f} vs {a[key]:.4f})")
    return rows, "guidance interval: " + "; ".join(verdict)


# -- output ------------------------------------------------------------------------------------
def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def table(rows: list[dict], header: str, notes: list[str]) -> str:
    lines = [header, "", "| measurement | metric | ours | baselines | goal |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        base = "; ".join(f"{k}: {fmt(v)}" for k, v in r["baselines"].items()) or "-"
        goal = r["goal"] if r["met"] is None else f"{r['goal']}: {'PASS' if r['met'] else 'FAIL'}"
        lines.append(f"| {r['measurement']} | {r['metric']} | {fmt(r['ours'])} | {base} | {goal} |")
    return "\n".join([*lines, "", *notes])


def generation_rows(args, pipe, validation, tiles, stats, preset, L, v) -> tuple[list[dict], list[str], dict]:
    """The rows that sample the pipeline (at its default guidance), their notes and those defaults."""
    generation = [r for r in args.rows if r not in VAE_ROWS]
    defaults = inspect.signature(type(pipe).__call__).parameters
    settings = {k: defaults[k].default for k in ("guidance_scale", "guidance_interval")}
    threshold = args.building_threshold_m / v
    sample = Sampler(pipe, args.steps, (v / 2, v / 2, v / 2))
    rows, notes = [], []
    unconditional = {}
    if {"semantic", "unconditional"} & set(generation):
        unconditional = {i: coords_of(sample(i)) for i in range(max(args.num_tiles, args.num_unconditional))}
    if "semantic" in generation:
        rows += semantic_rows(sample, tiles, stats, unconditional, L, threshold)
    if "image" in generation:
        rows += image_rows(sample, tiles, stats, L, v)
    if "unconditional" in generation:
        uncond, note = unconditional_rows(unconditional, preset, args.num_unconditional, args.n_points, L, v)
        rows += uncond
        notes.append(note)
    if sample.seconds:
        notes.append(
            f"{args.steps} flow steps per stage, pipeline defaults guidance_scale {settings['guidance_scale']}, "
            f"guidance_interval {settings['guidance_interval']}; {np.mean(sample.seconds):.2f} s per pipeline call "
            f"on {args.device} ({args.dtype})."
        )
    if "guidance_interval" in generation:
        first, last = args.num_tiles, args.num_tiles + args.interval_tiles - 1
        other = [validation[i] for i in range(first, last + 1)]
        interval, verdict = interval_rows(sample, other, tuple(args.candidate_interval), L, v, threshold)
        rows += interval
        notes.append(f"Guidance-interval rows: validation indices {first}..{last}, generator seed = tile index. {verdict}")
    return rows, notes, settings


@torch.inference_mode()
def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = tile_preset(args.preset)
    data = preset["training"]["data"]
    L, v = int(data["resolution"]), float(data["voxel_size"])
    pipe = load_pipeline(args) if args.quick or args.pretrained else None
    if pipe is not None:
        check_tiles_fit(pipe, preset, args.preset)
    vaes = load_vaes(args, pipe, L)
    stats = class_statistics(preset, args.class_mean_tiles)
    validation = make_dataset(preset, "validation")
    tiles = [validation[i] for i in range(args.num_tiles)]
    rows, settings = [], {}
    notes = [
        f"Held-out tiles: preset {args.preset} validation split (base seed {data['validation_base_seed']}), indices "
        f"0..{args.num_tiles - 1}; class means from {args.class_mean_tiles} training tiles (base seed "
        f"{data['train_base_seed']}); building columns rise > {args.building_threshold_m:g} m above ground."
    ]
    if "struct_vae" in args.rows:
        rows += struct_vae_rows(vaes["struct_vae"], tiles, stats, L)
    if "tex_vae" in args.rows:
        rows += tex_vae_rows(vaes["tex_vae"], tiles, stats)
    if pipe is not None and any(r not in VAE_ROWS for r in args.rows):
        more, more_notes, settings = generation_rows(args, pipe, validation, tiles, stats, preset, L, v)
        rows, notes = rows + more, notes + more_notes
    model = str(args.pretrained) if args.pretrained else f"untrained {args.preset} preset" if pipe is not None else None
    model = model or "VAEs " + ", ".join(map(str, args.vae_dirs))
    header = f"EarthCrafter quality, {model}, {len(tiles)} held-out {L}^3 tiles at {v:g} m"
    bad = [r for r in rows if not math.isfinite(r["ours"]) or not all(math.isfinite(x) for x in r["baselines"].values())]
    if bad:
        notes.append(f"non-finite values in rows: {[r['metric'] for r in bad]}")
    result = {
        "preset": args.preset,
        "pretrained": None if args.pretrained is None else str(args.pretrained),
        "vae_dirs": None if args.vae_dirs is None else [str(d) for d in args.vae_dirs],
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "steps": args.steps,
        "pipeline_defaults": {k: list(x) if isinstance(x, tuple) else x for k, x in settings.items()},
        "rows": rows,
        "notes": notes,
    }
    write_text_atomic(args.out / "earthcrafter_quality.json", json.dumps(result, indent=2, default=float))
    text = table(rows, header, notes)
    write_text_atomic(args.out / "earthcrafter_quality.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
