"""Cold start of one-image prediction: ``mnist-tflite predict`` vs the seed's TensorFlow way.

Each way runs as a fresh process, ``--runs`` times (interleaved, so machine load hits all
alike); we record wall time, CPU time (user + sys, less sensitive to other load) and peak
RSS of that process (``os.wait4``). Ways:

- ``mnist-tflite predict``: our CLI on one realistic photo, as a user types it;
- ``LiteRT alone``: import ``ai_edge_litert``, load the model, one invoke (the floor);
- ``seed (tf.lite)``: ``import tensorflow`` + ``tf.lite.Interpreter``, PIL resize, one invoke.

Usage:
    python benchmarks/bench_predict_startup.py [--runs 10] [--model tests/models/int8.tflite]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict_startup.json"

LITERT = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
i = Interpreter(model_path=sys.argv[1]); i.allocate_tensors()
d = i.get_input_details()[0]; i.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"])); i.invoke()
print(int(i.get_tensor(i.get_output_details()[0]["index"]).argmax()))
"""
SEED = """
import sys, numpy as np
import tensorflow as tf
from PIL import Image
i = tf.lite.Interpreter(model_path=sys.argv[1]); i.allocate_tensors()
d = i.get_input_details()[0]
x = np.asarray(Image.open(sys.argv[2]).convert("L").resize((28, 28)), np.float32) / 255.0
s, z = d["quantization"]
x = (np.clip(np.rint(x / s + z), -128, 127) if s else x).astype(d["dtype"]).reshape(d["shape"])
i.set_tensor(d["index"], x); i.invoke()
print(int(i.get_tensor(i.get_output_details()[0]["index"]).argmax()))
"""


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "mnist-tflite"  # the installed entry point, not a shim
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnist_tflite.cli"]


def _run_once(cmd: list[str]) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def _summary(samples: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"runs": len(samples)}
    for key in ("wall_s", "cpu_s", "peak_rss_mb"):
        vals = [s[key] for s in samples]
        out[f"median_{key}"] = round(statistics.median(vals), 4)
        out[f"min_{key}"] = round(min(vals), 4)
        out[f"max_{key}"] = round(max(vals), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--skip-seed", action="store_true", help="leave out the (slow) TensorFlow way")
    args = ap.parse_args()

    # the image is made in a child: this process stays small, since a forked child's peak
    # RSS (what wait4 reports) starts from its parent's size before exec
    tmp = Path(tempfile.mkdtemp())
    maker = ROOT / "benchmarks" / "make_photo_digits.py"
    subprocess.run(
        [sys.executable, str(maker), "--count", "1", "--out", str(tmp)], check=True, capture_output=True
    )
    image = next(p for p in sorted(tmp.iterdir()) if p.suffix != ".json")
    model = str(args.model)
    ways = {
        "mnist-tflite predict": [*_cli(), "predict", model, str(image)],
        "LiteRT alone": [sys.executable, "-c", LITERT, model],
    }
    if not args.skip_seed:
        ways["seed (tf.lite)"] = [sys.executable, "-c", SEED, model, str(image)]
    for cmd in ways.values():  # warm the page cache once; cold start means a new process
        _run_once(cmd)
    samples: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for _ in range(args.runs):
        for way, cmd in ways.items():
            samples[way].append(_run_once(cmd))
    rows = {w: _summary(s) for w, s in samples.items()}
    ours = rows["mnist-tflite predict"]
    print(f"cold start, one image, {args.runs} runs each; model {args.model.name}; {os.cpu_count()} cores")
    print(f"{'way':<22} {'median wall s':>13} {'min wall s':>10} {'median CPU s':>12} {'peak RSS MB':>11}")
    for way, r in rows.items():
        print(
            f"{way:<22} {r['median_wall_s']:>13.3f} {r['min_wall_s']:>10.3f} {r['median_cpu_s']:>12.3f} "
            f"{r['max_peak_rss_mb']:>11.1f}"
        )
    result = {
        "benchmark": "predict cold start (one image, fresh process)",
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "targets": {"median_wall_s": 0.4, "peak_rss_mb": 100},
        "ways": rows,
        "command": " ".join(ways["mnist-tflite predict"]),
    }
    if "seed (tf.lite)" in rows:
        seed = rows["seed (tf.lite)"]
        result["seed_over_ours"] = {
            "wall": round(seed["median_wall_s"] / ours["median_wall_s"], 1),
            "peak_rss": round(seed["max_peak_rss_mb"] / ours["max_peak_rss_mb"], 1),
        }
        print(
            f"seed / ours: {result['seed_over_ours']['wall']}x wall time, "
            f"{result['seed_over_ours']['peak_rss']}x peak RSS"
        )
    write_json(RESULTS, result)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
