"""Time `procedural_city` (CPU; not a test).

    OMP_NUM_THREADS=1 python benchmarks/procedural_speed.py --size-m 1000 --mpp 1.0 --repeats 1

Prints the generation time of the rasters alone and of the full scene (points + image), the
point count and the class histogram of the points.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diffusers_city.data import CLASSES, procedural_city


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-m", type=float, default=1000.0)
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--points-per-m2", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    rows = []
    for label, kwargs in (("rasters + image", dict(with_points=False)), ("full scene", {})):
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            scene = procedural_city(args.seed + r, args.size_m, args.mpp, args.points_per_m2, **kwargs)
            times.append(time.perf_counter() - t0)
        rows.append({"what": label, "seconds_min": min(times), "seconds_mean": float(np.mean(times)), "points": scene.num_points})
    hist = np.bincount(scene.point_classes, minlength=len(CLASSES))
    print(json.dumps({"args": vars(args), "results": rows, "point_classes": dict(zip(CLASSES, hist.tolist()))}, indent=1))
    print(f"\n| what | s (min of {args.repeats}) | points |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['what']} | {row['seconds_min']:.2f} | {row['points']:,} |")


if __name__ == "__main__":
    main()
