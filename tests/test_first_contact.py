"""A first-time user offline: --json prints only JSON, test-set commands never touch the
network, and a missing extra names the pip command that installs it.

Offline is made certain, not assumed: every process gets an empty KERAS_HOME (no cached
MNIST) and an unreachable proxy, and a socket guard records any connection attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS, require

# runs the CLI with socket.connect refused and recorded; prints what it tried on stderr
GUARD = """
import socket, sys
tried = []
def refuse(self, address, *a, **k):
    tried.append(address)
    raise OSError("offline (test guard)")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
from mnist_tflite.cli import main
rc = main(sys.argv[1:])
print(f"GUARD connects={len(tried)} tensorflow={'tensorflow' in sys.modules}", file=sys.stderr)
sys.exit(rc)
"""


def _offline(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KERAS_HOME": str(tmp_path / "empty-keras-home"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-c", GUARD, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _guard(stderr: str) -> dict[str, str]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("GUARD "))
    return dict(kv.split("=") for kv in line.split()[1:])


def test_evaluate_json_offline_is_only_json_and_never_touches_the_network(tmp_path):
    r = _offline(tmp_path, "evaluate", str(MODELS / "int8.tflite"), "--json", "--latency-samples", "0")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert doc["variants"][0]["accuracy"] > 0.98 and doc["data"]["test_images"] == 10_000
    assert _guard(r.stderr) == {"connects": "0", "tensorflow": "False"}  # no download, no wait


@pytest.mark.parametrize(
    "args",
    [
        ("recipes", "--json"),
        ("predict", str(MODELS / "int8.tflite"), "MNIST_IDX", "--json"),
    ],
)
def test_other_json_commands_print_only_json(args, tmp_path):
    import mnist_tflite

    idx = Path(mnist_tflite.__file__).parent / "_data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    r = _offline(tmp_path, *(str(idx) if a == "MNIST_IDX" else a for a in args))
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert _guard(r.stderr)["connects"] == "0"


def test_convert_json_offline_with_auto_data(tmp_path, trained_model):
    """auto without a Keras cache is the embedded full set, with no download attempt; stdout stays JSON."""
    _, keras_path = trained_model
    out = tmp_path / "m.tflite"
    r = _offline(tmp_path, "convert", str(keras_path), "--recipe", "int8", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["output_kind"] == "logits" and meta["data_source"].startswith("embedded MNIST")
    assert meta["data_source"].endswith(": 60,000 training + 10,000 test images")
    assert _guard(r.stderr)["connects"] == "0"


@pytest.mark.slow
def test_run_json_offline_is_only_json_and_ends_with_next_steps(tmp_path):
    require("tensorflow", "tflite_micro")
    out = tmp_path / "run"
    args = ("run", "--out", str(out), "--epochs", "1", "--recipes", "float32,int8", "--micro-images", "50")
    r = _offline(tmp_path, *args, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["micro"]["verification"]["int8"]["of_images"] == 10_000
    assert "int8 run on 50 of 10,000 test images" in r.stderr
    assert f"mnist-tflite export-micro {out / 'int8.tflite'}" in r.stderr  # next steps, on stderr
    md = (out / "report.md").read_text()
    assert "on 50 of 10,000" in md and "bit-exact" not in md


def test_missing_extra_names_the_pip_command(tmp_path):
    """`serve` after installing only `.[train]` used to die with ModuleNotFoundError: pydantic."""
    code = (
        "import sys; sys.modules['fastapi'] = None\n"  # as if the serve extra were not installed
        "from mnist_tflite.cli import main\n"
        f"sys.exit(main(['serve', {str(MODELS / 'int8.tflite')!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install 'mnist-tflite[serve]'" in r.stderr and r.stderr.count("\n") == 1
