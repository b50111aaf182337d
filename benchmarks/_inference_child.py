"""One measurement of ``bench_inference.py``, in a fresh process: prints ``RESULT {json}``.

Usage: ``python benchmarks/_inference_child.py '{"kind": "ours", "model": "...", ...}'``.
Kinds: seed, litert, ours, keras, onnx, onnx_export, gemm. Imports happen inside each kind,
so a LiteRT measurement never pays for (or is slowed by) TensorFlow being loaded.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def _test_set(n: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist_tflite.core import data

    ds = data.load("embedded")
    return data.normalize(ds.x_test[:n]), ds.y_test[:n]


def _as_input(interp: Any, x: np.ndarray) -> np.ndarray:
    """Quantize the whole set up front when the model wants integers (not timed)."""
    inp = interp.get_input_details()[0]
    if inp["dtype"] == np.float32:
        return x
    scale, zp = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    return np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(inp["dtype"])


def _loop(interp: Any, x: np.ndarray) -> dict[str, Any]:
    """The seed's loop: one image per invoke()."""
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = _as_input(interp, x)
    interp.set_tensor(inp["index"], x[:1])
    interp.invoke()
    preds = np.empty(len(x), dtype=np.int64)
    clock = _Clock()
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        preds[i] = interp.get_tensor(out["index"])[0].argmax()
    return clock.stop(preds=preds)


def seed(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    t = time.perf_counter()
    import tensorflow as tf

    import_s = time.perf_counter() - t
    interp = tf.lite.Interpreter(model_path=spec["model"])
    interp.allocate_tensors()
    return {**_loop(interp, x), "import_s": import_s}


def litert(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=spec["model"], num_threads=spec.get("threads"))
    batch = spec.get("batch", 1)
    if batch == 1:
        interp.allocate_tensors()
        return _loop(interp, x)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, 28, 28, 1])
    interp.allocate_tensors()
    n = len(x) // batch * batch  # full batches only: the last partial one is not this config's cost
    x = _as_input(interp, x)
    interp.set_tensor(inp["index"], x[:batch])
    interp.invoke()
    preds = np.empty(n, dtype=np.int64)
    clock = _Clock()
    for s in range(0, n, batch):
        interp.set_tensor(inp["index"], x[s : s + batch])
        interp.invoke()
        preds[s : s + batch] = interp.get_tensor(out["index"]).argmax(1)
    return clock.stop(preds=preds)


def ours(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    from mnist_tflite.edge.infer import TfliteModel

    model = TfliteModel(spec["model"], **spec.get("options", {}))
    model.predict_proba(x[:64])  # warm-up: every interpreter allocates at its chunk size
    clock = _Clock()
    probs = model.predict_proba(x)
    return clock.stop(preds=probs.argmax(1), batch=model.batch_size, workers=model.num_threads)


def keras_predict(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    from mnist_tflite.training.tfimport import import_tf

    import_tf()
    import keras

    model = keras.models.load_model(spec["model"], compile=False)
    model.predict(x[:256], batch_size=256, verbose=0)
    clock = _Clock()
    probs = model.predict(x, batch_size=256, verbose=0)
    return clock.stop(preds=np.asarray(probs).argmax(1))


def onnx_export(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """Keras 3 -> ONNX via a tf.function (tf2onnx's from_keras fails on Keras 3 models)."""
    from mnist_tflite.training.tfimport import import_tf

    tf = import_tf()
    import keras
    import tf2onnx

    model = keras.models.load_model(spec["model"], compile=False)
    signature = [tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")]
    fn = tf.function(lambda image: model(image, training=False), input_signature=signature)
    tf2onnx.convert.from_function(fn, input_signature=signature, opset=17, output_path=spec["out"])
    return {"preds": np.zeros(0), "seconds": 0.0, "cpu_s": 0.0}


def onnx(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime: ``sessions`` sessions of ``threads`` intra-op threads, chunks of ``batch``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(spec["model"], opts, providers=["CPUExecutionProvider"])
        for _ in range(spec.get("sessions", 1))
    ]
    name = sessions[0].get_inputs()[0].name
    batch = spec["batch"]
    for s in sessions:
        s.run(None, {name: x[:batch]})
    preds = np.empty(len(x), dtype=np.int64)
    starts = iter(range(0, len(x), batch))  # next() is atomic under the GIL: chunks go to whoever is free

    def drain(sess: Any) -> None:
        for s in starts:
            preds[s : s + batch] = sess.run(None, {name: x[s : s + batch]})[0].argmax(1)

    clock = _Clock()
    helpers = [threading.Thread(target=drain, args=(s,)) for s in sessions[1:]]
    for h in helpers:
        h.start()
    drain(sessions[0])
    for h in helpers:
        h.join()
    return clock.stop(preds=preds)


def gemm(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """The machine's float32 GEMM rate through NumPy's BLAS, on all cores; best size wins."""
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
            for i in threadpool_info()
        ]
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
        blas = "unknown (pip install threadpoolctl)"
    rates = {}
    rng = np.random.default_rng(0)
    for n in spec.get("sizes", (512, 1024, 2048)):
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        a @ b
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(max(3, int(4e9 / n**3))))
        rates[n] = n**3 / best
    return {
        "preds": np.zeros(0),
        "seconds": 0.0,
        "cpu_s": 0.0,
        "gmacs": max(rates.values()) / 1e9,
        "by_size": rates,
        "blas": blas,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class _Clock:
    """Wall and CPU seconds of the timed region (CPU: all threads of this process)."""

    def __init__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def stop(self, **res: Any) -> dict[str, Any]:
        return {"seconds": time.perf_counter() - self.t, "cpu_s": time.process_time() - self.c, **res}


KINDS = {
    "seed": seed,
    "litert": litert,
    "ours": ours,
    "keras": keras_predict,
    "onnx": onnx,
    "onnx_export": onnx_export,
    "gemm": gemm,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    x, y = _test_set(spec.get("n", 10_000))
    res = KINDS[spec["kind"]](spec, x)
    preds = res.pop("preds")
    n = len(preds)
    res.update(
        images=n,
        ips=n / res["seconds"] if res["seconds"] else None,
        accuracy=float((preds == y[:n]).mean()) if n else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load=os.getloadavg()[0],
    )
    print("RESULT " + json.dumps(res, default=str), flush=True)


if __name__ == "__main__":
    main()
