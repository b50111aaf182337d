"""Report tables, plots, Pareto front, atomic writes, and a recipe that fails becoming a row."""

from __future__ import annotations

from tests.conftest import require

require("tensorflow")  # before the imports that need them

import json

import numpy as np
import pytest

from mnist_tflite.core import atomic as _atomic
from mnist_tflite.core import recipes
from mnist_tflite.core.errors import ConversionError
from mnist_tflite.edge.evaluate import VariantResult, confusion_matrix
from mnist_tflite.report import tables as report_mod
from mnist_tflite.training import convert, pipeline
from mnist_tflite.training.train import TrainConfig


def test_confusion_matrix_matches_counting():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    cm = confusion_matrix(y, p)
    assert cm.sum() == 500 and cm.trace() == int((y == p).sum())
    assert cm[3, 5] == int(((y == 3) & (p == 5)).sum())


def test_markdown_table_and_failed_rows(tmp_path):
    rows = report_mod.rows_as_dicts(
        [
            VariantResult(name="float32", size_bytes=1000, accuracy=0.99, agreement=1.0),
            VariantResult(name="int8", size_bytes=250, accuracy=0.985, agreement=0.995),
            VariantResult(name="int4", status="failed", error="converter refused"),
        ]
    )
    table = report_mod.markdown_table(rows)
    lines = table.splitlines()
    assert len({line.count("|") for line in lines}) == 1, "every row has the same number of cells"
    assert "| int8 | 250 | 0.25 | 98.50 % | 99.50 % |" in table
    assert "| int4 | failed: converter refused |" in table
    report_mod.plot_accuracy_vs_size(rows, tmp_path / "p.png")
    report_mod.plot_confusion(np.eye(10, dtype=int) * 9, [str(i) for i in range(10)], "t", tmp_path / "c.png")
    for name in ("p.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), _atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


BROKEN = recipes.Recipe(
    "int8-uncalibrated",
    "integer-only ops without calibration data: the converter must refuse",
    optimizations=("DEFAULT",),
    supported_ops=("TFLITE_BUILTINS_INT8",),
    inference_input_type="int8",
    inference_output_type="int8",
)


def test_converter_refusal_is_a_conversion_error(trained_model):
    model, _ = trained_model
    with pytest.raises(ConversionError, match="recipe 'int8-uncalibrated' failed"):
        convert.convert(model, BROKEN, None)


@pytest.mark.slow
def test_failed_recipe_is_a_row_not_an_abort(monkeypatch, tmp_path):
    monkeypatch.setattr(recipes, "RECIPES", (*recipes.RECIPES, BROKEN))
    config = pipeline.RunConfig(
        out=tmp_path / "run", data="sample", recipes="float32,int8-uncalibrated",
        train=TrainConfig(epochs=1, augment=False), latency_samples=5,
    )  # fmt: skip
    report = pipeline.run(config, log=lambda m: None)
    rows = {r["name"]: r for r in report["variants"]}
    assert rows["float32"]["status"] == "ok"
    assert rows["int8-uncalibrated"]["status"] == "failed"
    assert "int8-uncalibrated" in rows["int8-uncalibrated"]["error"]
    assert not (tmp_path / "run" / "int8-uncalibrated.tflite").exists()
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["status"] for r in on_disk["variants"]] == ["ok", "failed"]
    assert "failed:" in (tmp_path / "run" / "report.md").read_text()
