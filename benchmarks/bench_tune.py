"""The 30-trial ``mnist-tflite tune`` run, and the issue's figures checked against it.

Runs ``mnist-tflite tune --flash 48KB --ram 32KB --trials 30 --max-epochs 90 --folds 3
--finalists 10`` on a local Ray instance (all cores), on the embedded 5,000-image training
sample, then writes ``benchmarks/results/tune.json``: wall time, trial counts, the best model
per budget with flash, TFLM arena, validation, cross-validated and test accuracy, and whether
each target was met by the model ``tune`` hands out for that budget (chosen without the test
set):

- a model <= 8 KB flash with a TFLM arena <= 4 KB at >= 98.0 % test accuracy;
- a model <= 16 KB flash at >= 98.5 %;
- the front dominates the hand-designed seed and tiny int8 models;
- 30 trials in <= 25 min.

Usage:
    python benchmarks/bench_tune.py [--out runs/tune30]
    python benchmarks/bench_tune.py --summarize runs/tune30   # figures of a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mnist_tflite.core.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tune.json"
ARGS = (
    *("--flash", "48KB", "--ram", "32KB", "--trials", "30", "--max-epochs", "90"),
    *("--folds", "3", "--finalists", "10"),
)


def summarize(out: Path, wall_s: float | None = None, load: list[float] | None = None) -> dict[str, Any]:
    doc = json.loads((out / "front.json").read_text(encoding="utf-8"))
    trials = doc["trials"]
    front = [t for t in trials if t.get("front")]

    def handed_out(flash: int, ram: int | None) -> dict[str, Any] | None:
        """The model tune hands out for this budget (its cross-validated best)."""
        for b in doc["best"]:
            if b["flash_budget"] == flash and b["ram_budget"] == ram:
                return b
        return None

    small = handed_out(8192, 4096)
    medium = handed_out(16384, 32768)
    wall = doc["search"]["wall_seconds"]
    cpu_s = sum(t["seconds"] or 0 for t in trials)
    return {
        "benchmark": "mnist-tflite tune " + " ".join(ARGS),
        "data": doc["data"],
        "search": doc["search"],
        "wall_minutes": round(wall / 60, 1),
        "wall_minutes_note": "the whole command: the 30 trials, then the finalists' cross-validation "
        "and the front's refit",
        "trials_minutes": round(doc["search"]["trials_seconds"] / 60, 1)
        if "trials_seconds" in doc["search"]
        else None,
        "process_wall_minutes": round(wall_s / 60, 1) if wall_s else None,
        "trial_seconds_total": round(cpu_s),
        "trial_seconds_total_note": "sum of every trial's own wall time (one CPU each): the search's work",
        "load_average_during_run": load,
        "best_per_budget": doc["best"],
        "front": [
            {
                k: t[k]
                for k in (
                    *("trial", "point", "arch", "flash", "arena", "macs"),
                    *("val_accuracy", "cv_accuracy", "test_accuracy"),
                )
            }
            for t in sorted(front, key=lambda t: t["flash"])
        ],
        "targets": {
            "<= 8 KB flash, arena <= 4 KB, >= 98.0 % test (best-flash8KB-ram4KB.tflite)": {
                "met": bool(small and small["test_accuracy"] >= 0.980),
                "model": small,
            },
            "<= 16 KB flash, >= 98.5 % test (best-flash16KB-ram32KB.tflite)": {
                "met": bool(medium and medium["test_accuracy"] >= 0.985),
                "model": medium,
            },
            "front dominates seed and tiny": {
                "met": all(h["dominated_by"] for h in doc["hand_designed"]),
                "hand_designed": doc["hand_designed"],
            },
            "30 trials <= 25 min (the whole command)": {
                "met": wall <= 25 * 60,
                "minutes": round(wall / 60, 1),
            },
        },
        "diagnosis_test_accuracy_of_every_trained_model": _every_trained(out),
        "diagnosis_note": "measured by this script after the search, for diagnosis only: each trial's "
        "own model (trained on the images outside fold 0) on the test set. tune never looks at "
        "the test set except for the refit models of its front; this shows how well validation and "
        "cross-validation ranked what the search trained.",
        "machine": {"cpus": os.cpu_count()},
    }


def _every_trained(out: Path) -> list[dict[str, Any]]:
    import numpy as np

    from mnist_tflite.core import data
    from mnist_tflite.edge.infer import TfliteModel

    ds = data.load("embedded", log=lambda m: None)
    x = data.normalize(ds.x_test)
    rows = []
    for path in sorted(out.glob("ray/trial_*/checkpoint_*/model.tflite")):
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        accuracy = float(np.mean(TfliteModel(path).predict(x) == ds.y_test))
        rows.append({"arch": meta["architecture"], "flash": meta["size_bytes"], "test_accuracy": accuracy})
    return sorted(rows, key=lambda r: r["flash"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tune30")
    ap.add_argument("--summarize", type=Path, help="only summarize the finished run in this directory")
    ap.add_argument("--load", help="load averages seen during the run, comma-separated (for the record)")
    args = ap.parse_args()
    load = [float(x) for x in args.load.split(",")] if args.load else None
    if args.summarize:
        result = summarize(args.summarize, load=load)
    else:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "mnist_tflite", "tune", "--out", str(args.out), *ARGS]
        subprocess.run(cmd, check=False)
        result = summarize(args.out, time.perf_counter() - t, load=load or list(os.getloadavg()))
    write_json(RESULTS, result)
    for name, target in result["targets"].items():
        print(f"{'met' if target['met'] else 'NOT met'}: {name}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
