"""``diffusers-city view PATH``: an interactive 3D view of an output in the browser (viser).

``PATH`` is read and checked before the server starts (missing: status 3, unsupported or
malformed: 2, corrupt: 4); the server runs until Ctrl+C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .serving import add_server_arguments, missing_extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="a point cloud PLY / LAS / LAZ, a 3DGS splat PLY, a GLB / glTF / OBJ mesh, a scene folder, "
        "a tiled output (index.json) or a generated output folder",
    )
    add_server_arguments(parser, default_port=8080)
    parser.add_argument("--point-budget", type=int, default=2_000_000, help="points shown at most (a subset beyond)")
    parser.add_argument("--gaussian-budget", type=int, default=1_000_000, help="Gaussians shown at most (a subset beyond)")
    parser.add_argument("--max-tiles", type=int, default=9, help="tiles of a tiled output shown at once, nearest the camera")


def run(args: argparse.Namespace) -> int:
    status = missing_extra("view")
    if status is not None:
        return status
    for option in ("point_budget", "gaussian_budget", "max_tiles"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    from ..viewer import load_view
    from ..viewer.scene_view import CityView
    from ..viewer.server import serve_until_interrupted, start_server

    content = load_view(args.path)
    server = start_server(args.host, args.port, label=f"diffusers-city view {args.path}")
    CityView(
        server,
        content,
        point_budget=args.point_budget,
        gaussian_budget=args.gaussian_budget,
        max_tiles=args.max_tiles,
    )
    serve_until_interrupted(server, open_browser=not args.no_browser, on_ready=lambda line: print(f"view: {line}", flush=True))
    return 0
