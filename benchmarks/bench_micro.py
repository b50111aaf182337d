"""How long the TFLM check of the official 10,000 test images takes (target: under 60 s).

Runs ``micro.verify`` (TFLM in forked children, one per core by default, plus LiteRT with
builtin kernels and with XNNPACK for the comparison) and the arena bisection. Records wall
time, the children's CPU time (user + sys, less sensitive to other load on the machine) and
the load average, so a slow run on a busy machine can be told from a slow implementation.

Usage:
    python benchmarks/bench_micro.py [--model tests/models/int8.tflite] [--workers 2,1] [--data embedded]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "micro.json"
TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    parser.add_argument("--workers", default=str(os.cpu_count() or 1), help="comma-separated, e.g. 2,1")
    parser.add_argument("--data", default="embedded")
    args = parser.parse_args(argv)

    from mnist_tflite.core import data
    from mnist_tflite.micro.tflm import export as micro

    ds = data.load(args.data, log=lambda m: None)
    raw, info = micro.load(args.model)
    t = time.perf_counter()
    arena = micro.measure_arena(raw, info, args.model)
    arena_s = time.perf_counter() - t
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        load_before = os.getloadavg()[0]
        c0, t0 = os.times(), time.perf_counter()
        v = micro.verify(
            args.model, ds.x_test, ds.y_test, arena_bytes=arena["recommended_bytes"], workers=workers
        )
        wall, c1 = time.perf_counter() - t0, os.times()
        child_cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        rows.append(
            {
                "workers": workers,
                "images": v["images"],
                "tflm_wall_s": v["tflm_seconds"],
                "tflm_cpu_s": child_cpu,
                "cpu_ms_per_image": 1000 * child_cpu / v["images"],
                "verify_total_wall_s": wall,
                "load_avg_1min_before": load_before,
                "accuracy": v["accuracy"],
                "vs_litert_builtin": v["vs_litert_builtin"],
                "vs_litert_xnnpack": v["vs_litert_xnnpack"],
                "under_target": v["tflm_seconds"] < TARGET_S,
            }
        )

    print(f"model {args.model} ({len(raw):,} bytes, {info.macs:,} MACs); cores {os.cpu_count()}")
    search = arena["search"]
    print(f"arena bisection: {arena['min_bytes']:,} bytes in {search['probes']} probes, {arena_s:.2f} s")
    head = (
        "| workers | images | TFLM wall (s) | TFLM CPU (s) | CPU ms/img | load | accuracy "
        "| vs builtin | vs XNNPACK |"
    )
    print(head + "\n|" + "---|" * 9)
    for r in rows:
        b, x = r["vs_litert_builtin"], r["vs_litert_xnnpack"]
        print(
            f"| {r['workers']} | {r['images']:,} | {r['tflm_wall_s']:.1f} | {r['tflm_cpu_s']:.1f} | "
            f"{r['cpu_ms_per_image']:.2f} | {r['load_avg_1min_before']:.1f} | {100 * r['accuracy']:.2f} % | "
            f"{b['rows_differing']} rows | {x['rows_differing']} rows, {x['predictions_differing']} preds, "
            f"max {x['max_abs_diff']:g} steps |"
        )
    result = {
        "model": str(args.model),
        "target_s": TARGET_S,
        "arena": {k: arena[k] for k in ("min_bytes", "recommended_bytes")} | {"search_s": arena_s},
        "runs": rows,
        "machine": {
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)
    print(f"wrote {RESULTS}")
    return 0 if all(r["under_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
