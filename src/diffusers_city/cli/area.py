"""The large-area path shared by ``generate <system>`` commands: a map larger than one model tile
is generated tile by tile into ``--out`` (`pipelines.tiled_area`; resumable: rerun the same command),
on every process of ``accelerate launch``, then merged into the ``--merge`` formats."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_area_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "large areas",
        "a map larger than one model tile is generated tile by tile into --out (tiles/, index.json; "
        "rerun the same command to resume; under `accelerate launch` the tiles are shared out between its processes)",
    )
    group.add_argument(
        "--overlap", type=float, default=0.25, help="overlap of neighbouring tiles, share of a tile (default 0.25)"
    )
    group.add_argument(
        "--merge",
        nargs="+",
        default=(),
        help="whole-area files (checked before any work): ply (one file, when it fits in memory), las / laz, "
        "3dtiles (tileset.json for CesiumJS / QGIS)",
    )


def process_device(device: str) -> str:
    """This process's device: under ``accelerate launch`` each process takes its own GPU of a
    plain ``cuda``; ``cpu`` processes talk gloo."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    return str(state.device) if device == "cuda" else device


def is_area_folder(path: Path) -> bool:
    """Whether ``path`` holds a large-area run (which the same command resumes)."""
    return (Path(path) / "run.json").is_file()


def run_area(args: argparse.Namespace, generate: Callable) -> int:
    """``generate()`` the area (every process: an `AreaOutput`), then merge and report (the main process)."""
    from accelerate import PartialState

    from ..pipelines.tiled_area import check_merge_formats, merge_area

    check_merge_formats(args.merge)
    output = generate()
    state = PartialState()
    if state.is_main_process:
        merged = merge_area(output.folder, args.merge, args.max_memory_gb) if args.merge else []
        points = sum(t["points"] for t in output.tiles)
        print(f"wrote {len(output.tiles)} tiles ({points} points) under {output.folder / 'tiles'}, index {output.index}")
        index = json.loads(output.index.read_text())
        crs = index["crs"]  # a short code as it is, a WKT only in index.json
        print(f"frame: {index['frame']}" + (f" ({crs})" if crs and len(crs) <= 40 else ""))
        for path in merged:
            print(f"wrote {path}")
    state.wait_for_everyone()
    return 0
