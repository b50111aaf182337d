"""The LiteRT runner: batched, sharded and concurrent results equal batch-1 results exactly.

Committed models cover the four default variants; odd models (uint8 I/O, logits output, no
batch dimension, int16x8 on reference kernels) are converted once per session from a tiny
seeded Keras model.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from mnist_tflite.core import data
from mnist_tflite.core.recipes import Recipe
from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.training.convert import convert
from tests.conftest import MODELS, require

VARIANTS = ("float32", "float16", "dynamic", "int8")
N = 200


@pytest.fixture(scope="module")
def x(test_images) -> np.ndarray:
    return data.normalize(test_images[0][:N])


def _one_by_one(path, x: np.ndarray, **kw) -> np.ndarray:
    """The seed's way: one image per invoke() on one interpreter."""
    model = TfliteModel(path, batch_size=1, num_threads=1, **kw)
    return np.concatenate([model.run_raw(x[i : i + 1]) for i in range(len(x))])


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_and_sharded_equal_batch1(variant, x):
    path = MODELS / f"{variant}.tflite"
    ref = _one_by_one(path, x)
    for kw in ({}, {"batch_size": 7, "num_threads": 2}, {"batch_size": 64, "num_threads": 3}):
        model = TfliteModel(path, **kw)
        got = model.run_raw(x)
        assert got.dtype == ref.dtype and got.shape == (N, 10)
        np.testing.assert_array_equal(got, ref, err_msg=f"{variant} {kw}")
    probs = TfliteModel(path).predict_proba(x)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)


def test_default_batch_is_chosen_per_input_type():
    assert TfliteModel(MODELS / "float32.tflite").batch_size < TfliteModel(MODELS / "int8.tflite").batch_size
    assert TfliteModel(MODELS / "int8.tflite", batch_size=5).batch_size == 5


@pytest.mark.parametrize("threads", [1, 2])
def test_one_model_shared_by_threads(threads, x):
    """Concurrent callers (a web server's handlers) get the answers a lone caller gets."""
    path = MODELS / "int8.tflite"
    ref = TfliteModel(path, num_threads=1).predict_proba(x)
    model = TfliteModel(path, num_threads=threads)
    results: dict[tuple[int, int], np.ndarray] = {}

    def caller(k: int) -> None:
        for i in range(0, N, 25 + k):  # batch-1 and larger calls interleave
            results[(k, i)] = model.predict_proba(x[i : i + (1 if k % 2 else 25 + k)])

    threads_ = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    assert len(results) > 20
    for (k, i), got in results.items():
        np.testing.assert_array_equal(got, ref[i : i + len(got)], err_msg=f"caller {k} at {i}")


def test_quantize_dequantize_round_trip():
    model = TfliteModel(MODELS / "int8.tflite")
    scale, zp = model.input.scale, model.input.zero_point
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    q = model.quantize_input(x)
    assert q.dtype == np.int8
    assert np.abs((q.astype(np.float32) - zp) * scale - x).max() <= scale / 2 + 1e-6
    grid = (np.arange(-128, 128, dtype=np.float32) - zp) * np.float32(scale)
    np.testing.assert_array_equal(model.quantize_input(grid[grid >= 0]), np.arange(-128, 128)[grid >= 0])
    raw = np.arange(-128, 128, dtype=np.int8).reshape(-1, 1)
    deq = model.dequantize_output(raw)
    assert deq.dtype == np.float32
    np.testing.assert_allclose(deq, (raw.astype(np.float32) - model.output.zero_point) * model.output.scale)
    f32 = TfliteModel(MODELS / "float32.tflite")
    same = f32.quantize_input(x)  # a float model takes the images as they are
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(f32.dequantize_output(x), x)


def test_image_shapes(x):
    model = TfliteModel(MODELS / "float32.tflite")
    ref = model.predict_proba(x[:3])
    np.testing.assert_array_equal(model.predict_proba(x[:3, :, :, 0]), ref)
    np.testing.assert_array_equal(model.predict_proba(x[0, :, :, 0]), ref[:1])
    np.testing.assert_array_equal(model.predict_proba(x[0]), ref[:1])
    np.testing.assert_array_equal(model.predict(x[:3]), ref.argmax(1))
    assert model.predict_proba(x[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match=r"received: shape=\(2, 28, 28, 3\)"):
        model.predict_proba(np.zeros((2, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match="kernels must be one of"):
        TfliteModel(MODELS / "float32.tflite", kernels="fast")


@pytest.mark.parametrize("variant", VARIANTS)
def test_describe_agrees_with_the_sidecar_written_at_conversion(variant):
    import json

    d = TfliteModel(MODELS / f"{variant}.tflite").describe()
    sidecar = json.loads((MODELS / f"{variant}.json").read_text())
    assert d["input"] == sidecar["input"] and d["output"] == sidecar["output"]
    assert d["recipe"] == sidecar["recipe"]["name"] and d["class_names"] == sidecar["class_names"]


# -- odd models, converted once ------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory, mnist):
    """Tiny seeded models: uint8 I/O, logits output, no batch dimension, int16x8."""
    require("tensorflow")
    from mnist_tflite.training.tfimport import import_tf

    tf = import_tf()
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    logits = keras.Sequential(
        [keras.Input((28, 28, 1)), layers.Conv2D(4, 3, strides=2), layers.Flatten(), layers.Dense(10)]
    )
    soft = keras.Sequential([logits, keras.layers.Softmax()])
    rep = data.normalize(mnist.x_train[:64])
    out = tmp_path_factory.mktemp("odd")
    recipes = {
        "uint8": Recipe(
            "uint8", "", ("DEFAULT",), (), ("TFLITE_BUILTINS_INT8",), "uint8", "uint8", needs_calibration=True
        ),
        "int16x8": Recipe(
            "int16x8",
            "",
            ("DEFAULT",),
            supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
            needs_calibration=True,
        ),
    }
    paths = {}
    for name, recipe in recipes.items():
        paths[name] = out / f"{name}.tflite"
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected"
            warnings.simplefilter("ignore", UserWarning)
            paths[name].write_bytes(convert(soft, recipe, rep))
    paths["logits"] = out / "logits.tflite"
    paths["logits"].write_bytes(convert(logits, Recipe("float32", "")))
    w = tf.constant(np.random.default_rng(0).normal(0, 0.1, (784, 10)).astype(np.float32))
    fn = tf.function(lambda im: tf.nn.softmax(tf.reshape(im, [1, 784]) @ w)[0])
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function(tf.TensorSpec([28, 28], tf.float32))]
    )
    paths["nobatch"] = out / "nobatch.tflite"
    paths["nobatch"].write_bytes(conv.convert())
    return paths


def test_uint8_io_model(odd_models, x):
    model = TfliteModel(odd_models["uint8"], allow_modified=True)
    assert model.input.dtype == np.uint8 and model.output.dtype == np.uint8
    q = model.quantize_input(x[:5])
    assert q.dtype == np.uint8 and q.min() == model.input.zero_point  # background pixels are 0.0
    ref = _one_by_one(odd_models["uint8"], x, allow_modified=True)
    np.testing.assert_array_equal(TfliteModel(odd_models["uint8"], batch_size=9).run_raw(x), ref)
    probs = model.predict_proba(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.03)


def test_logits_output_gets_softmax(odd_models, x):
    model = TfliteModel(odd_models["logits"], allow_modified=True)
    raw = model.run_raw(x)
    assert (raw < 0).any()  # logits, not probabilities
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    probs = model.predict_proba(x)
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_model_without_batch_dimension(odd_models, x):
    model = TfliteModel(odd_models["nobatch"], allow_modified=True, batch_size=64)
    assert model.input.shape == (28, 28) and model.batch_size == 1
    got = model.predict_proba(x[:20])
    assert got.shape == (20, 10) and np.isfinite(got).all()
    np.testing.assert_array_equal(got, _one_by_one(odd_models["nobatch"], x[:20], allow_modified=True))


def test_int16x8_reference_kernels_shard_exactly(odd_models, x):
    path = odd_models["int16x8"]
    ref = _one_by_one(path, x[:60], kernels="reference", allow_modified=True)
    got = TfliteModel(path, kernels="reference", num_threads=2, batch_size=8, allow_modified=True)
    np.testing.assert_array_equal(got.run_raw(x[:60]), ref)


def test_runner_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "from mnist_tflite.edge.infer import TfliteModel\n"
        "TfliteModel(sys.argv[1]).predict_proba(np.zeros((20, 28, 28), np.float32))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(MODELS / "int8.tflite")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
