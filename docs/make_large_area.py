"""Make docs/large_area.png: a held-out procedural DSM of 3 x 3 model tiles (a metric GeoTIFF) next
to the city that ``diffusers-city generate sat2city --height-map BIG.tif --out DIR`` stitches from
it with the shipped small default, the tile borders (where neighbouring tiles are cut) drawn red
on both.

    PYTHONPATH=src python docs/make_large_area.py [--out docs] [--steps 50] [--tiles 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_gallery import DOCS

from diffusers_city.cli import main as cli
from diffusers_city.data import procedural_city
from diffusers_city.data.readers import read_ply
from diffusers_city.export import captioned, grid, write_image
from diffusers_city.presets import load_preset
from diffusers_city.render.points import render_points_preview

SIDE = 720  # pixels per panel
MPP = 1.171875  # the small default's 300 m crop is 256 px
TILE_PX, OVERLAP_PX = 256, 64  # what generate_area chooses at this resolution (`tile_pixels`)
CITY_SEED = 123456  # a procedural city no training run saw (training seeds count up from 0)
WEST, NORTH = 500_000.0, 5_000_000.0  # UTM 33N metres of the map's north-west corner
RED = np.array([0.9, 0.05, 0.05])


def write_dsm(path: Path, height: np.ndarray) -> None:
    """``height`` (a CityScene raster: rows grow northwards) as a north-up float32 GeoTIFF in metres."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", height=height.shape[0], width=height.shape[1], count=1, dtype="float32")
    with rasterio.open(path, "w", crs="EPSG:32633", transform=from_origin(WEST, NORTH, MPP, MPP), **profile) as dst:
        dst.write(height[::-1].astype(np.float32), 1)


def map_panel(height: np.ndarray, borders_px: list[int]) -> Image.Image:
    """The DSM in grey (north up), the tile borders red."""
    lo, hi = np.percentile(height, [1, 99])
    grey = (np.clip((height[::-1] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(grey).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR)
    draw, k = ImageDraw.Draw(image), SIDE / height.shape[0]
    for b in borders_px:
        draw.line([(b * k, 0), (b * k, SIDE)], fill=(230, 13, 13), width=2)
        draw.line([(0, SIDE - b * k), (SIDE, SIDE - b * k)], fill=(230, 13, 13), width=2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tiles", type=int, default=3, help="tiles per side")
    args = parser.parse_args()
    size_px = TILE_PX + (args.tiles - 1) * (TILE_PX - OVERLAP_PX)
    style = load_preset("sat2city", "small")["training"]["data"].get("style", {})
    scene = procedural_city(CITY_SEED, size_m=size_px * MPP, meters_per_pixel=MPP, **style)
    height = scene.height + 120.0  # a DSM in metres above sea level
    with tempfile.TemporaryDirectory() as tmp:
        dsm, out = Path(tmp) / "BIG.tif", Path(tmp) / "DIR"
        write_dsm(dsm, height)
        start = time.perf_counter()
        argv = ["generate", "sat2city", "--height-map", str(dsm), "--out", str(out), "--steps", str(args.steps)]
        if cli(argv) != 0:
            raise SystemExit("generation failed")
        seconds = time.perf_counter() - start
        index = json.loads((out / "index.json").read_text())
        clouds = [read_ply(out / "tiles" / t["files"]["ply"]) for t in index["tiles"] if "ply" in t["files"]]
    points = np.concatenate([c.points for c in clouds])
    colors = np.concatenate([c.colors for c in clouds])
    x0, y0 = index["bounds"][:2]
    borders_m = sorted({t["bounds"][0] - x0 for t in index["tiles"] if t["bounds"][0] > x0})
    near = np.zeros(len(points), bool)  # points within a metre of a border, on either axis
    for b in borders_m:
        near |= (np.abs(points[:, 0] - x0 - b) < 1.0) | (np.abs(points[:, 1] - y0 - b) < 1.0)
    colors[near] = RED
    city = render_points_preview(points, colors, "oblique", SIDE, SIDE, elevation_deg=40.0)
    km = (size_px * MPP / 1000) ** 2
    print(f"{len(points)} points, {len(clouds)} tiles, {seconds:.0f} s on this CPU ({seconds / km:.0f} s/km²)")
    panels = [
        captioned(
            map_panel(height, [round(b / MPP) for b in borders_m]),
            f"input: held-out procedural DSM, {size_px * MPP:.0f} m square at {MPP:g} m/px (GeoTIFF, metres)",
        ),
        captioned(
            city,
            f"Sat2City small default, {args.tiles}x{args.tiles} tiles, {args.steps} DDIM steps/stage, CPU {seconds / 60:.0f} min",
        ),
    ]
    write_image(args.out / "large_area.png", grid(panels, 2))


if __name__ == "__main__":
    main()
