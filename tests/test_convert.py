"""Every recipe converts, with the dtypes it promises; models people already have convert too."""

from __future__ import annotations

from tests.conftest import require

require("tensorflow")  # before the imports that need them

import json

import numpy as np
import pytest

from mnist_tflite.core import data, recipes, sidecar
from mnist_tflite.core.errors import ConversionError, MnistTfliteError
from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.training import convert
from mnist_tflite.training.variants import convert_file
from tests.conftest import run_cli

EXPECTED_IO = {
    "float32": ("float32", "float32"),
    "float16": ("float32", "float32"),
    "dynamic": ("float32", "float32"),
    "int8": ("int8", "int8"),
    "int16x8": ("float32", "float32"),
}


def test_recipes_are_data():
    names = [r.name for r in recipes.RECIPES]
    assert len(names) == len(set(names))
    assert set(EXPECTED_IO) <= set(names)
    with pytest.raises(MnistTfliteError, match="unknown recipe 'int4'; expected one of: float32"):
        recipes.get_recipe("int4")
    assert [r.name for r in recipes.resolve_recipes("float32, int8")] == ["float32", "int8"]


@pytest.mark.parametrize("name", list(EXPECTED_IO))
def test_each_recipe_converts_with_right_dtypes(name, trained_model, mnist, tmp_path):
    model, _ = trained_model
    recipe = recipes.get_recipe(name)
    rep = data.normalize(data.representative_sample(mnist.x_train, 64, seed=0))
    flatbuffer = convert.convert(model, recipe, rep if recipe.needs_calibration else None)
    path = tmp_path / f"{name}.tflite"
    meta = convert.write_tflite(path, flatbuffer, recipe, data_source=mnist.source)
    assert (meta["input"]["dtype"], meta["output"]["dtype"]) == EXPECTED_IO[name]
    assert meta["sha256"] == sidecar.sha256_bytes(path.read_bytes())
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["recipe"]["name"] == name and doc["class_names"] == list("0123456789")
    assert doc["normalization"]["pixel_scale"] == pytest.approx(1 / 255)
    if name == "int8":
        assert doc["input"]["scale"] > 0 and -128 <= doc["input"]["zero_point"] <= 127
        assert doc["calibration"] is None  # write_tflite was not told: it records only facts given
    # the converted model classifies like the Keras model it came from
    x = data.normalize(mnist.x_test[:300])
    keras_pred = np.asarray(model.predict(x, verbose=0)).argmax(1)
    tfl_pred = TfliteModel(path).predict(x)
    assert (tfl_pred == keras_pred).mean() >= 0.98


def test_int8_needs_calibration(trained_model):
    model, _ = trained_model
    with pytest.raises(ConversionError, match="needs representative images"):
        convert.convert(model, recipes.get_recipe("int8"), None)


def test_legacy_h5_and_savedmodel(trained_model, tmp_path, mnist):
    """The seed saves `mnist_model.h5`; others bring a SavedModel directory."""
    model, _ = trained_model
    h5 = tmp_path / "mnist_model.h5"
    model.save(h5)
    out = tmp_path / "from_h5.tflite"
    meta = convert_file(h5, "dynamic", out, data_spec="embedded")
    assert meta["recipe"]["name"] == "dynamic" and out.exists()

    saved = tmp_path / "saved"
    model.export(saved)
    out2 = tmp_path / "from_saved.tflite"
    meta2 = convert_file(saved, "int8", out2, data_spec="embedded", calibration_size=50)
    assert meta2["input"]["dtype"] == "int8" and meta2["calibration"]["images"] == 50
    x = data.normalize(mnist.x_test[:200])
    assert (TfliteModel(out2).predict(x) == TfliteModel(out).predict(x)).mean() >= 0.97


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(MnistTfliteError, match=r"broken.keras: not a loadable Keras model"):
        convert.load_model_source(bad)
    with pytest.raises(MnistTfliteError, match=r"unsupported model file '.onnx'"):
        (tmp_path / "m.onnx").write_bytes(b"x")
        convert.load_model_source(tmp_path / "m.onnx")
    with pytest.raises(MnistTfliteError, match="has no saved_model.pb"):
        convert.load_model_source(tmp_path)


@pytest.mark.slow
def test_convert_cli(models_dir, tmp_path):
    out = tmp_path / "x.tflite"
    r = run_cli("convert", str(models_dir / "model.keras"), "--recipe", "int8", "--out", str(out),
                "--data", "embedded", "--calibration-size", "100", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["input"]["dtype"] == "int8" and out.exists()
    # refuses to overwrite; unknown recipe; a file that is not a model: one line, exit 2
    for args, message in (
        (["--recipe", "int8"], "already exists"),
        (["--recipe", "int3", "--force"], "unknown recipe 'int3'"),
    ):
        r = run_cli("convert", str(models_dir / "model.keras"), "--out", str(out), *args)
        assert r.returncode == 2 and message in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    junk = tmp_path / "junk.keras"
    junk.write_text("nope")
    r = run_cli("convert", str(junk), "--recipe", "float32", "--out", str(tmp_path / "j.tflite"))
    assert r.returncode == 2 and "junk.keras: not a loadable Keras model" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "j.tflite").exists()
