"""Make docs/gallery.png (three procedural cities and one real LiDAR scene) and
docs/real_data.png (the real scene: colour, classes, height raster).

    PYTHONPATH=src python docs/make_gallery.py [--out docs] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusers_city.data import procedural_city, scene_from_file, semantic_to_rgb
from diffusers_city.export import captioned, grid, raster_image, write_image
from diffusers_city.render import render_points_preview

DOCS = Path(__file__).resolve().parent
REAL = DOCS / "data" / "autzen_trim.laz"
TILE = 512


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
        tiles.append(captioned(image, f"procedural_city(seed={seed}, size_m={args.size:g}): {scene.num_points:,} points"))

    real = scene_from_file(REAL, meters_per_pixel=1.0)
    image = render_points_preview(real.points, real.colors, view="oblique", width=TILE, height=TILE)
    tiles.append(captioned(image, f"real LiDAR: Autzen Stadium area, Eugene OR ({real.num_points:,} points)"))
    write_image(args.out / "gallery.png", grid(tiles, 2))

    views = [
        captioned(
            render_points_preview(real.points, real.colors, view="oblique", width=TILE, height=TILE // 2), "LiDAR RGB (oblique)"
        ),
        captioned(
            render_points_preview(real.points, semantic_to_rgb(real.point_classes), view="oblique", width=TILE, height=TILE // 2),
            "point classes (ground / vegetation / roof)",
        ),
        captioned(
            raster_image(real.height / max(float(real.height.max()), 1e-6), (TILE, TILE // 2)),
            f"height raster {real.shape[1]}x{real.shape[0]} @ 1 m (north up)",
        ),
        captioned(raster_image(semantic_to_rgb(real.semantic), (TILE, TILE // 2)), "semantic raster"),
    ]
    write_image(args.out / "real_data.png", grid(views, 2))
    print(f"wrote {args.out / 'gallery.png'} and {args.out / 'real_data.png'}")


if __name__ == "__main__":
    main()
