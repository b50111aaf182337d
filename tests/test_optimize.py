"""QAT, pruning, the tiny architecture and the multi-architecture Pareto report.

Fine-tuning runs in the real tf_keras child process, for a few steps only: these tests
check the plumbing and the properties (int8 end to end, target sparsity reached, weights
unchanged in the parent); the accuracy figures come from ``benchmarks/bench_optimize.py``.
"""

from __future__ import annotations

from tests.conftest import require

require("tensorflow", "tf_keras", "tensorflow_model_optimization")  # before the imports that need them

from dataclasses import replace

import numpy as np
import pytest

from mnist_tflite.cli import main
from mnist_tflite.core import recipes
from mnist_tflite.core.errors import ConversionError, MnistTfliteError
from mnist_tflite.training import convert, optimize


@pytest.fixture(scope="module")
def seed_model(models_dir):
    """The committed, fully trained seed-architecture model (98.7 %)."""
    import keras

    return keras.models.load_model(models_dir / "model.keras", compile=False)


@pytest.fixture(scope="module")
def representative(mnist):
    from mnist_tflite.core import data

    return data.normalize(data.representative_sample(mnist.x_train, 100, 0))


def _few_steps(recipe: recipes.Recipe, steps: int = 8, **options) -> recipes.Recipe:
    opts = {**dict(recipe.training_options), "epochs": 1, "max_steps": steps, **options}
    return replace(recipe, training_options=tuple(opts.items()))


def _accuracy(path, mnist, n: int = 1000) -> float:
    from mnist_tflite.edge.infer import TfliteModel

    probs = TfliteModel(path, allow_modified=True).predict_proba(mnist.x_test[:n].astype(np.float32) / 255)
    return float((probs.argmax(1) == mnist.y_test[:n]).mean())


def _int8_weights(path) -> list[np.ndarray]:
    """The constant int8 weight tensors (conv and dense kernels) of a flatbuffer."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    out = []
    for det in interp.get_tensor_details():
        if det["dtype"] == np.int8 and len(det["shape"]) >= 2 and det["shape"][0] > 1:
            try:
                out.append(interp.get_tensor(det["index"]))
            except ValueError:  # activations have no data before invoke
                continue
    return out


def test_training_recipes_are_data_and_not_in_the_default_set():
    names = {r.name: r for r in recipes.RECIPES}
    assert names["qat-int8"].training == "qat"
    assert names["pruned-int8"].training == "prune"
    assert dict(names["pruned-int8"].training_options)["sparsity"] == 0.5
    assert dict(names["pruned80-int8"].training_options)["sparsity"] == 0.8
    assert not {"qat-int8", "pruned-int8"} & set(recipes.DEFAULT_RECIPES)
    assert {"qat-int8", "pruned-int8"} <= {r.name for r in recipes.resolve_recipes("all")}
    with pytest.raises(ConversionError, match="fine-tunes"):
        convert.convert(None, names["qat-int8"])


@pytest.mark.parametrize("sparsity", [0, 0.0, 1, 1.0, -0.2, 1.5, "half", None])
def test_sparsity_outside_open_unit_interval_is_refused(sparsity):
    with pytest.raises(MnistTfliteError, match=r"sparsity must be in \(0, 1\)"):
        recipes.resolve_options("prune", (("sparsity", sparsity),))


def test_options_merge_defaults_and_reject_unknown_keys():
    opts = recipes.resolve_options("prune", (("sparsity", 0.9), ("epochs", 2)))
    assert opts == {**recipes.METHODS["prune"], "sparsity": 0.9, "epochs": 2}
    with pytest.raises(MnistTfliteError, match="unknown qat option 'sparsity'"):
        recipes.resolve_options("qat", (("sparsity", 0.5),))
    with pytest.raises(MnistTfliteError, match="unknown training method"):
        recipes.resolve_options("distill", ())
    pruned = recipes.with_sparsity(recipes.get_recipe("pruned-int8"), 0.3)
    assert dict(pruned.training_options)["sparsity"] == 0.3
    with pytest.raises(MnistTfliteError, match="applies to pruning recipes"):
        recipes.with_sparsity(recipes.get_recipe("int8"), 0.3)


def test_zip_bytes_rewards_zeros():
    rng = np.random.default_rng(0)
    dense = rng.integers(-128, 128, 20_000, dtype=np.int8)
    sparse = np.where(rng.random(20_000) < 0.8, 0, dense).astype(np.int8)
    assert 0 < optimize.zip_bytes(sparse.tobytes()) < 0.5 * optimize.zip_bytes(dense.tobytes())


def test_identify_architecture_accepts_ours_and_refuses_others(seed_model):
    import keras

    assert optimize.identify_architecture(seed_model).name == "seed"
    foreign = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(MnistTfliteError, match="not trained by mnist-tflite"):
        optimize.identify_architecture(foreign)
    impostor = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name="mnist_seed"
    )
    with pytest.raises(MnistTfliteError, match="expected .* for architecture 'seed'"):
        optimize.identify_architecture(impostor)


def test_tiny_architecture_fits_the_smallest_parts(mnist, representative, tmp_path):
    """File and arena do not depend on the weights' values, so an untrained model measures them."""
    from mnist_tflite.micro.tflm import export as micro
    from mnist_tflite.training.model import build
    from mnist_tflite.training.train import TrainConfig

    model = build("tiny")
    assert model.count_params() < 5_000
    flatbuffer = convert.convert(model, recipes.get_recipe("int8"), representative)
    path = tmp_path / "tiny.tflite"
    convert.write_tflite(path, flatbuffer, recipes.get_recipe("int8"))
    assert len(flatbuffer) <= 10 * 1024
    data, info = micro.load(path)
    arena = micro.measure_arena(data, info, path)
    assert arena["min_bytes"] <= 8 * 1024
    tiny = TrainConfig.for_arch("tiny")  # the architecture's own training defaults win over the seed's
    assert (tiny.epochs, tiny.augment) != (TrainConfig().epochs, TrainConfig().augment)
    assert (tiny.epochs, tiny.learning_rate, tiny.augment) == (10, 3e-3, False)
    assert TrainConfig.for_arch("tiny", epochs=3).epochs == 3
    with pytest.raises(MnistTfliteError, match="unknown architecture 'huge'"):
        TrainConfig.for_arch("huge")


@pytest.mark.slow
def test_qat_fine_tune_in_child_gives_full_int8_model(seed_model, mnist, tmp_path):
    before = [w.copy() for w in seed_model.get_weights()]
    recipe = _few_steps(recipes.get_recipe("qat-int8"))
    result = optimize.fine_tune(seed_model, recipe, mnist, _train_config(), log=lambda m: None)
    path = tmp_path / "qat.tflite"
    meta = convert.write_tflite(path, result.flatbuffer, recipe, extra=result.extra())
    assert meta["input"]["dtype"] == "int8" and meta["output"]["dtype"] == "int8"
    assert meta["training"] == "qat" and meta["finetune_seconds"] > 0
    # fine-tuned without the softmax (from_logits loss): int8 logits, softmax on the host
    assert meta["output_kind"] == "logits" and meta["host_postprocess"] == "softmax"
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes  # no float islands: QAT covered every op
    assert _accuracy(path, mnist) >= 0.97
    assert all(np.array_equal(a, b) for a, b in zip(before, seed_model.get_weights(), strict=True))


@pytest.mark.slow
def test_pruning_reaches_target_sparsity_and_only_zip_shrinks(seed_model, mnist, representative, tmp_path):
    recipe = _few_steps(recipes.get_recipe("pruned-int8"), sparsity=0.6)
    result = optimize.fine_tune(
        seed_model, recipe, mnist, _train_config(), representative, log=lambda m: None
    )
    assert result.sparsity == pytest.approx(0.6, abs=0.01)
    path = tmp_path / "pruned.tflite"
    assert convert.write_tflite(path, result.flatbuffer, recipe)["output_kind"] == "logits"
    kernels = _int8_weights(path)
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.59  # the zeros survive int8 conversion (symmetric weights: 0.0 -> 0)
    assert _accuracy(path, mnist) >= 0.95
    dense = convert.convert(seed_model, recipes.get_recipe("int8"), representative)
    assert abs(len(result.flatbuffer) - len(dense)) < 512  # stored densely: same size...
    assert optimize.zip_bytes(result.flatbuffer) < 0.85 * optimize.zip_bytes(dense)  # ...smaller zipped


def _train_config():
    from mnist_tflite.training.train import TrainConfig

    return TrainConfig()


def test_cli_refuses_qat_on_a_model_not_trained_here(tmp_path, capsys):
    import keras

    foreign = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    foreign.save(tmp_path / "foreign.keras")
    out = tmp_path / "q.tflite"
    code = main(["convert", str(tmp_path / "foreign.keras"), "--recipe", "qat-int8", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "not trained by mnist-tflite" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "M", "--recipe", "pruned-int8", "--sparsity", "1.5"], "sparsity must be in (0, 1)"),
        (["convert", "M", "--recipe", "pruned-int8", "--sparsity", "0"], "sparsity must be in (0, 1)"),
        (["convert", "M", "--recipe", "int8", "--sparsity", "0.5"], "applies to pruning recipes"),
        (["convert", "M", "--recipe", "qat-int9"], "unknown recipe 'qat-int9'"),
        (["train", "--arch", "huge", "--out", "OUT/m.keras"], "unknown architecture 'huge'"),
        (["run", "--arch", "huge", "--out", "OUT/run"], "unknown architecture 'huge'"),
    ],
)
def test_cli_bad_input_one_line_exit_2(args, message, models_dir, tmp_path, capsys):
    args = [a.replace("M", str(models_dir / "model.keras")).replace("OUT", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "x.tflite")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
