"""Reading numbers: 4-digit numbers composed from official test digits, rendered as photos.

Each number takes four of the 10,000 test digits (a seeded permutation, no digit used
twice), is composed by :mod:`tests.numbers` (size jitter, wavering baseline, slant, a third
of them on ruled paper, a quarter with a shadow) and drawn as a photo file by the
generator of ``tests/photos.py``; ``Classifier.read_files`` reads them back. Two sets:
digits spaced apart (3-10 px at MNIST scale) and digits touching. For each: the whole
number right, the digit count right, and the ceiling the model allows (the four digits,
as clean 28x28 arrays, all classified right). Then the single-digit photos of
``bench_preprocess_accuracy.py`` read as numbers (one digit found, same label as
``--single``), and the time of ``predict`` on a 4-digit 12-megapixel JPEG.

Usage:
    python benchmarks/bench_numbers.py [--count 2000] [--model tests/models/int8.tflite]
        [--reader src/mnist_tflite/edge/models/reader.tflite] [--out benchmarks/results/numbers.json]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_tflite.core import data  # noqa: E402
from mnist_tflite.core.atomic import write_json  # noqa: E402
from mnist_tflite.edge.predict import Classifier, Failure, Prediction  # noqa: E402
from mnist_tflite.edge.reader import DEFAULT_READER  # noqa: E402
from tests.numbers import render_number  # noqa: E402
from tests.photos import make  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "numbers.json"


def draw_numbers(
    x: np.ndarray, y: np.ndarray, count: int, seed: int, touching: bool, owners: list | None = None
) -> Iterator[tuple[np.ndarray, bytes, str, Any]]:
    """The set's numbers, one by one: (the four test digits' indices, photo file bytes, suffix,
    how it was drawn). ``owners``, when a list, receives each photo's ground truth
    (``render_number``'s) as it is drawn; the photos are the same either way."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))[: count * 4].reshape(count, 4)
    for i, idx in enumerate(order):
        photo, suffix, info = render_number(
            [list(x[idx])],
            [list(y[idx])],
            rng,
            gap=None if touching else (3, 10),
            ruled=i % 3 == 0,
            shadow=i % 4 == 1,
            owners=owners,
        )
        yield idx, photo, suffix, info


def _number_set(clf, x, y, count: int, seed: int, touching: bool, out: Path) -> dict:
    files, truth, renders, digits = [], [], [], []
    for i, (idx, photo, suffix, info) in enumerate(draw_numbers(x, y, count, seed, touching)):
        path = out / f"{'t' if touching else 's'}{i:05d}_{info.text}{suffix}"
        path.write_bytes(photo)
        files.append(path)
        truth.append(info.text)
        renders.append(info)
        digits.append(idx)
    order = np.stack(digits)
    clean = clf.model.predict(x[order.ravel()].astype(np.float32) / 255.0).reshape(count, 4)
    ceiling = [bool((clean[i] == y[idx]).all()) for i, idx in enumerate(order)]
    t = time.perf_counter()
    answers = list(clf.read_files(files))
    seconds = time.perf_counter() - t
    read, counts = [], []
    for r in answers:
        if isinstance(r, Failure):
            read.append(None)
            counts.append(0)
        elif isinstance(r, Prediction):
            read.append(r.label)
            counts.append(1)
        else:
            # the model's best label even where unsure: accuracy, not the '?' policy
            read.append("".join(d.label for d in r.digits))
            counts.append(len(r.digits))
    right = [a == b for a, b in zip(read, truth, strict=True)]
    count_right = [c == 4 for c in counts]
    by = {}
    for key, test in (
        ("ruled paper", lambda r: r.ruled),
        ("shadow", lambda r: r.shadow),
        ("dark board", lambda r: r.polarity == "light-on-dark"),
        ("slant > 0.15", lambda r: abs(r.slant) > 0.15),
    ):
        ix = [k for k, r in enumerate(renders) if test(r)]
        by[key] = {
            "n": len(ix),
            "number_right_pct": round(100 * float(np.mean([right[k] for k in ix])), 2) if ix else None,
        }
    wrong = [
        {"file": f.name, "read": r, "digits": c}
        for f, r, t, c in zip(files, read, truth, counts, strict=True)
        if r != t
    ]
    return {
        "numbers": count,
        "number_right_pct": round(100 * float(np.mean(right)), 2),
        "count_right_pct": round(100 * float(np.mean(count_right)), 2),
        "ceiling_pct": round(100 * float(np.mean(ceiling)), 2),
        "failed": sum(r is None for r in read),
        "ms_per_photo": round(1000 * seconds / count, 1),
        "by_condition": by,
        "wrong": wrong[:40],
    }


def _single_digits(clf, x, y, count: int, out: Path) -> dict:
    made = make(x[:count], y[:count], out, count=count, seed=0)  # bench_preprocess_accuracy's photos
    paths = [p for p, _ in made]
    single = [r for r in clf.predict_files(paths)]
    numbers = list(clf.read_files(paths))
    one = same = right_single = right_number = 0
    for s, n, t in zip(single, numbers, y[:count], strict=True):
        label_s = None if isinstance(s, Failure) else s.label
        right_single += label_s == str(t)
        if isinstance(n, Failure):
            continue
        labels = [n.label] if isinstance(n, Prediction) else [d.label for d in n.digits]
        one += len(labels) == 1
        same += labels == [label_s]
        right_number += labels == [str(t)]
    return {
        "photos": count,
        "one_digit_found": one,
        "same_label_as_single": same,
        "accuracy_single_pct": round(100 * right_single / count, 2),
        "accuracy_as_number_pct": round(100 * right_number / count, 2),
    }


def _timing(model: Path, reader: Path, x, y, out: Path, runs: int) -> dict:
    """A 4-digit number on a 4000x3000 JPEG: read in-process (warm) and by the CLI (cold)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    idx = [1, 2, 3, 4]
    data_, _, _ = render_number([list(x[idx])], [list(y[idx])], rng, width=1000, ruled=False, shadow=False)
    img = Image.open(io.BytesIO(data_)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    path = out / "number_12mp.jpg"
    img.save(path, "JPEG", quality=90)
    clf = Classifier(model, reader=reader)
    reading = clf.read_number(path)
    warm = []
    for _ in range(runs):
        t = time.perf_counter()
        clf.read_number(path)
        warm.append(time.perf_counter() - t)
    cold = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _ in range(max(3, runs // 4)):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mnist_tflite", "predict", str(model), str(path), "--reader", str(reader)],
            capture_output=True,
            env=env,
            check=False,
        )
        cold.append(time.perf_counter() - t)
    return {
        "file": "4000x3000 JPEG (quality 90) of a 4-digit number",
        "bytes": path.stat().st_size,
        "read": reading.number,
        "truth": "".join(str(int(v)) for v in y[idx]),
        "read_number_ms_median": round(1000 * statistics.median(warm), 1),
        "read_number_ms_min": round(1000 * min(warm), 1),
        "cli_process_ms_median": round(1000 * statistics.median(cold), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="numbers in each set (default: 2000)")
    ap.add_argument("--singles", type=int, default=2000, help="single-digit photos (default: 2000)")
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--reader", type=Path, default=DEFAULT_READER, help="the touching-digit reader")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=20, help="timing runs (default: 20)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS.name})")
    args = ap.parse_args()
    if args.count < 1 or args.singles < 1:
        ap.error(f"--count and --singles must be at least 1 (got {args.count} and {args.singles})")
    d = data.load("embedded", log=lambda m: None)
    x, y = d.x_test, d.y_test.astype(int)
    clf = Classifier(args.model, reader=args.reader)
    with tempfile.TemporaryDirectory(prefix="numbers_") as tmp:
        out = Path(tmp)
        spaced = _number_set(clf, x, y, args.count, args.seed, False, out)
        touching = _number_set(clf, x, y, args.count, args.seed + 1, True, out)
        singles = _single_digits(clf, x, y, args.singles, out / "singles")
        timing = _timing(args.model, args.reader, x, y, out, args.runs)
    print(
        f"model {args.model.name}: {args.count} 4-digit numbers per set, composed from test digits, as photos"
    )
    print(f"{'set':<10} {'number right %':>15} {'count right %':>14} {'ceiling %':>10} {'ms/photo':>9}")
    for name, s in (("spaced", spaced), ("touching", touching)):
        print(
            f"{name:<10} {s['number_right_pct']:>15.2f} {s['count_right_pct']:>14.2f} "
            f"{s['ceiling_pct']:>10.2f} {s['ms_per_photo']:>9.1f}"
        )
    print(
        f"single-digit photos: {singles['one_digit_found']}/{singles['photos']} read as one digit, "
        f"{singles['same_label_as_single']}/{singles['photos']} with the same label as --single "
        f"({singles['accuracy_as_number_pct']:.2f}% vs {singles['accuracy_single_pct']:.2f}% right)"
    )
    print(
        f"12 MP JPEG: read_number {timing['read_number_ms_median']:.1f} ms (median, warm), "
        f"whole CLI process {timing['cli_process_ms_median']:.1f} ms; read {timing['read']!r} "
        f"(truth {timing['truth']!r}); load average {os.getloadavg()[0]:.1f}"
    )
    result = {
        "benchmark": "reading 4-digit numbers from photos (numbers composed from MNIST test digits)",
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "reader": str(args.reader.relative_to(ROOT) if args.reader.is_relative_to(ROOT) else args.reader),
        "seed": args.seed,
        "targets": {
            "spaced_number_right_pct": 95,
            "spaced_count_right_pct": 99,
            "touching_number_right_pct": 85,
        },
        "spaced": spaced,
        "touching": touching,
        "single_digits": singles,
        "timing_12mp": timing,
        "machine": {
            "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "note": "shared with other sessions while measured: wall times are inflated",
        },
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
