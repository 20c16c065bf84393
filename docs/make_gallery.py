"""Make docs/gallery.png (three procedural cities and one real LiDAR scene) and
docs/real_data.png (the real scene: colour, classes, height raster).

    PYTHONPATH=src python docs/make_gallery.py [--out docs] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffusers_city.data import procedural_city, scene_from_file, semantic_to_rgb
from diffusers_city.export import write_image
from diffusers_city.render import render_points_preview

DOCS = Path(__file__).resolve().parent
REAL = DOCS / "data" / "autzen_trim.laz"
TILE = 512
CAPTION = 28


def _captioned(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + CAPTION), "white")
    canvas.paste(image, (0, CAPTION))
    ImageDraw.Draw(canvas).text((8, 8), text, fill=(20, 20, 20))
    return canvas


def _grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    rows = -(-len(tiles) // columns)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * w, (i // columns) * h))
    return sheet


def _raster_image(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A raster in 0..1 (grey [H, W] or RGB [H, W, 3]) as an image, rows flipped so north is up."""
    return Image.fromarray((values[::-1] * 255).astype(np.uint8)).convert("RGB").resize(size, Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--size", type=float, default=256.0, help="procedural city side in metres")
    parser.add_argument("--seeds", type=int, nargs=3, default=(1, 2, 3))
    args = parser.parse_args()

    tiles = []
    for seed in args.seeds:
        scene = procedural_city(seed, size_m=args.size, points_per_m2=2.0, with_image=False)
        image = render_points_preview(scene.points, scene.colors, view="oblique", width=TILE, height=TILE)
        tiles.append(_captioned(image, f"procedural_city(seed={seed}, size_m={args.size:g}): {scene.num_points:,} points"))

    real = scene_from_file(REAL, meters_per_pixel=1.0)
    image = render_points_preview(real.points, real.colors, view="oblique", width=TILE, height=TILE)
    tiles.append(_captioned(image, f"real LiDAR: Autzen Stadium area, Eugene OR ({real.num_points:,} points)"))
    write_image(args.out / "gallery.png", _grid(tiles, 2))

    views = [
        _captioned(
            render_points_preview(real.points, real.colors, view="oblique", width=TILE, height=TILE // 2), "LiDAR RGB (oblique)"
        ),
        _captioned(
            render_points_preview(real.points, semantic_to_rgb(real.point_classes), view="oblique", width=TILE, height=TILE // 2),
            "point classes (ground / vegetation / roof)",
        ),
        _captioned(
            _raster_image(real.height / max(float(real.height.max()), 1e-6), (TILE, TILE // 2)),
            f"height raster {real.shape[1]}x{real.shape[0]} @ 1 m (north up)",
        ),
        _captioned(_raster_image(semantic_to_rgb(real.semantic), (TILE, TILE // 2)), "semantic raster"),
    ]
    write_image(args.out / "real_data.png", _grid(views, 2))
    print(f"wrote {args.out / 'gallery.png'} and {args.out / 'real_data.png'}")


if __name__ == "__main__":
    main()
