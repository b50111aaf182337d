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


def test_seed_recipe_is_the_write_ups():
    cfg = TrainConfig.seed_recipe(seed=3)
    assert (cfg.epochs, cfg.batch_size, cfg.augment, cfg.cosine_decay, cfg.seed) == (5, 32, False, False, 3)
    assert cfg.val_fraction == 0.0  # the seed's fit() trains on every training image


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (TrainConfig(epochs=0), "--epochs must be >= 1, received: 0"),
        (TrainConfig(batch_size=0), "--batch-size must be >= 1"),
        (TrainConfig(val_fraction=1.5), "validation fraction must be in"),
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
