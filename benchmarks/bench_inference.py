"""Inference speed side by side: the seed's loop, LiteRT, our runner, Keras, ONNX Runtime, BLAS.

Every measurement runs in a fresh process (``_inference_child.py``), the order is rotated
between repetitions, and each figure is the median of the repetitions with its spread. The
"whole job" rows time a user's command from process start to all 10,000 answers.

Usage:
    python benchmarks/bench_inference.py [--models DIR] [--reps 5] [--quick] [--sweep]

Writes ``benchmarks/results/inference.json`` and prints the table. On a shared machine other
jobs take cores away (the kernel shares CPU between sessions, so ``nice`` alone does little);
the published figures ran in their own scheduling group:
    setsid bash -c 'echo -10 > /proc/$$/autogroup; exec python benchmarks/bench_inference.py'
``inference_sweep.json`` holds a ``--sweep`` run made next to other jobs (about one core free):
compare its CPU µs/image, which contention hardly changes, not its images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_inference_child.py")
VARIANTS = ("float32", "float16", "dynamic", "int8")
RESULTS = Path(__file__).with_name("results") / "inference.json"
sys.path.insert(0, str(Path(__file__).parent))
from _inference_tables import compact_table, derive, table  # noqa: E402

SEED_JOB = """
import gzip, sys
import numpy as np
import tensorflow as tf

def idx(path):  # the local copy of the official test set, read as the seed's user would
    with gzip.open(path) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)

x_test = idx(sys.argv[2]).astype("float32").reshape(-1, 28, 28, 1) / 255.0
y_test = idx(sys.argv[3])
interpreter = tf.lite.Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
input_details = interpreter.get_input_details()
output_details = interpreter.get_output_details()
if input_details[0]["dtype"] != np.float32:
    scale, zero_point = input_details[0]["quantization"]
    x_test = np.clip(np.round(x_test / scale) + zero_point, -128, 127).astype(input_details[0]["dtype"])
correct = 0
for i in range(len(x_test)):
    interpreter.set_tensor(input_details[0]["index"], x_test[i : i + 1])
    interpreter.invoke()
    output_data = interpreter.get_tensor(output_details[0]["index"])
    correct += int(np.argmax(output_data[0]) == y_test[i])
print("accuracy", correct / len(x_test))
"""


def child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process; its RESULT line as a dict."""
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(line[len("RESULT ") :])


def job(cmd: list[str]) -> dict[str, Any]:
    """A user's whole job: wall seconds from process start to exit, and its peak RSS."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(err.strip().splitlines() or [''])[-1][:300]}"}
    return {
        "seconds": seconds,
        "ips": 10_000 / seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "load": os.getloadavg()[0],
    }


def plan(models: Path, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measurement of one repetition: (label, variant, how to run it)."""
    onnx_path = str(tmp / "model.onnx")
    keras_path = (
        str(models / "model.keras")
        if (models / "model.keras").exists()
        else str(ROOT / "tests" / "models" / "model.keras")
    )
    variants = [v for v in VARIANTS if (models / f"{v}.tflite").exists()]
    items = []
    for v in variants:
        m = str(models / f"{v}.tflite")
        items += [
            {"label": "seed: tf.lite batch-1 loop", "variant": v, "spec": {"kind": "seed", "model": m}},
            {"label": "LiteRT batch-1 loop", "variant": v, "spec": {"kind": "litert", "model": m}},
            {"label": "mnist-tflite runner", "variant": v, "spec": {"kind": "ours", "model": m}},
            {
                "label": "whole job: seed script",
                "variant": v,
                "job": [sys.executable, str(tmp / "seed_job.py"), m, *_idx_files()],
            },
            {
                "label": "whole job: mnist-tflite evaluate",
                "variant": v,
                "job": [
                    sys.executable,
                    "-m",
                    "mnist_tflite.cli",
                    "evaluate",
                    m,
                    "--data",
                    "embedded",
                    "--latency-samples",
                    "0",
                ],
            },
            {
                # what a first-time user types: default --data auto (no Keras cache here:
                # the embedded test set, no download attempt) and --json
                "label": "whole job: evaluate default --data",
                "variant": v,
                "job": [sys.executable, "-m", "mnist_tflite.cli", "evaluate", m, "--json"],
            },
            {
                "label": "whole job: mnist-tflite predict",
                "variant": v,
                "job": [sys.executable, "-m", "mnist_tflite.cli", "predict", m, str(tmp / "x_test.npy")],
            },
        ]
    if args.jobs_only:
        return [it for it in items if it["label"].startswith("whole job")]
    items.append(
        {
            "label": "keras predict(batch_size=256)",
            "variant": "float32",
            "spec": {"kind": "keras", "model": keras_path},
        }
    )
    ort = (
        [(256, 2, 1), (1000, 2, 1), (32, 1, 2)]
        if args.quick
        else [
            (32, 1, 1),
            (256, 1, 1),
            (32, 2, 1),
            (256, 2, 1),
            (1000, 2, 1),
            (8, 1, 2),
            (32, 1, 2),
            (256, 1, 2),
        ]
    )
    for batch, threads, sessions in ort:
        label = f"onnxruntime b{batch} {sessions}x{threads} thr"
        items.append(
            {
                "label": label,
                "variant": "float32",
                "group": "onnxruntime",
                "spec": {
                    "kind": "onnx",
                    "model": onnx_path,
                    "batch": batch,
                    "threads": threads,
                    "sessions": sessions,
                },
            }
        )
    items.append({"label": "ceiling: NumPy GEMM", "variant": "-", "spec": {"kind": "gemm"}, "ceiling": True})
    if args.sweep:
        items += sweep(models, variants)
    return items


def sweep(models: Path, variants: list[str]) -> list[dict[str, Any]]:
    """Settings of our runner and of a plain LiteRT interpreter, for choosing the defaults."""
    items = []
    for v in [*variants, "int16x8"]:
        m = str(models / f"{v}.tflite")
        if not Path(m).exists():
            continue
        if v == "int16x8":
            for w in (1, 2):
                items.append(
                    {
                        "label": f"sweep: runner reference kernels x{w}",
                        "variant": v,
                        "group": "sweep",
                        "spec": {
                            "kind": "ours",
                            "model": m,
                            "n": 2000,
                            "options": {"kernels": "reference", "num_threads": w},
                        },
                    }
                )
            continue
        for w, b, k in (
            (1, 8, "default"),
            (2, 1, "default"),
            (2, 32, "default"),
            (2, 256, "default"),
            (2, 16, "builtin"),
        ):
            items.append(
                {
                    "label": f"sweep: runner {w} interp b{b} {k}",
                    "variant": v,
                    "group": "sweep",
                    "spec": {
                        "kind": "ours",
                        "model": m,
                        "options": {"num_threads": w, "batch_size": b, "kernels": k},
                    },
                }
            )
        for t, b in ((2, 1), (2, 256), (2, 1000)):
            items.append(
                {
                    "label": f"sweep: LiteRT 1 interp x {t} threads b{b}",
                    "variant": v,
                    "group": "sweep",
                    "spec": {"kind": "litert", "model": m, "batch": b, "threads": t},
                }
            )
    return items


def _idx_files() -> list[str]:
    d = ROOT / "src" / "mnist_tflite" / "_data" / "mnist"
    return [str(d / "t10k-images-idx3-ubyte.gz"), str(d / "t10k-labels-idx1-ubyte.gz")]


def summarize(label: str, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    row: dict[str, Any] = {"label": label, "variant": variant, "runs": runs}
    if not ok:
        row["error"] = runs[0].get("error") if runs else "not run"
        return row
    key = "gmacs" if "gmacs" in ok[0] else "ips"
    vals = sorted(r[key] for r in ok)
    row.update(
        {
            key: statistics.median(vals),
            f"{key}_min": vals[0],
            f"{key}_max": vals[-1],
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
            "load": statistics.median(r["load"] for r in ok),
        }
    )
    if key == "ips":
        row["us_per_image"] = 1e6 / row["ips"]
        row["cpu_us_per_image"] = statistics.median(1e6 * r["cpu_s"] / r.get("images", 10_000) for r in ok)
        if "accuracy" in ok[0]:
            row["accuracy"] = ok[0]["accuracy"]
    for k in ("blas", "by_size", "openblas_coretype", "batch", "workers"):
        if k in ok[0]:
            row[k] = ok[0][k]
    if "seconds" in ok[0] and label.startswith("whole job"):
        row["seconds"] = statistics.median(r["seconds"] for r in ok)
    return row


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "ai-edge-litert", "tensorflow", "keras", "onnxruntime", "tf2onnx", "mnist-tflite"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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
    p.add_argument("--models", type=Path, default=ROOT / "tests" / "models", help="dir with <variant>.tflite")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default: 5, --quick: 2)")
    p.add_argument("--quick", action="store_true", help="2 repetitions, fewer ONNX Runtime settings")
    p.add_argument("--sweep", action="store_true", help="also measure runner and LiteRT settings")
    p.add_argument("--jobs-only", action="store_true", help="only the whole-job rows (process start to exit)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--nice", type=int, default=0, help="scheduling priority of every measurement (negative: root only)"
    )
    args = p.parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)
    if args.nice:  # on a shared machine: other jobs' threads would otherwise take half the cores
        os.nice(args.nice)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np

    from mnist_tflite.core import data
    from mnist_tflite.edge import flatbuffer as _flatbuffer
    from mnist_tflite.training.pipeline import machine_info

    models = args.models.resolve()
    macs = _flatbuffer.parse((models / "float32.tflite").read_bytes()).macs
    print(f"model: {models / 'float32.tflite'}: {macs:,} MACs per image", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "seed_job.py").write_text(SEED_JOB)
        np.save(tmp / "x_test.npy", data.load("embedded").x_test)
        items = plan(models, tmp, args)
        keras_path = next(
            (i["spec"]["model"] for i in items if i.get("spec", {}).get("kind") == "keras"), None
        )
        if keras_path:
            out = str(tmp / "model.onnx")
            exported = child({"kind": "onnx_export", "model": keras_path, "out": out, "n": 1})
            if "error" in exported:
                print(f"ONNX export failed: {exported['error']}", file=sys.stderr)
        # the ceiling: OpenBLAS at its best kernel, whatever this shell pinned (only in that process)
        gemm_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(items))}
        for rep in range(reps):
            shift = rep * len(items) // reps
            order = list(range(len(items)))[shift:] + list(range(len(items)))[:shift]
            for k, i in enumerate(order):
                it = items[i]
                print(
                    f"\r  rep {rep + 1}/{reps}  {k + 1}/{len(items)}  {it['label'][:40]:<40}",
                    end="",
                    flush=True,
                    file=sys.stderr,
                )
                res = (
                    job(it["job"])
                    if "job" in it
                    else child({**it["spec"]}, gemm_env if it.get("ceiling") else None)
                )
                runs[i].append(res)
        print(file=sys.stderr)
    rows = []
    for i, it in enumerate(items):
        row = summarize(it["label"], it["variant"], runs[i])
        row["group"] = it.get("group")
        if "gmacs" in row:
            row["ceiling_ips"] = row["gmacs"] * 1e9 / macs
        rows.append(row)
    targets = derive(rows, macs)
    print(table(rows))
    print()
    print(json.dumps({k: v for k, v in targets.items()}, indent=1, default=str))
    result = {
        "format": "mnist-tflite-bench-inference/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "models": str(models),
        "repetitions": reps,
        "quick": args.quick,
        "nice": args.nice,
        "scheduling": _scheduling(),
        "machine": {**machine_info(), "loadavg_end": os.getloadavg()},
        "versions": versions(),
        "targets": targets,
        "rows": rows,
        "table": table(rows, show_sweep=False),
        "readme_table": compact_table(rows),
    }
    from mnist_tflite.core.atomic import write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
