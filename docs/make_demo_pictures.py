"""Make the README's demo pictures from what `diffusers-city demo` writes on the CPU:
docs/gaussiancity_demo.gif and .png (the orbit; the layout's classes beside a large frame) and
docs/sat2city_orbit.gif and sat2city_demo.png (the orbit; the example height map beside the city).

    PYTHONPATH=src python docs/make_demo_pictures.py [--out docs]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from diffusers_city.cli import main as cli

DOCS = Path(__file__).resolve().parent
PICTURES = {  # demo output (under --out/<system>/) -> docs picture
    "gaussiancity/orbit.gif": "gaussiancity_demo.gif",
    "gaussiancity/input_output.png": "gaussiancity_demo.png",
    "sat2city/orbit.gif": "sat2city_orbit.gif",
    "sat2city/input_output.png": "sat2city_demo.png",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if cli(["demo", "--out", str(Path(tmp) / "demo"), "--device", "cpu"]) != 0:
            raise SystemExit("diffusers-city demo failed")
        seconds = time.perf_counter() - start
        for source, target in PICTURES.items():
            shutil.copyfile(Path(tmp) / "demo" / source, args.out / target)
            print(f"wrote {args.out / target} ({(args.out / target).stat().st_size / 1e6:.2f} MB)")
    print(f"diffusers-city demo: {seconds:.0f} s on this machine's CPU")


if __name__ == "__main__":
    main()
