"""``diffusers-city demo``: run the shipped default pipeline of each system.

Every system of the registry that declares a demo (``System.has_demo``) runs when
``pipelines/<system>/default/model_index.json`` is bundled; its
``diffusers_city.pipelines.<system>.demo.run_demo(out_dir, device)`` writes the outputs into an
empty folder that replaces ``--out/<system>/`` as a whole when it succeeds (``cli.outputs``).
Exit status: that of the first system that failed (``cli.errors``), 1 when no system ran.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import ExitCode, classify, resolve_device
from .options import add_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="output folder, one subfolder per system (default: demo_out)"
    )
    add_device(parser)


def run(args: argparse.Namespace) -> int:
    from .._systems import systems
    from ..presets import bundled_path
    from .outputs import check_output_folder, published, writing

    device = resolve_device(args.device)
    check_output_folder(args.out, tuple(systems()))
    ran, failed = [], []
    for system, entry in systems().items():
        if not entry.has_demo:
            continue
        index = bundled_path(system, "default", "model_index.json")
        if not index.is_file():
            print(f"{system}: skipped, no shipped weights ({index} is missing)")
            continue
        print(f"{system}: running the shipped default pipeline on {device} ...")
        try:
            demo = importlib.import_module(entry.demo_module)
            with writing(args.out / system) as tmp:
                paths = published(demo.run_demo(tmp, device), tmp, args.out / system)
        except Exception as error:
            code, message = classify(error)
            print(f"{system}: FAILED: {message}", file=sys.stderr)
            failed.append(code)
            continue
        ran.append(system)
        for path in paths:
            print(f"  wrote {path}")
    if not ran and not failed:
        print("demo: nothing to run, no system has shipped weights", file=sys.stderr)
    return int(failed[0]) if failed else ExitCode.OK if ran else ExitCode.FAILED
