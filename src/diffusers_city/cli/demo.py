"""``diffusers-city demo``: run the shipped default pipeline of each system.

Every system of the registry that declares a demo (``System.has_demo``) runs when
``pipelines/<system>/default/model_index.json`` is bundled; its
``diffusers_city.pipelines.<system>.demo.run_demo(out_dir, device)`` writes the outputs under
``--out/<system>/``. Exit status 1 when no system ran or one of them failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def _resolve_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


def run(args: argparse.Namespace) -> int:
    from .._registration import systems
    from ..presets import bundled_path

    device = _resolve_device(args.device)
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
            paths = demo.run_demo(args.out / system, device)
        except Exception:
            traceback.print_exc()
            print(f"{system}: FAILED (traceback above)", file=sys.stderr)
            failed.append(system)
            continue
        ran.append(system)
        for path in paths:
            print(f"  wrote {path}")
    if not ran and not failed:
        print("demo: nothing to run, no system has shipped weights", file=sys.stderr)
    return 0 if ran and not failed else 1
