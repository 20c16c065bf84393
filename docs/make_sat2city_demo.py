"""Make docs/sat2city_demo.png: the shipped example height map next to the city that
`diffusers-city demo` generates from it (the demo's own preview image).

    PYTHONPATH=src python docs/make_sat2city_demo.py [--out docs]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_gallery import DOCS, _captioned, _grid

from diffusers_city.export import write_image
from diffusers_city.pipelines.sat2city.demo import DEMO_STEPS, EXAMPLE, run_demo
from diffusers_city.presets import bundled_path

SIDE = 320


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    gray = np.asarray(Image.open(bundled_path(*EXAMPLE)).convert("L"), dtype=np.float64)
    lo, hi = np.percentile(gray, [1, 99])
    stretched = np.clip((gray - lo) / max(hi - lo, 1.0) * 255, 0, 255).astype(np.uint8)
    height_map = Image.fromarray(stretched).resize((SIDE, SIDE), Image.NEAREST).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        preview = next(p for p in run_demo(Path(tmp), "cpu") if p.name.endswith("_preview.png"))
        city = Image.open(preview).convert("RGB").resize((SIDE, SIDE), Image.LANCZOS)  # the preview is square
    tiles = [
        _captioned(height_map, "input noisy height map (contrast stretched)"),
        _captioned(city, f"Sat2City small default, CPU demo ({DEMO_STEPS} DDIM steps/stage)"),
    ]
    write_image(args.out / "sat2city_demo.png", _grid(tiles, 2))


if __name__ == "__main__":
    main()
