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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "model.keras")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_tflite import data
    from mnist_tflite._atomic import write_json
    from mnist_tflite._tf import import_tf

    tf = import_tf()
    import keras
    import onnxruntime as ort
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter

    model = keras.models.load_model(args.model, compile=False)
    x = data.normalize(data.load("embedded").x_test[:2000])
    sig = [tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, layer in enumerate(model.layers):
            sub = keras.Model(model.inputs, layer.output)
            fn = tf.function(lambda im, sub=sub: sub(im, training=False), input_signature=sig)
            conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], sub)
            tfl = Path(tmp) / f"{k}.tflite"
            tfl.write_bytes(conv.convert())
            onnx_path = str(Path(tmp) / f"{k}.onnx")
            tf2onnx.convert.from_function(fn, input_signature=sig, opset=17, output_path=onnx_path)
            row: dict[str, Any] = {"upto": layer.name, "type": type(layer).__name__}
            for batch in (8, 32):
                it = Interpreter(model_path=str(tfl), num_threads=1)
                it.resize_tensor_input(0, [batch, 28, 28, 1])
                it.allocate_tensors()
                out = it.get_output_details()[0]["index"]

                def lite(chunk: np.ndarray, it: Any = it, out: int = out) -> None:
                    it.set_tensor(0, chunk)
                    it.invoke()
                    it.get_tensor(out)

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                row[f"litert_b{batch}"] = cpu_us(lite, x, batch, args.reps)
                row[f"onnxruntime_b{batch}"] = cpu_us(
                    lambda c, s=sess, n=name: s.run(None, {n: c}), x, batch, args.reps
                )
            rows.append(row)
            print(row, flush=True)
    lines = [
        "| up to layer | LiteRT b8 | LiteRT b32 | ORT b8 | ORT b32 | (CPU µs per image, cumulative) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['upto']} ({r['type']}) | {r['litert_b8']:.1f} | {r['litert_b32']:.1f} | "
            f"{r['onnxruntime_b8']:.1f} | {r['onnxruntime_b32']:.1f} | |"
        )
    print("\n".join(lines))
    write_json(
        args.out, {"format": "mnist-tflite-profile-float32/1", "rows": rows, "table": "\n".join(lines)}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
