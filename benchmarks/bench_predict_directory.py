"""A directory of 10,000 image files through ``Classifier.predict_files``: batches, speed, memory.

The official test digits are written as small scans (56x56 PNG, dark ink on light paper)
by a child process; this process then classifies the directory, counting interpreter
calls (``Interpreter.invoke``), and records files/s, accuracy and its own peak RSS.

Usage:
    python benchmarks/bench_predict_directory.py [--count 10000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict_directory.json"

WRITE = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from mnist_tflite.core import data
d, out, n = data.load("embedded", log=lambda m: None), Path(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    j = i % len(d.x_test)
    img = Image.fromarray(255 - d.x_test[j]).resize((56, 56), Image.Resampling.BICUBIC)
    img.save(out / f"{i:05d}_{d.y_test[j]}.png", compress_level=1)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="digits_dir_"))
    subprocess.run([sys.executable, "-c", WRITE, str(out), str(args.count)], check=True)

    from ai_edge_litert.interpreter import Interpreter

    from mnist_tflite.edge.predict import Classifier, Failure

    invokes = [0]
    real_invoke = Interpreter.invoke

    def counting_invoke(self):
        invokes[0] += 1
        return real_invoke(self)

    Interpreter.invoke = counting_invoke
    clf = Classifier(args.model, buffer_size=args.batch_size)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    right = failed = total = 0
    for r in clf.predict_files([out]):
        total += 1
        if isinstance(r, Failure):
            failed += 1
        else:
            right += r.label == Path(r.source).stem.split("_")[1]
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "classify a directory of image files (Classifier.predict_files)",
        "files": total,
        "failed": failed,
        "batch_size": args.batch_size,
        "interpreter_invokes": invokes[0],
        "seconds": round(seconds, 2),
        "files_per_s": round(total / seconds, 1),
        "accuracy_pct": round(100 * right / max(1, total - failed), 2),
        "peak_rss_mb_before": round(rss_before, 1),
        "peak_rss_mb_after": round(rss_after, 1),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    header = ("files", "batch", "invokes", "seconds", "files/s", "acc %", "peak RSS MB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (7, 6, 8, 8, 8, 6, 12), strict=True)))
    print(
        f"{total:>7} {args.batch_size:>6} {invokes[0]:>8} {seconds:>8.1f} {total / seconds:>8.1f} "
        f"{result['accuracy_pct']:>6.2f} {rss_after:>12.1f}"
    )
    write_json(RESULTS, result)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
