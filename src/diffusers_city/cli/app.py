"""``diffusers-city app``: a browser app over the shipped defaults (viser GUI): pick a system and
an input, set seed / steps / guidance, generate, view the 3D result, download its files.

The device (``--device``, default cuda when available) and the output folder are checked, and the
systems listed, before the server starts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .errors import OutputNotWritableError, resolve_device
from .serving import add_server_arguments, missing_extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser, default_port=7860)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--out", type=Path, default=Path("app_out"), help="folder of uploads and results, a subfolder per run (default: app_out)"
    )


def run(args: argparse.Namespace) -> int:
    status = missing_extra("app")
    if status is not None:
        return status
    from ..viewer.app import CityApp, app_systems
    from ..viewer.server import serve_until_interrupted, start_server

    device = resolve_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as error:
        raise OutputNotWritableError(f"--out {args.out} is not writable: {error.strerror or error}") from None
    systems = app_systems()
    if not systems:
        raise FileNotFoundError("no system has a demo and shipped weights: nothing for the app to run")
    server = start_server(args.host, args.port, label="diffusers-city app")
    CityApp(server, args.out, device, systems)
    print(f"app: systems {', '.join(systems)} on {device}; results under {args.out}/", flush=True)
    serve_until_interrupted(server, open_browser=not args.no_browser, on_ready=lambda line: print(f"app: {line}", flush=True))
    return 0
