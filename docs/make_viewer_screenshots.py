"""Make docs/viewer.png and docs/app.png: headless Chromium screenshots of `diffusers-city view` on
the Sat2City demo output and of `diffusers-city app` after Generate (the first system, its example).

Each server starts on a free port and is stopped afterwards; needs the Debian `chromium` and
the viewer extra (see tests/browser.py, which drives the browser).

    PYTHONPATH=src python docs/make_viewer_screenshots.py [--out docs] [--demo-out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser, served, wait_for_drawing  # noqa: E402

from diffusers_city.export import write_image  # noqa: E402

SIZE = (1280, 800)


def view_screenshot(folder: Path) -> object:
    with served(["view", folder]) as (url, _), Browser(*SIZE) as browser:
        browser.goto(url)
        browser.wait_for_text("Georeference")
        return wait_for_drawing(browser, 0.15)


def app_screenshot(out: Path) -> object:
    with served(["app", "--device", "cpu", "--out", out]) as (url, _), Browser(*SIZE) as browser:
        browser.goto(url)
        browser.wait_for_text("Generate")
        browser.click_button("Generate")
        browser.wait_for_text("done:", timeout=600)
        return wait_for_drawing(browser, 0.15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--demo-out", type=Path, default=None, help="an existing `diffusers-city demo` output (else run it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo_out
        if demo is None:
            demo = Path(tmp) / "demo"
            subprocess.run([sys.executable, "-m", "diffusers_city.cli", "demo", "--out", str(demo)], check=True)
        write_image(args.out / "viewer.png", view_screenshot(demo / "sat2city"))
        write_image(args.out / "app.png", app_screenshot(Path(tmp) / "app_out"))


if __name__ == "__main__":
    main()
