"""Where float32 time goes: CPU µs per image of each prefix of the seed model, LiteRT vs ONNX Runtime.

The Keras model is cut after each layer, each prefix converted to ``.tflite`` (float32) and to
ONNX, and each run single-threaded (CPU time, so other load on the machine matters less);
the difference between consecutive prefixes is that layer's cost.

Usage:
    python benchmarks/profile_float32.py [--model tests/models/model.keras] [--reps 5]

Writes ``benchmarks/results/profile_float32.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "profile_float32.json"


def cpu_us(run: Any, x: np.ndarray, batch: int, reps: int) -> float:
    """Median CPU µs per image of ``run(chunk)`` over ``reps`` passes (thread CPU time)."""
    run(x[:batch])
    times = []
    for _ in range(reps):
        c = time.thread_time()
        for s in range(0, len(x) - batch + 1, batch):
            run(x[s : s + batch])
        times.append((time.thread_time() - c) / (len(x) // batch * batch))
    return 1e6 * float(np.median(times))


def convert_prefixes(model_path: Path, out: Path) -> list[dict[str, Any]]:
    """Each prefix of the Keras model -> ``<k>.tflite`` and ``<k>.onnx`` in ``out``."""
    from mnist_tflite.training.tfimport import import_tf

    tf = import_tf()
    import keras
    import tf2onnx

    from mnist_tflite.core.recipes import Recipe
    from mnist_tflite.training.convert import convert

    model = keras.models.load_model(model_path, compile=False)
    sig = [tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")]
    layers = []
    for k, layer in enumerate(model.layers):
        sub = keras.Model(model.inputs, layer.output)
        fn = tf.function(lambda im, sub=sub: sub(im, training=False), input_signature=sig)
        (out / f"{k}.tflite").write_bytes(convert(sub, Recipe("float32", "")))  # as `run` converts
        tf2onnx.convert.from_function(fn, input_signature=sig, opset=17, output_path=str(out / f"{k}.onnx"))
        layers.append({"upto": layer.name, "type": type(layer).__name__, "k": k})
    return layers


def time_prefixes(folder: Path, layers: list[dict[str, Any]], reps: int) -> list[dict[str, Any]]:
    """CPU µs per image of every prefix, LiteRT (XNNPACK) and ONNX Runtime, one thread each."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from mnist_tflite.core import data

    x = data.normalize(data.load("embedded").x_test[:2000])
    for row in layers:
        k = row["k"]
        for batch in (8, 32):
            it = Interpreter(model_path=str(folder / f"{k}.tflite"), num_threads=1)
            it.resize_tensor_input(0, [batch, 28, 28, 1])
            it.allocate_tensors()
            out = it.get_output_details()[0]["index"]

            def lite(chunk: np.ndarray, it: Any = it, out: int = out) -> None:
                it.set_tensor(0, chunk)
                it.invoke()
                it.get_tensor(out)

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(folder / f"{k}.onnx"), opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            row[f"litert_b{batch}"] = cpu_us(lite, x, batch, reps)
            row[f"onnxruntime_b{batch}"] = cpu_us(
                lambda c, s=sess, n=name: s.run(None, {n: c}), x, batch, reps
            )
    return layers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "model.keras")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--time", type=Path, help=argparse.SUPPRESS)  # child: time converted prefixes
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_tflite.core.atomic import write_json

    if args.time:  # a process without TensorFlow: TF's own TFLite runtime must not be loaded beside LiteRT
        layers = json.loads((args.time / "layers.json").read_text())
        print(json.dumps(time_prefixes(args.time, layers, args.reps)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        layers = convert_prefixes(args.model, Path(tmp))
        (Path(tmp) / "layers.json").write_text(json.dumps(layers))
        done = subprocess.run(
            [sys.executable, __file__, "--time", tmp, "--reps", str(args.reps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [
        "| up to layer | LiteRT b8 | LiteRT b32 | ORT b8 | ORT b32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['upto']} ({r['type']}) | {r['litert_b8']:.1f} | {r['litert_b32']:.1f} | "
            f"{r['onnxruntime_b8']:.1f} | {r['onnxruntime_b32']:.1f} |"
        )
    table = "\n".join(lines)
    print("CPU µs per image, cumulative (one thread each):\n" + table)
    write_json(args.out, {"format": "mnist-tflite-profile-float32/1", "rows": rows, "table": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
