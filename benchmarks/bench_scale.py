"""Does throughput hold as the set grows? Fashion-MNIST's 60,000 training images, streamed.

Each (variant, set size) runs in a fresh process that loads the set, then classifies its
first N images in slices of ``--slice`` images (normalize -> runner -> argmax), keeping
only the int16 predictions: memory must not grow with N (no float64, no full
probability matrix). Reports images/s and the peak RSS above the loaded data.

Usage:
    python benchmarks/bench_scale.py [--data /usr/share/datasets/fashion-mnist] [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "scale.json"
SIZES = (5_000, 10_000, 20_000, 40_000, 60_000)


def _rss_mb() -> float:
    """Current resident set size (MB), from /proc (ru_maxrss also counts loading the set)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(model_path: str, data_dir: str, n: int, slice_size: int) -> dict[str, Any]:
    """In this process: stream the first n images through the runner; time, memory, predictions."""
    import numpy as np

    from mnist_tflite.core import data
    from mnist_tflite.edge.infer import TfliteModel

    x = data.load(data_dir).x_train
    if n > len(x):
        raise SystemExit(f"{data_dir}: {len(x)} training images, asked for {n}")
    model = TfliteModel(model_path)
    model.predict_proba(data.normalize(x[:64]))  # warm-up
    base_rss = _rss_mb()
    preds = np.empty(n, dtype=np.int16)
    stream_rss = base_rss
    t = time.perf_counter()
    for s in range(0, n, slice_size):
        probs = model.predict_proba(data.normalize(x[s : min(s + slice_size, n)]))  # float32 (slice, 10)
        preds[s : s + len(probs)] = probs.argmax(1)
        stream_rss = max(stream_rss, _rss_mb())  # sampled after each slice: one /proc read, ~10 µs
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": n,
        "seconds": seconds,
        "ips": n / seconds,
        "rss_before_mb": base_rss,
        "peak_rss_mb": peak,
        "growth_mb": stream_rss - base_rss,
        "load": os.getloadavg()[0],
        "class_counts": np.bincount(preds, minlength=10).tolist(),
    }


def _scheduling() -> str:
    """This process's nice value and autogroup (on a shared machine, say how it was measured)."""
    try:
        with open("/proc/self/autogroup") as f:
            group = f.read().strip()
    except OSError:
        group = "no autogroup"
    return f"nice {os.nice(0)}, {group}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="IDX directory with train-*")
    p.add_argument("--models", type=Path, default=ROOT / "tests" / "models")
    p.add_argument("--variants", default="float32,int8")
    p.add_argument("--slice", type=int, default=4096, help="images per predict_proba call")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="one repetition, sizes 10k and 60k")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--nice", type=int, default=0, help="scheduling priority (negative: root only)")
    p.add_argument("--child", nargs=4, metavar=("MODEL", "DATA", "N", "SLICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        model, data_dir, n, sl = args.child
        print("RESULT " + json.dumps(measure(model, data_dir, int(n), int(sl))), flush=True)
        return 0
    reps = args.reps or (1 if args.quick else 3)
    if args.nice:
        os.nice(args.nice)
    sizes = (10_000, 60_000) if args.quick else SIZES
    jobs = [(v, n) for v in args.variants.split(",") for n in sizes]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {j: [] for j in jobs}
    started = time.time()
    for rep in range(reps):
        shift = rep * len(jobs) // reps
        for v, n in jobs[shift:] + jobs[:shift]:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(args.models / f"{v}.tflite"),
                args.data,
                str(n),
                str(args.slice),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            runs[(v, n)].append(json.loads(line[7:]))
            print(f"\r  rep {rep + 1}/{reps} {v} {n:,}   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    rows = []
    for (v, n), rs in runs.items():
        ips = sorted(r["ips"] for r in rs)
        rows.append(
            {
                "variant": v,
                "images": n,
                "ips": statistics.median(ips),
                "ips_min": ips[0],
                "ips_max": ips[-1],
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                "growth_mb": statistics.median(r["growth_mb"] for r in rs),
                "load": statistics.median(r["load"] for r in rs),
                "runs": rs,
            }
        )
    lines = [
        "| variant | images | images/s (median) | spread (min–max) | peak RSS (MB) | RSS growth (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['images']:,} | {r['ips']:,.0f} | {r['ips_min']:,.0f}–{r['ips_max']:,.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['growth_mb']:.1f} |"
        )
    summary = {}
    for v in args.variants.split(","):
        vr = [r for r in rows if r["variant"] == v]
        small, large = vr[0], vr[-1]
        summary[v] = {
            "ips_ratio_largest_to_smallest": large["ips"] / small["ips"],
            "peak_rss_growth_mb_largest_vs_smallest": large["peak_rss_mb"] - small["peak_rss_mb"],
        }
    table = "\n".join(lines)
    print(table)
    print(json.dumps(summary, indent=1))
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_tflite.core.atomic import write_json
    from mnist_tflite.training.pipeline import machine_info

    write_json(
        args.out,
        {
            "format": "mnist-tflite-bench-scale/1",
            "data": args.data,
            "slice": args.slice,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "repetitions": reps,
            "nice": args.nice,
            "scheduling": _scheduling(),
            "machine": machine_info(),
            "summary": summary,
            "rows": rows,
            "table": table,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
