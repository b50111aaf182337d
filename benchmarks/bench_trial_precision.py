"""Seconds per epoch of a ``tune`` trial's training in float32 and in mixed bfloat16.

Each tune trial, cross-validation fold and refit trains on one CPU thread. bfloat16 halves the
CPU per image of the seed CNN at batch 256 on 2 threads (the training sweep); this asks whether
it would shorten tune's three steps too. Each row trains a starting point of the search space
as a trial does (the seeded 12,000-image search subset, a third held out, 1 thread) for
``--epochs`` epochs in a fresh process, one row after another (nothing else running), and
times every epoch; the first epoch (graph building) is left out of the mean.

Usage:
    python benchmarks/bench_trial_precision.py [--points micro deep16] [--epochs 4]

Writes ``benchmarks/results/trial_precision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnist_tflite.core.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "trial_precision.json"
VARIANTS = (("float32", 128), ("mixed_bfloat16", 128), ("mixed_bfloat16", 256))

CHILD = """
import json, sys, time
from mnist_tflite.scale import space, trial
from mnist_tflite.training.train import TrainConfig, train

name, precision, batch, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = dict(space.starting_points())[name]
settings = {"data": "auto", "seed": 0, "threads": 1, "search_images": 12000}
spec, lr = space.from_config(config)
arch = spec.architecture(space.point_name(spec, lr) or "tuned")
ds, _ = trial._setup(settings)
ends = []
cfg = TrainConfig(arch=arch.name, epochs=epochs, learning_rate=lr, augment=space.augments(config),
                  val_fraction=1 / 3, seed=0, batch_size=batch, precision=precision)
t0 = time.perf_counter()
train(ds, cfg, architecture=arch, on_epoch=lambda e, logs: ends.append(time.perf_counter()),
      log=lambda m: None)
print(json.dumps([b - a for a, b in zip([t0] + ends[:-1], ends)]))
"""


def _cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")


def _row(point: str, precision: str, batch: int, epochs: int) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, point, precision, str(batch), str(epochs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode:
        sys.exit(f"bench_trial_precision: {point} {precision} failed: {res.stderr.strip().splitlines()[-1]}")
    per = json.loads(res.stdout.strip().splitlines()[-1])
    rest = per[1:] or per
    return {
        "point": point,
        "precision": precision,
        "batch": batch,
        "epoch_seconds": [round(s, 2) for s in per],
        "mean_seconds_after_first": round(sum(rest) / len(rest), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", nargs="+", default=["micro", "deep16"], help="starting points to train")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per row (at least 2)")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error(f"--epochs must be at least 2 (the first is left out), received {args.epochs}")
    rows = []
    print(f"{'point':8} {'precision':15} {'batch':>5} {'s/epoch':>8} {'vs float32':>10}")
    for point in args.points:
        base = None
        for precision, batch in VARIANTS:
            row = _row(point, precision, batch, args.epochs)
            base = base or row["mean_seconds_after_first"]
            row["ratio_to_float32"] = round(row["mean_seconds_after_first"] / base, 2)
            rows.append(row)
            print(
                f"{point:8} {precision:15} {batch:>5} {row['mean_seconds_after_first']:>8.2f} "
                f"{row['ratio_to_float32']:>9.2f}x",
                flush=True,
            )
    write_json(
        RESULTS,
        {
            "benchmark": "one tune trial's training per epoch, 1 thread, 8,000 of the search subset's images",
            "epochs": args.epochs,
            "rows": rows,
            "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count()},
            "note": "rows run one after another in fresh processes; nothing else was running",
        },
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
