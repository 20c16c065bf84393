"""Compare the loss curves and throughput of training runs (their ``train_log.jsonl``).

Made for the data-parallel check: one stage trained on 1 GPU and on N GPUs at the same global
batch should follow the same loss curve. Prints, per window of steps, each run's mean of every
logged loss term, and each run's throughput over the steps they share (after the first logged
step, which carries start-up and kernel compilation).

    python benchmarks/compare_loss_curves.py 1gpu=runs/vae_1gpu/train_log.jsonl 2gpu=runs/vae/train_log.jsonl \
        --samples-per-step 16 --window 20 --terms dense_bce sparse_bce loss
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_log(path: Path) -> dict[int, dict[str, float]]:
    """``{step: record}`` of a ``train_log.jsonl`` (a resumed run's later record of a step wins)."""
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no records")
    return {int(r["step"]): r for r in records}


def window_means(
    log: dict[int, dict[str, float]], terms: list[str], window: int, last: int
) -> list[tuple[int, int, dict[str, float]]]:
    rows = []
    for start in range(1, last + 1, window):
        steps = [s for s in log if start <= s < start + window and s <= last]
        if steps:
            rows.append((start, min(start + window - 1, last), {t: sum(log[s][t] for s in steps) / len(steps) for t in terms}))
    return rows


def throughput(log: dict[int, dict[str, float]], last: int) -> float:
    """Optimizer steps per second between the first logged step and ``last``."""
    steps = sorted(s for s in log if s <= last)
    if len(steps) < 2:
        raise ValueError("need at least two logged steps to measure throughput")
    return (steps[-1] - steps[0]) / (log[steps[-1]]["elapsed_s"] - log[steps[0]]["elapsed_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="NAME=PATH of a train_log.jsonl (the first is the reference)")
    p.add_argument("--terms", nargs="+", default=["loss"])
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--samples-per-step", type=int, default=None, help="global batch, to report samples/s")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            p.error(f"{spec!r}: expected NAME=PATH")
        runs[name] = read_log(Path(path))
    last = min(max(log) for log in runs.values())
    for name, log in runs.items():
        missing = [t for t in args.terms if t not in next(iter(log.values()))]
        if missing:
            p.error(f"run {name} logs no {missing}")
    names = list(runs)
    header = "| steps | " + " | ".join(f"{t} {n}" for t in args.terms for n in names) + " |"
    lines = [header, "|" + " --- |" * (1 + len(args.terms) * len(names))]
    per_run = {n: window_means(runs[n], args.terms, args.window, last) for n in names}
    for i, (start, end, _) in enumerate(per_run[names[0]]):
        cells = [f"{per_run[n][i][2][t]:.4g}" if i < len(per_run[n]) else "-" for t in args.terms for n in names]
        lines.append(f"| {start}-{end} | " + " | ".join(cells) + " |")
    lines.append("")
    base = throughput(runs[names[0]], last)
    for n in names:
        rate = throughput(runs[n], last)
        samples = f", {rate * args.samples_per_step:.1f} samples/s" if args.samples_per_step else ""
        lines.append(f"{n}: {rate:.3f} steps/s{samples} over steps <= {last} ({rate / base:.2f}x {names[0]})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
