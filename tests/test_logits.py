"""int8 models output logits and the host applies softmax: confidences are never pinned.

An int8 softmax output saturates at 255/256 = 99.6 % and rounds every runner-up below
1/512 to 0.0 %; ``recipes.Recipe.output_logits`` converts the model without its softmax.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mnist_tflite.core import data
from mnist_tflite.core.recipes import RECIPES, get_recipe
from mnist_tflite.edge.flatbuffer import parse
from mnist_tflite.edge.infer import TfliteModel

PINNED = 255 / 256  # the largest probability an int8 softmax output (scale 1/256) can express


@pytest.fixture(scope="module")
def probs(models_dir, mnist):
    x = data.normalize(mnist.x_test)
    return {name: TfliteModel(models_dir / f"{name}.tflite").predict_proba(x) for name in ("float32", "int8")}


def test_int8_recipes_output_logits_and_float_recipes_probabilities():
    for recipe in RECIPES:
        assert recipe.output_logits == (recipe.inference_output_type == "int8"), recipe.name


def test_committed_int8_model_ends_in_logits_and_says_so(models_dir):
    info = parse((models_dir / "int8.tflite").read_bytes())
    assert info.nodes[-1].op == "FULLY_CONNECTED" and "SOFTMAX" not in info.ops
    assert info.output_kind == "logits"
    meta = json.loads((models_dir / "int8.json").read_text())
    assert meta["output_kind"] == "logits" and meta["host_postprocess"] == "softmax"
    assert meta["recipe"]["output_logits"] is True
    assert TfliteModel(models_dir / "int8.tflite").output_kind == "logits"
    for name in ("float32", "float16", "dynamic"):
        assert parse((models_dir / f"{name}.tflite").read_bytes()).output_kind == "probabilities"
        for kernels in ("default", "builtin"):  # XNNPACK hides the SOFTMAX node in its delegate
            assert TfliteModel(models_dir / f"{name}.tflite", kernels=kernels).output_kind == "probabilities"
        assert json.loads((models_dir / f"{name}.json").read_text())["output_kind"] == "probabilities"


def test_int8_probabilities_are_not_pinned(probs):
    p8, p32 = probs["int8"], probs["float32"]
    np.testing.assert_allclose(p8.sum(axis=1), 1.0, atol=1e-5)
    confident = p32.max(axis=1) > 0.999
    assert confident.sum() > 1000
    # a confident answer reads above 99.6 %, as the float model's does...
    assert (p8.max(axis=1)[confident] > PINNED).mean() > 0.9
    # ...and the runners-up keep their (small) probabilities instead of reading 0.0 %
    runner_up = np.sort(p8, axis=1)[:, -2]
    assert (runner_up > 0).mean() > 0.99


def test_a_softmax_model_is_not_softmaxed_twice(models_dir, mnist):
    model = TfliteModel(models_dir / "float32.tflite")
    x = data.normalize(mnist.x_test[:100])
    np.testing.assert_array_equal(model.predict_proba(x), model.run_raw(x))


def test_int8_stays_close_to_float32(probs):
    p8, p32 = probs["int8"], probs["float32"]
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.995
    diff = np.abs(p8 - p32)
    # largely within 1 %; the worst rows are ambiguous digits, where int8 rounding of the
    # activations moves a near-even split (see the report's max Δprob)
    assert np.quantile(diff.max(axis=1), 0.99) < 0.05
    assert diff.mean() < 1e-3


def test_output_kind_comes_from_the_model_not_the_sidecar(models_dir, tmp_path, mnist):
    """A model without a sidecar (e.g. one converted elsewhere) gets the same answers."""
    bare = tmp_path / "bare.tflite"
    shutil.copy(models_dir / "int8.tflite", bare)
    x = data.normalize(mnist.x_test[:200])
    model = TfliteModel(bare)
    assert model.metadata is None and model.output_kind == "logits"
    np.testing.assert_array_equal(
        model.predict_proba(x), TfliteModel(models_dir / "int8.tflite").predict_proba(x)
    )


def test_logits_copy_keeps_weights_and_drops_only_the_softmax(trained_model, mnist):
    from mnist_tflite.training.model import logits_copy

    model, _ = trained_model
    copy = logits_copy(model)
    assert copy is not model and copy.layers[-1].get_config()["activation"] == "linear"
    assert model.layers[-1].get_config()["activation"] == "softmax"  # the original is untouched
    x = data.normalize(mnist.x_test[:64])
    logits = np.asarray(copy.predict(x, verbose=0))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), model.predict(x, verbose=0), atol=1e-6)
    assert logits_copy(copy) is copy  # nothing left to strip


def test_int8_recipe_converts_to_logits(trained_model, mnist, tmp_path):
    from mnist_tflite.training.convert import convert

    model, _ = trained_model
    rep = data.normalize(mnist.x_train[:100])
    flatbuffer = convert(model, get_recipe("int8"), rep)
    assert parse(flatbuffer).output_kind == "logits"
    assert parse(convert(model, get_recipe("float32"))).output_kind == "probabilities"


def test_an_int8_softmax_model_is_read_as_probabilities(models_dir, mnist):
    """The int8 model as the recipe wrote it before (ends in SOFTMAX): no second softmax."""
    model = TfliteModel(models_dir / "int8_softmax.tflite")
    assert model.output_kind == "probabilities"
    x = data.normalize(mnist.x_test[:100])
    np.testing.assert_array_equal(model.predict_proba(x), model.dequantize_output(model.run_raw(x)))
    assert model.predict_proba(x).max() <= PINNED  # the pin this change removes
