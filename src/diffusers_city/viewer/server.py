"""Starting and stopping the viser server behind ``view`` and ``app``."""

from __future__ import annotations

import importlib
import signal
import threading
import webbrowser
from collections.abc import Callable

__all__ = ["MissingExtraError", "require_viser", "serve_until_interrupted", "start_server"]

EXTRA_HINT = 'pip install "diffusers-city[viewer]"'


class MissingExtraError(ImportError):
    """An optional dependency of the viewer is not installed."""


def require_viser():
    """The viser module, or ``MissingExtraError`` saying which extra to install."""
    try:
        return importlib.import_module("viser")
    except ImportError as error:
        raise MissingExtraError(f"the viewer needs viser ({error}); install the viewer extra: {EXTRA_HINT}") from None


def start_server(host: str, port: int, label: str):
    """A viser server on ``host:port`` (0: a free port; a busy one: the next free one), z up."""
    viser = require_viser()
    server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
    server.scene.set_up_direction("+z")
    server.gui.configure_theme(control_width="large", show_share_button=False, dark_mode=False)
    return server


def url_of(server) -> str:
    host = server.get_host()
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{server.get_port()}/"


def serve_until_interrupted(server, *, open_browser: bool, on_ready: Callable[[str], None] = print) -> None:
    """Announce the server's address, open a browser tab if asked, and block until Ctrl+C or
    SIGTERM; then stop the server."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url = url_of(server)
    on_ready(f"serving at {url} (Ctrl+C stops)")
    if open_browser:
        webbrowser.open(url)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
