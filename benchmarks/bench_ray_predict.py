"""``predict --ray`` (Ray Data) against the local runner, side by side, on the same inputs.

Inputs: the 60,000 Fashion-MNIST training images (``/usr/share/datasets/fashion-mnist``, read
with ``mnist_tflite.core.data``) as one ``.npy`` of 28x28 arrays, and (``--scans N``) N of them as
PNG scans (dark ink on light paper, 56x56: the full photo preprocessing runs). The model is
``tests/models/int8.tflite`` (an MNIST digit model: on clothes its answers are meaningless,
but they must be the same answers on both paths).

Each path runs in its own child process, sampled every 0.1 s for the resident memory of its
whole process tree (Ray's GCS, raylet and workers included): identical answers (count),
throughput, Ray's ratio to the local one, Ray's start-up overhead (``ray.init`` and the time
to the first result), peak memory. JSON to ``benchmarks/results/ray_predict.json``.

Usage:
    python benchmarks/bench_ray_predict.py [--scans 10000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_tflite.core.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ray_predict.json"
FASHION = Path("/usr/share/datasets/fashion-mnist")

CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
phase, model, batch, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[4]), Path(sys.argv[5])
inputs = [Path(p) for p in sys.argv[3].split(",")]
t0 = time.perf_counter()
labels, sources, marks = [], [], {}
if phase == "local":
    from mnist_tflite.edge.predict import Classifier, Failure
    clf = Classifier(model, batch_size=batch)
    marks["ready_s"] = time.perf_counter() - t0
    for r in clf.predict_files(inputs):
        if "first_s" not in marks:
            marks["first_s"] = time.perf_counter() - t0
        labels.append("" if isinstance(r, Failure) else r.label)
        sources.append(r.source)
else:
    from mnist_tflite.scale.cluster import connected
    from mnist_tflite.scale.ray_predict import predict_ray
    with connected() as ray:
        marks["ray_init_s"] = time.perf_counter() - t0
        for r in predict_ray(model, inputs, ray=ray, batch_size=batch):
            if "first_s" not in marks:
                marks["first_s"] = time.perf_counter() - t0
            labels.append(r["label"])
            sources.append(r["file"])
        marks["done_s"] = time.perf_counter() - t0
marks["total_s"] = time.perf_counter() - t0
out.write_text(json.dumps({"marks": marks, "labels": labels, "sources": sources}))
"""


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    parent, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            pages = int(Path(entry.path, "statm").read_text().split()[1])
            rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(pid, 0) for pid in tree)


def run_phase(phase: str, model: Path, inputs: list[Path], batch: int, tmp: Path) -> dict:
    """Run one path in a child process; sample its process tree's memory while it runs."""
    out = tmp / f"{phase}.json"
    wall = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, phase, str(model), ",".join(map(str, inputs)), str(batch), str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(child.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - wall
    if child.returncode:
        raise SystemExit(f"{phase} child exited {child.returncode}")
    doc = json.loads(out.read_text())
    doc.update(process_wall_s=wall, peak_rss_mb=peak / 2**20)
    return doc


def compare(name: str, local: dict, ray: dict, n: int) -> dict:
    same = sum(a == b for a, b in zip(local["labels"], ray["labels"], strict=True))
    assert local["sources"] == ray["sources"], "the two paths saw different inputs or orders"
    lt, rt = local["marks"]["total_s"], ray["marks"]["total_s"]
    steady = ray["marks"]["done_s"] - ray["marks"]["first_s"]
    row = {
        "inputs": name,
        "images": n,
        "identical_answers": same,
        "different_answers": n - same,
        "local": {
            "seconds": round(lt, 2),
            "images_per_s": round(n / lt, 1),
            "peak_rss_mb": round(local["peak_rss_mb"], 1),
        },
        "ray": {
            "seconds": round(rt, 2),
            "images_per_s": round(n / rt, 1),
            "ray_init_s": round(ray["marks"]["ray_init_s"], 2),
            "first_result_s": round(ray["marks"]["first_s"], 2),
            "steady_images_per_s": round(n / steady, 1) if steady > 0 else None,
            "peak_rss_mb": round(ray["peak_rss_mb"], 1),
            "process_wall_s": round(ray["process_wall_s"], 2),
        },
        "throughput_ratio_ray_over_local": round(lt / rt, 3),
        "steady_throughput_ratio": round((n / steady) / (n / lt), 3) if steady > 0 else None,
        "startup_overhead_s": round(ray["marks"]["first_s"], 2),
    }
    print(
        f"{name}: {n:,} images, {same:,} identical answers; local {n / lt:,.0f} img/s "
        f"({lt:.1f} s, {local['peak_rss_mb']:.0f} MB); Ray {n / rt:,.0f} img/s ({rt:.1f} s, "
        f"init {ray['marks']['ray_init_s']:.1f} s, first result {ray['marks']['first_s']:.1f} s, "
        f"{ray['peak_rss_mb']:.0f} MB); ratio {lt / rt:.2f}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=10_000, help="also classify this many PNG scans (0: none)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    args = ap.parse_args()

    from mnist_tflite.core import data

    if FASHION.is_dir():
        ds = data.load(str(FASHION))
        images, source = ds.x_train, f"Fashion-MNIST training images ({FASHION})"
    else:  # no Debian dataset package: MNIST-shaped arrays
        images = np.random.default_rng(0).integers(0, 256, (60_000, 28, 28), dtype=np.uint8)
        source = "60,000 random MNIST-shaped uint8 arrays"
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_predict_"))
    np.save(tmp / "train.npy", images)
    cases = [("60,000 arrays (.npy)", [tmp / "train.npy"], len(images))]
    if args.scans:
        from PIL import Image

        scans = tmp / "scans"
        scans.mkdir()
        for i in range(args.scans):
            img = Image.fromarray(255 - images[i]).resize((56, 56), Image.Resampling.BICUBIC)
            img.save(scans / f"{i:05d}.png", compress_level=1)
        cases.append((f"{args.scans:,} PNG scans (directory)", [scans], args.scans))

    rows = []
    for name, inputs, n in cases:
        local = run_phase("local", args.model, inputs, args.batch_size, tmp)
        ray = run_phase("ray", args.model, inputs, args.batch_size, tmp)
        rows.append(compare(name, local, ray, n))
    result = {
        "benchmark": "predict --ray (Ray Data, one ModelActor per CPU) vs the local runner (Classifier)",
        "source": source,
        "model": str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model),
        "batch_size": args.batch_size,
        "cases": rows,
        "notes": [
            "local: Classifier.predict_files, one process, preprocessing in one thread, inference on "
            "one single-threaded interpreter per core",
            "ray: a private local Ray instance (ray.init in the child), one ModelActor per CPU, each "
            "preprocessing and classifying its own units; seconds include ray.init and actor start-up",
            "startup_overhead_s: from the start of the Ray child to its first result (ray.init, actors, "
            "first unit)",
            "peak_rss_mb: the whole process tree of each child (Ray's GCS, raylet, dashboard agent and "
            "workers included), sampled every 0.1 s",
        ],
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    write_json(RESULTS, result)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
