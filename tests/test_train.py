"""Training: the seed architecture, determinism for a fixed seed, configuration errors."""

from __future__ import annotations

from tests.conftest import require

require("tensorflow")  # before the imports that need them

import numpy as np
import pytest

from mnist_tflite.core import data
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.training import model
from mnist_tflite.training.train import TrainConfig, train


def test_seed_architecture_matches_the_write_up():
    m = model.build("seed")
    assert m.count_params() == 34_826
    kinds = [type(layer).__name__ for layer in m.layers[1:]]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert m.input_shape == (None, 28, 28, 1) and m.output_shape == (None, 10)


def test_unknown_architecture():
    with pytest.raises(MnistTfliteError, match="unknown architecture 'resnet'; expected one of: seed"):
        model.build("resnet")


def test_same_seed_same_weights(mnist):
    """Bit-identical weights for the same seed on the same machine; another seed differs."""
    small = data.Dataset(mnist.x_train[::5], mnist.y_train[::5], mnist.x_test[:10], mnist.y_test[:10], "t")
    cfg = TrainConfig(epochs=1, batch_size=64, seed=7)
    a = train(small, cfg, log=lambda m: None).model.get_weights()
    b = train(small, cfg, log=lambda m: None).model.get_weights()
    c = train(small, TrainConfig(epochs=1, batch_size=64, seed=8), log=lambda m: None).model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_bfloat16_training_hands_out_a_float32_model_deterministically(mnist):
    """Mixed bfloat16 computes in bfloat16 but the model handed out (saved, converted) is the
    same layers in float32 with the trained weights; the same seed gives the same weights."""
    small = data.Dataset(
        mnist.x_train[::10], mnist.y_train[::10], mnist.x_test[:200], mnist.y_test[:200], "t"
    )
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3, precision="mixed_bfloat16")
    a, b = (train(small, cfg, log=lambda m: None) for _ in range(2))
    assert a.precision == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in a.model.layers} == {"float32"}
    assert all(w.dtype == np.float32 for w in a.model.get_weights())
    assert all(
        np.array_equal(x, y) for x, y in zip(a.model.get_weights(), b.model.get_weights(), strict=True)
    )
    f32 = train(small, TrainConfig(epochs=1, batch_size=64, seed=3), log=lambda m: None)
    assert f32.precision == "float32"
    assert not all(
        np.array_equal(x, y) for x, y in zip(a.model.get_weights(), f32.model.get_weights(), strict=True)
    )
    x = data.normalize(small.x_test)
    probs = a.model.predict(x, verbose=0)
    f32_acc = (f32.model.predict(x, verbose=0).argmax(1) == small.y_test).mean()
    # it learned as much as float32 did from the same images (bfloat16's 8-bit mantissa costs little)
    assert probs.dtype == np.float32 and (probs.argmax(1) == small.y_test).mean() >= f32_acc - 0.05


def test_ema_hands_out_the_averaged_weights(mnist):
    """With an EMA momentum the model handed out holds the moving average, not the last step's
    weights: different weights from the same seed without it, deterministic, still a classifier."""
    small = data.Dataset(
        mnist.x_train[::10], mnist.y_train[::10], mnist.x_test[:200], mnist.y_test[:200], "t"
    )
    plain, ema, again = (
        train(small, TrainConfig(epochs=1, batch_size=64, seed=3, ema_momentum=m), log=lambda m: None)
        for m in (0.0, 0.5, 0.5)  # about 8 steps here: a short average
    )
    pairs = list(zip(plain.model.get_weights(), ema.model.get_weights(), strict=True))
    assert not any(np.array_equal(x, y) for x, y in pairs)
    assert all(
        np.array_equal(x, y) for x, y in zip(ema.model.get_weights(), again.model.get_weights(), strict=True)
    )
    x = data.normalize(small.x_test)
    acc_plain, acc_ema = (
        (r.model.predict(x, verbose=0).argmax(1) == small.y_test).mean() for r in (plain, ema)
    )
    assert acc_ema >= acc_plain - 0.05


def test_auto_precision_follows_the_cpu(monkeypatch):
    from mnist_tflite.training import train as train_mod

    monkeypatch.setattr(train_mod, "cpu_has_bfloat16", lambda: True)
    assert train_mod.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(train_mod, "cpu_has_bfloat16", lambda: False)
    assert train_mod.resolve_precision("auto") == "float32"
    assert train_mod.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_seed_recipe_is_the_write_ups():
    cfg = TrainConfig.seed_recipe(seed=3)
    assert (cfg.epochs, cfg.batch_size, cfg.augment, cfg.cosine_decay, cfg.seed) == (5, 32, False, False, 3)
    assert cfg.precision == "float32"
    assert cfg.val_fraction == 0.0  # the seed's fit() trains on every training image


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (TrainConfig(epochs=0), "--epochs must be >= 1, received: 0"),
        (TrainConfig(batch_size=0), "--batch-size must be >= 1"),
        (TrainConfig(val_fraction=1.5), "validation fraction must be in"),
        (TrainConfig(ema_momentum=1.0), r"--ema: the momentum must be in \[0, 1\), received: 1.0"),
        (
            TrainConfig(precision="fp8"),
            "--precision: expected one of auto, float32, mixed_bfloat16, received: 'fp8'",
        ),
    ],
)
def test_bad_config(cfg, message):
    with pytest.raises(MnistTfliteError, match=message):
        cfg.validate()


@pytest.mark.parametrize("arch", [a.name for a in model.ARCHITECTURES])
def test_param_count_from_the_table_matches_keras(arch):
    """`train` sizes its disk-space check from the table, before TensorFlow is imported."""
    a = model.get_architecture(arch)
    assert a.param_count() == a.build().count_params()
