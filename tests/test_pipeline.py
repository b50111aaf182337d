"""`mnist-tflite run` end to end, and the CLI's exit codes for bad input."""

from __future__ import annotations

from tests.conftest import require

require("tensorflow", "tflite_micro")  # before the imports that need them

import json

import numpy as np
import pytest

from mnist_tflite.cli import main
from tests.conftest import run_cli

FAST = ["--epochs", "1", "--data", "sample", "--micro-images", "500"]


def one_line_error(r, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("mnist-tflite: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    r = run_cli("run", "--out", str(out), *FAST, "--recipes", "float32,dynamic,int8", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.mark.slow
def test_run_writes_every_artifact(quick_run):
    out, r = quick_run
    for name in ("model.keras", "report.md", "report.json", "size_vs_accuracy.png", "confusion_int8.png"):
        assert (out / name).stat().st_size > 0, name
    for recipe in ("float32", "dynamic", "int8"):
        assert (out / f"{recipe}.tflite").exists() and (out / f"{recipe}.json").exists()
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["variants"]}
    assert set(rows) == {"float32", "dynamic", "int8"}
    for row in rows.values():
        assert row["status"] == "ok" and 0.0 <= row["accuracy"] <= 1.0
        assert row["size_bytes"] == (out / f"{row['name']}.tflite").stat().st_size
    # float32 .tflite is the Keras model; int8 agrees closely and is much smaller
    assert rows["float32"]["agreement"] >= 0.999
    assert rows["int8"]["agreement"] >= 0.98
    assert rows["int8"]["size_bytes"] <= 0.35 * rows["float32"]["size_bytes"]
    assert report["data"]["test_images"] == 10000 and report["seed"] == 1
    # the table and where the files are, printed at the end
    assert "| int8 |" in r.stdout and "report.md" in r.stdout
    assert "epoch   1/1" in r.stdout  # progress per epoch


@pytest.mark.slow
def test_same_seed_same_models_and_figures(quick_run, tmp_path):
    """A second run with the same seed gives byte-identical models and identical accuracy figures."""
    out, _ = quick_run
    again = tmp_path / "again"
    r = run_cli("run", "--out", str(again), *FAST, "--recipes", "float32,dynamic,int8", "--seed", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    for recipe in ("float32", "dynamic", "int8"):
        assert (out / f"{recipe}.tflite").read_bytes() == (again / f"{recipe}.tflite").read_bytes()
    figures = ("accuracy", "agreement", "max_prob_diff", "size_bytes")
    a = json.loads((out / "report.json").read_text())["variants"]
    b = json.loads((again / "report.json").read_text())["variants"]
    assert [[row[k] for k in figures] for row in a] == [[row[k] for k in figures] for row in b]


def test_run_refuses_non_empty_out(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    r = run_cli("run", "--out", str(tmp_path), *FAST)
    assert "output directory is not empty (pass --force" in one_line_error(r)
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipes", "float32,int3"], "unknown recipe 'int3'"),
        (["--data", "/nonexistent/mnist"], "/nonexistent/mnist: no such file or directory"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--arch", "vgg"], "unknown architecture 'vgg'"),
    ],
)
def test_run_bad_options(tmp_path, args, message, capsys):
    """Checked before any training starts: fast, one line, exit 2, nothing written."""
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--data", "sample", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_run_on_corrupt_data(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((3, 28, 28), np.float64))
    code = main(["run", "--out", str(tmp_path / "o"), "--data", str(bad)])
    assert code == 2 and "bad.npz: missing arrays" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for command in ("run", "train", "convert", "evaluate", "recipes"):
        assert main([command, "--help"]) == 0
        assert "example:" in capsys.readouterr().out


def test_evaluate_cli_json(models_dir):
    r = run_cli("evaluate", str(models_dir / "float32.tflite"), str(models_dir / "int8.tflite"),
                "--data", "sample", "--latency-samples", "20", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["variants"]
    assert [row["name"] for row in rows] == ["float32", "int8"]
    assert rows[0]["accuracy"] >= 0.98 and abs(rows[1]["accuracy"] - rows[0]["accuracy"]) <= 0.003
    assert rows[1]["agreement"] >= 0.995 and rows[1]["size_bytes"] <= 0.3 * rows[0]["size_bytes"]
