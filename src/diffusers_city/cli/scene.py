"""``diffusers-city scene``: make a procedural scene (``--seed``, ``--size``) or build one from a
DSM / point cloud (``--from FILE``), save it (``CityScene.save``) and write every export format:
by default a coloured point PLY, a GLB mesh and top / oblique preview PNGs; on request
(``--formats``) an OBJ mesh, a 3D Gaussian splat PLY of the points as small Gaussians, LAS and
LAZ. The sizes are said before writing.

``--out`` is replaced as a whole when the run succeeds (``cli.outputs``): it must be new or hold
only this command's outputs. Sizes are checked against ``--max-memory-gb`` before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .options import add_max_memory_gb

FORMATS = ("ply", "glb", "obj", "splat", "las", "laz", "png")
# The default: the points, a mesh and previews (the 3DGS PLY alone is 248 bytes a point: 232 MB for 300 m).
DEFAULT_FORMATS = ("ply", "glb", "png")
# Bytes per point of the point-based files (measured on their layouts; LAZ compresses, about).
_BYTES_PER_POINT = {"ply": 28, "las": 37, "laz": 8, "splat": {0: 68, 3: 248}, "scene": 38}
# What this command writes in --out: scene/, points.*, mesh.*, splat.ply, preview_*.png and side files.
OUTPUT_STEMS = ("scene", "points", "mesh", "splat", "preview_top", "preview_oblique")
# Rough peak bytes per exported point (float64 copies, colours, per-format buffers).
_EXPORT_BYTES_PER_POINT = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--seed", type=int, default=0, help="procedural city seed (default 0)")
    source.add_argument("--from", dest="source", type=Path, help="DSM (.png/.tif) or point cloud (.ply/.las/.laz) to convert")
    parser.add_argument("--size", type=float, default=256.0, help="procedural city side in metres (default 256)")
    parser.add_argument(
        "--meters-per-pixel",
        type=float,
        default=None,
        help="raster resolution (procedural default 1; required for a plain PNG DSM)",
    )
    parser.add_argument("--points-per-m2", type=float, default=4.0, help="procedural surface point density (default 4)")
    parser.add_argument("--vertical-scale", type=float, default=1.0, help="DSM: metres per pixel value (default 1)")
    parser.add_argument("--vertical-offset", type=float, default=0.0, help="DSM: metres added to every height (default 0)")
    parser.add_argument("--voxel-size", type=float, default=None, help="mesh voxel size in metres (default 2 x meters-per-pixel)")
    parser.add_argument(
        "--splat-sh-degree", type=int, choices=(0, 3), default=3, help="3DGS PLY SH degree: 3 (every viewer) or 0 (smaller)"
    )
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help=f"comma-separated subset of {','.join(FORMATS)}, or all (default {','.join(DEFAULT_FORMATS)}; "
        "splat: a 3DGS PLY, 248 bytes a point at SH degree 3)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (created; scene/ and the exports go inside; replaced as a whole: new or holding only those)",
    )
    add_max_memory_gb(parser, "a scene")


def _formats(text: str) -> list[str]:
    chosen = [f.strip().lower() for f in text.split(",") if f.strip()]
    if chosen == ["all"]:
        return list(FORMATS)
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown or not chosen:
        raise ValueError(f"--formats: unknown {unknown} (choose from {', '.join(FORMATS)}, or all)")
    return chosen


def _build_scene(args: argparse.Namespace):
    from ..data import procedural_city
    from ..data.readers import scene_from_file

    if args.source is not None:
        return scene_from_file(
            args.source,
            args.meters_per_pixel,
            vertical_scale=args.vertical_scale,
            vertical_offset=args.vertical_offset,
            max_memory_gb=args.max_memory_gb,
        )
    return procedural_city(
        args.seed,
        size_m=args.size,
        meters_per_pixel=1.0 if args.meters_per_pixel is None else args.meters_per_pixel,
        points_per_m2=args.points_per_m2,
        max_memory_gb=args.max_memory_gb,
    )


def scene_surface(scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, colours and classes of a scene: its point cloud, or one point per raster pixel
    (top surface, coloured by the aerial image or the class colours) when it has none."""
    from ..data import semantic_to_rgb

    if scene.points is not None:
        colors = (
            scene.colors
            if scene.colors is not None
            else semantic_to_rgb(scene.point_classes)
            if scene.point_classes is not None
            else None
        )
        return scene.points.astype(np.float64), colors, scene.point_classes
    xs, ys = scene.pixel_centers()
    pts = np.stack([xs, ys, scene.world_height()], axis=-1).reshape(-1, 3).astype(np.float64)
    if scene.image is not None:
        k = scene.image_scale
        colors = scene.image.reshape(scene.shape[0], k, scene.shape[1], k, 3).mean(axis=(1, 3)).reshape(-1, 3)
    else:
        colors = semantic_to_rgb(scene.semantic).reshape(-1, 3)
    return pts, np.clip(colors, 0, 1), scene.semantic.reshape(-1)


def estimated_sizes(scene, formats: list[str], sh_degree: int = 3) -> dict[str, int | None]:
    """Bytes each output will take, about, by name (``None``: a mesh, known once meshed)."""
    count = scene.num_points if scene.points is not None else scene.shape[0] * scene.shape[1]
    pixels = scene.shape[0] * scene.shape[1]
    sizes: dict[str, int | None] = {"scene/": count * _BYTES_PER_POINT["scene"] + pixels * 16}
    for fmt, name in (("ply", "points.ply"), ("splat", "splat.ply"), ("las", "points.las"), ("laz", "points.laz")):
        if fmt in formats:
            per_point = _BYTES_PER_POINT[fmt]
            sizes[name] = count * (per_point[sh_degree] if isinstance(per_point, dict) else per_point)
    sizes.update({f"mesh.{fmt}": None for fmt in ("glb", "obj") if fmt in formats})
    if "png" in formats:
        sizes["preview_top.png, preview_oblique.png"] = 2 * 768 * 768
    return sizes


def _say_sizes(out: Path, sizes: dict[str, int | None]) -> None:
    known = sum(v for v in sizes.values() if v is not None)
    parts = ", ".join(f"{name} {v / 1e6:.1f} MB" if v is not None else f"{name} (size once meshed)" for name, v in sizes.items())
    print(f"writing about {known / 1e6:.0f} MB to {out}: {parts}")


def export_scene(
    scene, out: Path, formats: list[str], voxel_size: float, sh_degree: int = 3, max_memory_gb: float | None = None
) -> list[Path]:
    """Write the chosen export formats of ``scene`` into ``out``; returns the written paths.
    ``MemoryLimitError`` (a ``ValueError``) first when the export is estimated to need more than
    ``max_memory_gb`` (default: the available memory)."""
    from tqdm.auto import tqdm

    from .. import export
    from ..utils.memory import check_memory

    count = scene.num_points if scene.points is not None else scene.shape[0] * scene.shape[1]
    check_memory(count * _EXPORT_BYTES_PER_POINT, max_memory_gb, f"exporting {count} points", hint="export fewer points")
    points, colors, classes = scene_surface(scene)
    offset = np.asarray(scene.origin, dtype=np.float64)
    factor = float(scene.metadata.get("crs_unit_factor", 1.0))
    crs = scene.crs
    written: list[Path] = []
    with tqdm(total=len(formats), desc="scene export", unit="format") as bar:
        if "ply" in formats:
            written.append(
                export.write_point_ply(out / "points.ply", points, colors, scene.normals, classes, crs=crs, offset=offset)
            )
            bar.update()
        if "glb" in formats or "obj" in formats:
            mesh = export.mesh_from_points(points, colors, voxel_size, max_memory_gb=max_memory_gb)
            for fmt in ("glb", "obj"):
                if fmt in formats:
                    written.append(export.write_mesh(out / f"mesh.{fmt}", mesh, crs=crs, offset=offset))
                    bar.update()
        if "splat" in formats:
            spacing = (
                scene.meters_per_pixel
                if scene.points is None
                else 1.0 / np.sqrt(max(len(points) / max(scene.size_m[0] * scene.size_m[1], 1e-9), 1e-9))
            )
            written.append(
                export.write_gaussian_ply(
                    out / "splat.ply",
                    points,
                    colors,
                    scales=0.5 * spacing,
                    opacities=0.95,
                    sh_degree=sh_degree,
                    crs=crs,
                    offset=offset,
                )
            )
            bar.update()
        for fmt in ("las", "laz"):
            if fmt in formats:
                written.append(export.write_las(out / f"points.{fmt}", points, colors, classes, crs=crs, unit_factor=factor))
                bar.update()
        if "png" in formats:
            for view in ("top", "oblique"):
                written.append(
                    export.write_preview(out / f"preview_{view}.png", points, colors, view=view, width=768, height=768)
                )
            bar.update()
    return written


def run(args: argparse.Namespace) -> int:
    from .outputs import check_output_folder, published, writing

    formats = _formats(args.formats)
    if args.source is not None and not args.source.exists():
        raise FileNotFoundError(f"--from file {args.source} does not exist")
    for name in ("size", "points_per_m2", "meters_per_pixel", "voxel_size"):
        value = getattr(args, name)
        if value is not None and (not np.isfinite(value) or value <= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    check_output_folder(args.out, OUTPUT_STEMS)
    scene = _build_scene(args)
    voxel = args.voxel_size if args.voxel_size is not None else 2.0 * scene.meters_per_pixel
    _say_sizes(args.out, estimated_sizes(scene, formats, args.splat_sh_degree))
    with writing(args.out) as tmp:
        scene.save(tmp / "scene")
        written = published(export_scene(scene, tmp, formats, voxel, args.splat_sh_degree, args.max_memory_gb), tmp, args.out)
    print(f"{scene}")
    print(f"scene folder: {args.out / 'scene'} (generate gaussiancity --scene {args.out} reads it)")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
