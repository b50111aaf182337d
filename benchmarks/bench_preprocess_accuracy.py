"""What preprocessing loses: accuracy on realistic photo files vs the same digits as clean arrays.

The first ``--count`` official test digits are rendered as photos/scans
(:mod:`benchmarks.make_photo_digits`), classified from the files by
``Classifier.predict_files`` (preprocessing + batched LiteRT), and compared with the same
model on the same digits as clean 28x28 arrays. The gap is what preprocessing costs.
Also broken down by condition (polarity, format, size, rotation, lighting, stroke).

Usage:
    python benchmarks/bench_preprocess_accuracy.py [--count 2000] [--model tests/models/int8.tflite]
        [--out benchmarks/results/preprocess_accuracy.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_tflite.core import data  # noqa: E402
from mnist_tflite.edge.predict import Classifier, Failure  # noqa: E402
from tests.photos import Render, make  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "preprocess_accuracy.json"


def measure(model: Path, count: int, seed: int = 0, workdir: Path | None = None) -> dict:
    """Render ``count`` files, classify them and the clean arrays; returns the figures."""
    d = data.load("embedded", log=lambda m: None)
    x, y = d.x_test[:count], d.y_test[:count].astype(int)
    out = workdir or Path(tempfile.mkdtemp(prefix="photo_digits_"))
    t = time.perf_counter()
    made = make(x, y, out, count=count, seed=seed)
    render_s = time.perf_counter() - t
    clf = Classifier(model)
    clean = clf.model.predict(x.astype(np.float32) / 255.0)
    t = time.perf_counter()
    results = list(clf.predict_files([p for p, _ in made]))
    classify_s = time.perf_counter() - t
    photo = np.array([-1 if isinstance(r, Failure) else r.index for r in results])
    failures = [r.problem for r in results if isinstance(r, Failure)]
    return {
        "renders": [r for _, r in made],
        "labels": y,
        "clean": clean,
        "photo": photo,
        "failures": failures,
        "render_s": render_s,
        "classify_s": classify_s,
    }


def _breakdown(renders: list[Render], y: np.ndarray, clean: np.ndarray, photo: np.ndarray) -> dict:
    def bucket(r: Render) -> dict[str, str]:
        side = max(r.size)
        return {
            "polarity": r.polarity,
            "format": r.fmt,
            "size": "60-199 px" if side < 200 else "200-399 px" if side < 400 else "400-600 px",
            "rotation": "|r|<6°" if abs(r.rotation) < 6 else "6-12°",
            "lighting": f"gradient {r.lighting:.2f}",
            "stroke": "thinner" if r.stroke < 0 else "as is" if r.stroke == 0 else "thicker",
            "blur": "blurred" if r.blur else "sharp",
        }

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(renders):
        for k, v in bucket(r).items():
            groups[(k, v)].append(i)
    table = {}
    for (k, v), idx in sorted(groups.items()):
        ix = np.array(idx)
        table[f"{k}: {v}"] = {
            "n": len(ix),
            "clean": round(float((clean[ix] == y[ix]).mean()) * 100, 2),
            "photo": round(float((photo[ix] == y[ix]).mean()) * 100, 2),
        }
    return table


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="write the files here instead of a temporary directory")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS.name})")
    args = ap.parse_args()
    m = measure(args.model, args.count, args.seed, args.keep)
    y, clean, photo = m["labels"], m["clean"], m["photo"]
    acc_clean = float((clean == y).mean()) * 100
    acc_photo = float((photo == y).mean()) * 100
    table = _breakdown(m["renders"], y, clean, photo)
    print(f"model {args.model.name}, {args.count} official test digits, as clean arrays and as photo files")
    print(f"{'condition':<32} {'n':>5} {'clean %':>8} {'photo %':>8} {'gap':>6}")
    for name, row in table.items():
        gap = row["clean"] - row["photo"]
        print(f"{name:<32} {row['n']:>5} {row['clean']:>8.2f} {row['photo']:>8.2f} {gap:>6.2f}")
    print(f"{'ALL':<32} {len(y):>5} {acc_clean:>8.2f} {acc_photo:>8.2f} {acc_clean - acc_photo:>6.2f}")
    print(f"failed files: {len(m['failures'])}; classify {len(y) / m['classify_s']:.0f} files/s")
    result = {
        "benchmark": "preprocessing accuracy gap (photo files vs clean 28x28 arrays, same digits)",
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "count": len(y),
        "seed": args.seed,
        "accuracy_clean_pct": round(acc_clean, 2),
        "accuracy_photo_pct": round(acc_photo, 2),
        "gap_points": round(acc_clean - acc_photo, 2),
        "target_gap_points": 2.0,
        "failed_files": len(m["failures"]),
        "files_per_s": round(len(y) / m["classify_s"], 1),
        # a speed means little without the machine and what else ran on it
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "by_condition": table,
        "wrong_on_photo_only": [
            asdict(r) for r, c, p, t in zip(m["renders"], clean, photo, y, strict=True) if c == t and p != t
        ][:50],
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
