"""Seams of tiled Sat2City generation: which blending of overlapping tiles hides the tile borders.

A procedural city of n x n tiles (the model's crop each, 1/4 overlap) is generated three ways
from the same per-tile seeds:

- ``repaint``: the shipped path (`Sat2CityPipeline.generate_area`): each tile conditioned on its
  finished neighbours in every stage's latents (RePaint replacement), cut in the overlap's middle;
- ``independent``: every tile on its own, cut in the overlap's middle;
- ``averaged``: every tile on its own, heights averaged across the overlap with linear weights
  (MultiDiffusion-style averaging; done on the outputs, since averaging at every step needs all
  tiles of the area in memory at once).

Reported on the generated top height per voxel column: the mean height step between adjacent
columns across tile borders against inside tiles, and the height correlation / RMSE against the
input on a band of 2 columns along the borders against the interior, and over the whole area:
``independent``'s is the single-crop figure (each crop generated alone), which the stitched area's
must stay near as the area grows (``--tiles 4``: about 1 km² at the small default's crop).

    python benchmarks/tiled_seams.py --steps 10 --tiles 2          # CPU, the shipped small default
    python benchmarks/tiled_seams.py --model PATH --device cuda --tiles 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import diffusers_city  # noqa: F401  (registers the pipelines)
from diffusers_city.data import procedural_city
from diffusers_city.data.readers import read_ply
from diffusers_city.pipelines.tiled_area import tile_scene
from diffusers_city.pipelines.tiling import plan_tiles, tile_pixels
from diffusers_city.presets import bundled_path, load_preset

BAND = 2  # voxel columns on each side of a border


def top_raster(points: np.ndarray, origin: tuple[float, float], v: float, shape: tuple[int, int]) -> np.ndarray:
    """Highest point per voxel column ``[rows, cols]`` (NaN where none)."""
    top = np.full(shape, -np.inf)
    j = np.floor((points[:, 0] - origin[0]) / v).astype(int)
    i = np.floor((points[:, 1] - origin[1]) / v).astype(int)
    ok = (i >= 0) & (i < shape[0]) & (j >= 0) & (j < shape[1])
    np.maximum.at(top, (i[ok], j[ok]), points[ok, 2])
    return np.where(np.isfinite(top), top, np.nan)


def seam_stats(top: np.ndarray, truth: np.ndarray, borders: list[int]) -> dict[str, float]:
    """Height steps across ``borders`` (column / row indices, both axes) against inside tiles, and
    the correlation / RMSE against ``truth`` on the border band against the interior."""
    steps = {"border": [], "inside": []}
    for grid in (top, top.T):
        d = np.abs(np.diff(grid, axis=1))
        for k in range(d.shape[1]):
            steps["border" if k + 1 in borders else "inside"].append(d[:, k])
    band = np.zeros(top.shape, bool)
    for b in borders:
        band[:, max(0, b - BAND) : b + BAND] = True
        band[max(0, b - BAND) : b + BAND, :] = True
    out = {f"step_{k}": float(np.nanmean(np.concatenate(v))) for k, v in steps.items()}
    for name, mask in (("border", band), ("interior", ~band), ("all", np.ones_like(band))):
        ok = mask & np.isfinite(top)
        out[f"corr_{name}"] = float(np.corrcoef(top[ok], truth[ok])[0, 1])
        out[f"rmse_{name}"] = float(np.sqrt(np.mean((top[ok] - truth[ok]) ** 2)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(bundled_path("sat2city", "default")))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiles", type=int, default=2, help="tiles per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--city-seed", type=int, default=123456, help="procedural city (not a training seed)")
    parser.add_argument("--meters-per-pixel", type=float, default=1.171875)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.dense_vae.config
    v, mpp = vae.voxel_size, args.meters_per_pixel
    tile, overlap, align = tile_pixels(vae.grid_size[0] * v, v * pipe.dense_vae.downsample_factor, mpp)
    size_px = tile + (args.tiles - 1) * (tile - overlap)
    style = load_preset("sat2city", "small")["training"]["data"].get("style", {})
    scene = procedural_city(args.city_seed, size_m=size_px * mpp, meters_per_pixel=mpp, **style)
    plan = plan_tiles(scene.shape, tile, overlap, align)
    cells = (int(size_px * mpp / v),) * 2
    ox, oy, oz = scene.origin
    k = round(v / mpp)  # map pixels per voxel column
    truth = oz + scene.height[: cells[0] * k, : cells[1] * k].reshape(cells[0], k, cells[1], k).max((1, 3))
    borders = sorted({round(t.own[2] * mpp / v) for t in plan.tiles() if t.own[2] > 0})

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = pipe.generate_area(scene, Path(tmp) / "repaint", num_inference_steps=args.steps, seed=args.seed)
        points = np.concatenate(
            [read_ply(out.folder / "tiles" / t["files"]["ply"]).points for t in out.tiles if "ply" in t["files"]]
        )
        results["repaint"] = seam_stats(top_raster(points, (ox, oy), v, cells), truth, borders)

    owned, weighted, weights = np.full(cells, np.nan), np.zeros(cells), np.zeros(cells)
    ramp = overlap * mpp / v
    for t in plan.tiles():
        gen = torch.Generator("cpu").manual_seed(t.seed(args.seed))
        result = pipe(tile_scene(scene, t), num_inference_steps=args.steps, generator=gen)
        top = top_raster(result.points, (ox, oy), v, cells)
        r_lo, r_hi, c_lo, c_hi = (round(b * mpp / v) for b in t.own)
        owned[r_lo:r_hi, c_lo:c_hi] = top[r_lo:r_hi, c_lo:c_hi]
        r0, c0, n = round(t.r0 * mpp / v), round(t.c0 * mpp / v), round(t.size * mpp / v)
        rows, cols = np.arange(cells[0]) - r0, np.arange(cells[1]) - c0

        def edge(x, first, last):  # 1 inside the tile, falling to 0 across the overlap of a shared side
            inner = np.minimum(np.where(first, np.inf, x + 0.5), np.where(last, np.inf, n - x - 0.5))
            return np.clip(inner / ramp, 0, 1) * ((x >= 0) & (x < n))

        w = np.outer(edge(rows, t.row == 0, t.row == plan.grid[0] - 1), edge(cols, t.col == 0, t.col == plan.grid[1] - 1))
        has = np.isfinite(top)
        weighted[has] += (w * top)[has]
        weights[has] += w[has]
    results["independent"] = seam_stats(owned, truth, borders)
    results["averaged"] = seam_stats(np.where(weights > 0, weighted / np.maximum(weights, 1e-9), np.nan), truth, borders)
    header = f"{args.tiles}x{args.tiles} tiles of {tile} px ({tile * mpp:g} m), overlap {overlap} px, {args.steps} steps"
    print(header)
    columns = ("step border", "step inside", "corr border", "corr inter.", "corr all", "rmse border", "rmse inter.")
    print(f"{'method':12s} " + " ".join(f"{c:>11s}" for c in columns))
    for name, r in results.items():
        print(
            f"{name:12s} {r['step_border']:11.2f} {r['step_inside']:11.2f} {r['corr_border']:11.3f} "
            f"{r['corr_interior']:11.3f} {r['corr_all']:11.3f} {r['rmse_border']:11.2f} {r['rmse_interior']:11.2f}"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
