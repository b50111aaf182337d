"""The 30-trial ``mnist-tflite tune`` run on all 60,000 training images, and issue 18's figures.

Runs ``mnist-tflite tune --flash 48KB --ram 32KB`` with every other option at its default
(spelled out in ``ARGS``: 30 trials of at most 30 epochs, 3 folds, 10 finalists, a 12,000-image
search subset, 15 refit epochs) on a local Ray instance (all cores), on the full official
training set (``--data auto``): trials and cross-validation on the seeded subset, the front
refit on all 60,000. Then writes
``benchmarks/results/tune.json``: wall time, CPU seconds of the whole process tree, trial
counts, the best model per budget with flash, TFLM arena, validation, cross-validated and test
accuracy, and whether each target was met by the model ``tune`` hands out for that budget
(chosen without the test set):

- <= 8 KB flash and <= 4 KB TFLM arena: >= 99.0 % test;
- <= 16 KB flash: >= 99.3 %; <= 32 KB flash: >= 99.45 %;
- the front dominates the 5k-sample search's front (7,896 B 98.33 %, 13,088 B 98.59 %,
  23,672 B 98.78 %) and the seed int8 models (41,824 B, 99.12 %; today's default run
  41,848 B, 99.27 %);
- 30 trials plus finalists and refit in <= 60 min wall.

Usage:
    python benchmarks/bench_tune.py [--out runs/tune60k]   # not niced: wall time is a figure
    python benchmarks/bench_tune.py --summarize runs/tune60k   # figures of a finished run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mnist_tflite.core.atomic import write_json
from mnist_tflite.core.reaper import descendants

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tune.json"
# a run stopped before its report: what it had done, beside (not over) the last finished run's figures
PARTIAL = RESULTS.with_name("tune_partial.json")
ARGS = (
    *("--flash", "48KB", "--ram", "32KB", "--trials", "30", "--max-epochs", "30"),
    *("--folds", "3", "--finalists", "10", "--search-images", "12000", "--refit-epochs", "15"),
    *("--data", "auto"),
)
# the front of the search on the 5,000-image sample (flash, test accuracy), and the seed int8
# model: the first one trained on 60k (6 epochs) and today's default `run` (12 epochs)
PREVIOUS = ((7_896, 0.9833), (13_088, 0.9859), (23_672, 0.9878), (41_824, 0.9912), (41_848, 0.9927))


def summarize(out: Path, run: dict[str, Any] | None = None) -> dict[str, Any]:
    if not (out / "front.json").is_file():  # stopped before the end: what the trials reported
        return {
            "benchmark": "mnist-tflite tune " + " ".join(ARGS),
            "finished": False,
            "run": run,
            **_partial(out),
            "machine": {"cpus": os.cpu_count()},
        }
    doc = json.loads((out / "front.json").read_text(encoding="utf-8"))
    trials = doc["trials"]
    front = [t for t in trials if t.get("front")]

    def handed_out(flash: int, ram: int | None) -> dict[str, Any] | None:
        """The model tune hands out for this budget (its cross-validated best)."""
        for b in doc["best"]:
            if b["flash_budget"] == flash and b["ram_budget"] == ram:
                return b
        return None

    def target(model: dict[str, Any] | None, accuracy: float) -> dict[str, Any]:
        return {"met": bool(model and model["test_accuracy"] >= accuracy), "model": model}

    def dominated(flash: int, accuracy: float) -> dict[str, Any] | None:
        wins = [t for t in front if t["flash"] <= flash and t["test_accuracy"] >= accuracy]
        return min(wins, key=lambda t: t["flash"], default=None)

    wall = doc["search"]["wall_seconds"]
    previous = [
        {"flash": f, "test_accuracy": a, "dominated_by": (w := dominated(f, a)) and w["trial"]}
        for f, a in PREVIOUS
    ]
    return {
        "benchmark": "mnist-tflite tune " + " ".join(ARGS),
        "data": doc["data"],
        "search": doc["search"],
        "wall_minutes": round(wall / 60, 1),
        "wall_minutes_note": "the whole command: the 30 trials, then the finalists' cross-validation "
        "and the front's refit",
        "trials_minutes": round(doc["search"]["trials_seconds"] / 60, 1),
        "run": run,
        "trial_seconds_total": round(sum(t["seconds"] or 0 for t in trials)),
        "trial_seconds_total_note": "sum of every trial's own wall time (one CPU each)",
        "best_per_budget": doc["best"],
        "published": doc.get("published"),
        "front": [
            {
                k: t.get(k)
                for k in (
                    *("trial", "point", "arch", "learning_rate", "augment", "flash", "arena", "macs"),
                    *("val_accuracy", "cv_accuracy", "test_accuracy"),
                )
            }
            for t in sorted(front, key=lambda t: t["flash"])
        ],
        "targets": {
            "<= 8 KB flash, arena <= 4 KB, >= 99.0 % test (best-flash8KB-ram4KB.tflite)": target(
                handed_out(8192, 4096), 0.990
            ),
            "<= 16 KB flash, >= 99.3 % test (best-flash16KB-ram32KB.tflite)": target(
                handed_out(16384, 32768), 0.993
            ),
            "<= 32 KB flash, >= 99.45 % test (best-flash32KB-ram32KB.tflite)": target(
                handed_out(32768, 32768), 0.9945
            ),
            "front dominates the 5k-sample front and seed int8": {
                "met": all(p["dominated_by"] for p in previous),
                "points": previous,
            },
            "30 trials + finalists + refit <= 60 min (the whole command)": {
                "met": wall <= 60 * 60,
                "minutes": round(wall / 60, 1),
            },
        },
        "diagnosis_test_accuracy_of_every_trained_model": _every_trained(out),
        "diagnosis_note": "measured by this script after the search, for diagnosis only: each trial's "
        "own model (trained on the search subset less fold 0) on the test set. tune never looks at "
        "the test set except for the refit models of its front; this shows how well validation and "
        "cross-validation ranked what the search trained.",
        "machine": {"cpus": os.cpu_count()},
    }


class _CpuMeter:
    """CPU seconds of a process tree, sampled from /proc every second (a process that lives
    less than a second between two samples is missed), and of the whole machine; the
    machine's 1-minute load average once a minute."""

    def __init__(self, root: int) -> None:
        self.root, self.seen, self.stop = root, {}, threading.Event()
        self.loads: list[float] = []
        self.machine0 = _machine_busy_s()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        ticks = 0
        while not self.stop.wait(1.0):
            if ticks % 60 == 0:
                self.loads.append(round(os.getloadavg()[0], 2))
            ticks += 1
            for pid, start in descendants(self.root) | {(self.root, 0)}:
                cpu = _cpu_s(pid)
                if cpu is not None:
                    self.seen[(pid, start)] = max(cpu, self.seen.get((pid, start), 0.0))

    def result(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        return {
            "cpu_seconds_tune": round(sum(self.seen.values()), 1),
            "cpu_seconds_machine": round(_machine_busy_s() - self.machine0, 1),
            "load_average_1min_each_minute": self.loads,
        }


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    v = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _partial(out: Path) -> dict[str, Any]:
    """What a search stopped before its report had done: each trial's last report (Ray's
    ``result.json``, one JSON line per report), each finalist's folds so far, and each refit
    model that was written, with its test accuracy (the refit models are the ones handed out)."""
    keys = ("point", "arch", "status", "flash", "arena", "epoch", "keras_val_accuracy", "val_accuracy")
    trials = []
    for path in sorted(out.glob("ray/trial_*/result.json")):
        lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        if lines:
            r = json.loads(lines[-1])
            trials.append({"trial": path.parent.name.removeprefix("trial_"), **{k: r.get(k) for k in keys}})
    finalists = []
    for folder in sorted((out / "finalists").glob("*")):
        folds = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(folder.glob("fold*.json"))]
        row: dict[str, Any] = {"trial": folder.name, "folds": folds}
        if (folder / "refit.json").is_file():
            row["refit"] = json.loads((folder / "refit.json").read_text(encoding="utf-8"))
            row["refit"]["test_accuracy"] = _test_accuracy(folder / "model.tflite")
        finalists.append(row)
    return {"trials": trials, "finalists": finalists}


@functools.cache
def _test_set() -> tuple[Any, Any]:
    from mnist_tflite.core import data

    ds = data.load("embedded", test_only=True, log=lambda m: None)
    return data.normalize(ds.x_test), ds.y_test


def _test_accuracy(path: Path) -> float:
    """An int8 model's accuracy on the 10,000 test images."""
    import numpy as np

    from mnist_tflite.edge.infer import TfliteModel

    x, y = _test_set()
    return float(np.mean(TfliteModel(path).predict(x) == y))


def _every_trained(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(out.glob("ray/trial_*/checkpoint_*/model.tflite")):
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        rows.append(
            {"arch": meta["architecture"], "flash": meta["size_bytes"], "test_accuracy": _test_accuracy(path)}
        )
    return sorted(rows, key=lambda r: r["flash"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tune60k")
    ap.add_argument("--summarize", type=Path, help="only summarize the finished run in this directory")
    args = ap.parse_args()
    if args.summarize:
        result = summarize(args.summarize)
    else:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "mnist_tflite", "tune", "--out", str(args.out), *ARGS]
        proc = subprocess.Popen(cmd)
        meter = _CpuMeter(proc.pid)
        proc.wait()
        run = {
            "process_wall_seconds": round(time.perf_counter() - t, 1),
            **meter.result(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "cpu_seconds_tune: the tune process and every process it started (Ray, workers); "
            "cpu_seconds_machine: every process on the machine meanwhile (other sessions shared "
            "the 2 cores)",
        }
        result = summarize(args.out, run)
    if result.get("finished") is False:
        write_json(PARTIAL, result)
        sys.exit(
            f"bench_tune: the search in {args.summarize or args.out} stopped before its report; "
            f"what it had done is in {PARTIAL.relative_to(ROOT)} ({RESULTS.relative_to(ROOT)} untouched)"
        )
    write_json(RESULTS, result)
    for name, target in result["targets"].items():
        print(f"{'met' if target['met'] else 'NOT met'}: {name}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
