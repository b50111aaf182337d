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


SRC = Path(__file__).resolve().parents[1] / "src"


def cli_argv(*args: str) -> list[str]:
    """The command line of ``mnist-tflite ARGS`` in this interpreter (for ``Popen``)."""
    return [sys.executable, "-m", "mnist_tflite", *args]


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this tree's ``src`` first on the path, then ``env``."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **(env or {})}


def run_cli(
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    **kwargs,
) -> subprocess.CompletedProcess:
    """Run ``mnist-tflite`` in a fresh process, as a user would; text output captured.

    ``prefix`` goes before the interpreter (e.g. ``ip netns exec NS``); ``kwargs`` go to
    ``subprocess.run`` (``cwd``, ``input``, ...).
    """
    return subprocess.run(
        [*prefix, *cli_argv(*args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        **kwargs,
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


# -- skips that would turn CI green: --strict-skips (.ci/run) fails the session on them ---------

# A skip CI accepts: node id (or its start, e.g. a module) -> why a CI machine set up by
# .ci/run cannot run it. Empty: .ci/run installs every extra, package and tool the suite needs
# and runs as root (tmpfs mounts, network namespaces).
ALLOWED_SKIPS: dict[str, str] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--strict-skips",
        action="store_true",
        help="fail the session when a test is skipped that tests/conftest.py's ALLOWED_SKIPS does not list "
        "(.ci/run sets it: on a CI machine every test must run)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--strict-skips", default=False):
        config.pluginmanager.register(StrictSkips(), "strict-skips")


class StrictSkips:
    """Collects the skips ALLOWED_SKIPS does not list; fails an otherwise green session on them."""

    def __init__(self) -> None:
        self.unexpected: list[str] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):  # an xfail is not a skip
            return
        if any(report.nodeid.startswith(allowed) for allowed in ALLOWED_SKIPS):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        self.unexpected.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.unexpected:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("skipped, but CI must run them (--strict-skips)", red=True)
            for line in self.unexpected:
                reporter.line(line)
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
