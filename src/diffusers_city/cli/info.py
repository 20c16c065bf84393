"""``diffusers-city info``: what this installation can run.

Everything beyond the standard library and torch is probed lazily and failures are
reported as text, so ``info`` works even when optional parts are missing or broken.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform

from .threads import choose_threads

# distribution name -> import name
PACKAGES = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "gsplat": "gsplat",
    "spconv-triton": "spconv",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _sparse_backends() -> str:
    try:
        sparse = importlib.import_module("diffusers_city.sparse")
        return ", ".join(sparse.available_backends()) or "none"
    except Exception as error:  # a broken or absent module is exactly what info reports
        return f"unknown (diffusers_city.sparse unavailable: {type(error).__name__}: {error})"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _renderer() -> str:
    import torch

    if importlib.util.find_spec("gsplat") is not None and torch.cuda.is_available():
        return "gsplat (CUDA)"
    reason = "gsplat not installed" if importlib.util.find_spec("gsplat") is None else "no CUDA device"
    return f"torch reference ({reason})"


def collect(threads: int | None = None) -> dict[str, str]:
    """The facts ``info`` prints, as strings keyed by label (``threads``: the ``--threads`` given)."""
    from .. import __version__

    facts = {"diffusers-city": __version__, "python": platform.python_version()}
    facts.update({name: _version(name) for name in PACKAGES})
    import torch

    facts["torch cuda"] = torch.version.cuda or "none (CPU build)"
    facts["sparse backends"] = _sparse_backends()
    facts["renderer"] = _renderer()
    facts["device"] = _device()
    facts["torch threads"] = f"{torch.get_num_threads()} (set by the CLI from {choose_threads(threads)[1]})"
    return facts


def run(args: argparse.Namespace) -> int:
    facts = collect(args.threads)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        width = max(map(len, facts))
        for key, value in facts.items():
            print(f"{key:<{width}}  {value}")
    return 0
