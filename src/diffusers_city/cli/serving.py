"""What ``view`` and ``app`` share: the server options and how a missing ``viewer`` extra is said."""

from __future__ import annotations

import argparse
import sys

from .errors import ExitCode


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 0..65535 (0: any free port), got {value}")
    return value


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument(
        "--port", type=_port, default=default_port, help=f"port (default {default_port}; if taken, the next free one; 0: any)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")


def missing_extra(command: str) -> int | None:
    """``None`` when viser is installed, else the exit status after saying which extra to install."""
    from ..viewer.server import MissingExtraError, require_viser

    try:
        require_viser()
    except MissingExtraError as error:
        print(f"diffusers-city {command}: error: {error}", file=sys.stderr)
        return int(ExitCode.FAILED)
    return None
