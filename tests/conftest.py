"""Shared fixtures: real MNIST data and small real models.

``tests/models/`` holds models made by ``mnist-tflite run --out ...`` (seed 0, defaults,
embedded data); they let inference tests run without TensorFlow. ``int8.tflite`` ends in int8
logits (the int8 recipes drop the SOFTMAX); ``int8_softmax.tflite`` is the same seed model as
the int8 recipe wrote it before, ending in an int8 SOFTMAX, for the compiler's softmax kernel
and output-kind tests. Tests that need a fresh
Keras model use ``trained_model`` (a short, seeded training run once per session).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

MODELS = Path(__file__).parent / "models"
# optional module -> the extra that installs it (a base install runs the rest of the suite)
EXTRA_OF = {
    "tensorflow": "train",
    "tflite_micro": "micro",
    "tf_keras": "qat",
    "tensorflow_model_optimization": "qat",
    "fastapi": "serve",
    "uvicorn": "serve",
    "playwright": "dev",
    "ray": "scale",
}


def require(*modules: str) -> None:
    """Skip the calling test (or module) unless the optional modules are installed, naming the extra."""
    for name in modules:
        extra = EXTRA_OF[name]
        pytest.importorskip(name, reason=f"needs {name}: pip install 'mnist-tflite[{extra}]'")


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def mnist():
    """The embedded real MNIST sample (5k train, official 10k test): fast to train on."""
    from mnist_tflite.core import data

    return data.load("sample")


@pytest.fixture(scope="session")
def test_images(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 official test images (uint8) and labels."""
    return mnist.x_test[:1000], mnist.y_test[:1000]


@pytest.fixture(scope="session")
def trained_model(mnist, tmp_path_factory):
    """A seed-architecture Keras model trained briefly (seeded) on the 5k sample."""
    require("tensorflow")
    from mnist_tflite.training.train import TrainConfig, save_model, train

    result = train(mnist, TrainConfig(epochs=2, batch_size=64, augment=False, seed=0), log=lambda m: None)
    path = tmp_path_factory.mktemp("trained") / "model.keras"
    save_model(result.model, path)
    return result.model, path


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``mnist-tflite`` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_tflite.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_error_line(err: str) -> str:
    """The one non-empty line a user error prints on stderr (asserted), in the CLI's form."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mnist-tflite: error: "), err
    return lines[0]


def edited_model(data: bytes, edit) -> bytes:
    """Unpack a flatbuffer, let ``edit`` change the object tree, pack it again."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    edit(model, schema)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
