"""Headless Chromium driven over the DevTools protocol (CDP), for the viewer and app tests and
``docs/make_viewer_screenshots.py``: load a page, wait for a text to appear, click buttons,
take screenshots. Uses the Debian ``chromium`` (no browser download) and ``websockets``
(a dependency of viser, the ``viewer`` extra).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# WebGL in software (SwiftShader): no GPU in CI or on a developer's CPU machine.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--remote-debugging-port=0",
)
# viser warns, in a toast over the scene, that WebGL runs in software: hide toasts in screenshots.
HIDE_TOASTS = (
    "const s = document.createElement('style');"
    "s.textContent = '.mantine-Notifications-root {display: none !important}';"
    "document.head.appendChild(s);"
)


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Browser:
    """One headless Chromium with one page; a context manager that ends the browser it started."""

    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 60.0) -> None:
        from websockets.sync.client import connect

        binary = find_chromium()
        if binary is None:
            raise RuntimeError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
        self._profile = tempfile.mkdtemp(prefix="diffusers-city-chromium-")
        self._process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        self._ids = itertools.count(1)
        self.timeout = timeout
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        """Send one CDP command and return its result (events in between are skipped)."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=self.timeout))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def wait_for_text(self, text: str, timeout: float | None = None) -> None:
        """Wait until the page's visible text contains ``text``; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + (timeout or self.timeout)
        probe = f"document.body !== null && document.body.innerText.includes({json.dumps(text)})"
        while not self.evaluate(probe):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {text!r}")
            time.sleep(0.25)

    def click_button(self, label: str) -> None:
        """Click the (first) button whose text is ``label``."""
        found = self.evaluate(
            "(() => { const b = [...document.querySelectorAll('button')].find(e => e.innerText.trim() === "
            f"{json.dumps(label)}); if (!b) return false; b.click(); return true; }})()"
        )
        if not found:
            raise LookupError(f"no button {label!r} on the page")

    def frames(self, count: int = 10) -> None:
        """Let the page draw ``count`` animation frames."""
        step = "const f = () => (--n > 0 ? requestAnimationFrame(f) : r(true));"
        self.evaluate(f"new Promise(r => {{ let n = {count}; {step} requestAnimationFrame(f); }})")

    def screenshot(self) -> Image.Image:
        self.evaluate(HIDE_TOASTS)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scene_pixels(image: Image.Image, panel_width: int = 420) -> np.ndarray:
    """The 3D canvas part of a screenshot: left of viser's control panel (on the right)."""
    arr = np.asarray(image, dtype=np.int16)
    return arr[:, : max(1, arr.shape[1] - panel_width)]


def drawn_fraction(pixels: np.ndarray, background=(255, 255, 255), tolerance: int = 40) -> float:
    """Fraction of pixels that differ from the background by more than ``tolerance`` (any channel)."""
    return float((np.abs(pixels - np.asarray(background)).max(-1) > tolerance).mean())


def wait_for_drawing(browser: Browser, min_fraction: float, timeout: float = 40.0) -> Image.Image:
    """Screenshots until the scene covers ``min_fraction`` of the canvas or ``timeout`` passes
    (splats are sorted in a web worker: they appear a few frames after the data arrives); the last one."""
    deadline = time.monotonic() + timeout
    while True:
        browser.frames()
        image = browser.screenshot()
        if drawn_fraction(scene_pixels(image)) >= min_fraction or time.monotonic() > deadline:
            return image
        time.sleep(0.5)


def env_without_display() -> dict[str, str]:
    """The environment for a server under test: no display, so no browser tab opens."""
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "BROWSER")}


_SERVING = re.compile(r"serving at (http://\S+)")


@contextlib.contextmanager
def served(args: Sequence[str], timeout: float = 120.0) -> Iterator[tuple[str, list[str]]]:
    """Run ``diffusers-city ARGS --port 0 --no-browser`` (``view`` or ``app``) until it says where it
    serves; yield ``(url, its output lines, growing)``, then stop it with SIGTERM and check that it
    exited with status 0. Its output is read all along, so a full pipe never blocks it."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = env_without_display()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
    command = f"diffusers-city {' '.join(map(str, args))}"
    process = subprocess.Popen(
        [sys.executable, "-m", "diffusers_city.cli", *map(str, args), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not (match := _SERVING.search("".join(lines))):
            if process.poll() is not None or time.monotonic() > deadline:
                reader.join(5)
                raise RuntimeError(f"{command} did not start serving (status {process.poll()}):\n{''.join(lines)}")
            time.sleep(0.1)
        yield match.group(1), lines
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
        reader.join(5)
        if status != 0:
            raise RuntimeError(f"{command} stopped with status {status}:\n{''.join(lines)}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
