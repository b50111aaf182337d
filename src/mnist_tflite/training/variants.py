"""One variant of a trained model: the recipe applied, fine-tuning first when it says so.

``build_variant`` is the one place that knows which recipes fine-tune; ``run`` calls it for
every recipe, ``convert_file`` (the ``convert`` command) for one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.core.recipes import CALIBRATION_SIZE, Recipe, get_recipe, with_sparsity
from mnist_tflite.core.values import check_seed
from mnist_tflite.training import optimize
from mnist_tflite.training.convert import convert, load_model_source, write_tflite
from mnist_tflite.training.train import TrainConfig


@dataclass(frozen=True)
class Variant:
    """A built ``.tflite`` and the figures its report row and sidecar carry."""

    recipe: Recipe
    flatbuffer: bytes
    extra: dict[str, Any] = field(default_factory=dict)


def build_variant(
    model: Any,
    recipe: Recipe,
    dataset: data_mod.Dataset | None,
    train_config: TrainConfig,
    representative: np.ndarray | None,
    *,
    log: Callable[[str], None] = print,
) -> Variant:
    """Apply ``recipe`` to a trained model.

    Args:
        model: a Keras model (or a SavedModel path for recipes that do not fine-tune).
        recipe: the recipe; QAT and pruning recipes fine-tune on ``dataset`` first.
        dataset: the data the model was trained on (needed only to fine-tune).
        train_config: the base model's training options (seed, batch size, augmentation).
        representative: calibration images, float32 (N, 28, 28, 1).

    Returns:
        The flatbuffer with its extras: fine-tuning figures and the zipped size.

    Raises:
        ConversionError: the converter or the fine-tuning child refused the recipe.
    """
    calibration = representative if recipe.needs_calibration else None
    extra: dict[str, Any] = {}
    if recipe.training:
        if dataset is None:
            raise ValueError(f"recipe {recipe.name!r} fine-tunes: it needs the training data")
        tuned = optimize.fine_tune(model, recipe, dataset, train_config, calibration, log=log)
        flatbuffer, extra = tuned.flatbuffer, tuned.extra()
    else:
        flatbuffer = convert(model, recipe, calibration)
    return Variant(recipe, flatbuffer, {**extra, "zip_bytes": optimize.zip_bytes(flatbuffer)})


def convert_file(
    model_path: str | os.PathLike[str],
    recipe_name: str,
    out: str | os.PathLike[str],
    *,
    data_spec: str = "auto",
    calibration_size: int = CALIBRATION_SIZE,
    seed: int = 0,
    sparsity: float | None = None,
    downloader: Callable[[], Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``mnist-tflite convert``: one model file, one recipe, one ``.tflite`` plus sidecar.

    Example:
        >>> convert_file("model.keras", "int8", "model_int8.tflite", data_spec="embedded")
    """
    recipe = with_sparsity(get_recipe(recipe_name), sparsity)
    if calibration_size < 1:
        raise MnistTfliteError(f"--calibration-size must be >= 1, received: {calibration_size}")
    check_seed(seed)
    source = load_model_source(model_path)
    base = TrainConfig(seed=seed)
    if recipe.training:  # not one of our architectures: fail before loading data
        arch = optimize.identify_architecture(source)
        # fine-tune with the options and seed that `mnist-tflite train` would have used
        base = TrainConfig.for_arch(arch.name, seed=seed)
    ds, rep, calibration = None, None, None
    data_source, classes = "not used (no calibration)", data_mod.MNIST_CLASSES
    if recipe.needs_calibration or recipe.training:
        ds = data_mod.load(data_spec, downloader=downloader, log=log, need_train=True)
        data_source, classes = ds.source, ds.class_names
    if recipe.needs_calibration and ds is not None:
        rep = data_mod.normalize(data_mod.representative_sample(ds.x_train, calibration_size, seed))
        calibration = {"images": len(rep), "seed": seed, "from": "training split"}
    variant = build_variant(source, recipe, ds, base, rep, log=log)
    extra = {k: v for k, v in variant.extra.items() if k != "zip_bytes"}
    return write_tflite(
        out,
        variant.flatbuffer,
        recipe,
        class_names=classes,
        data_source=data_source,
        calibration=calibration,
        extra={"converted_from": str(model_path), **extra},
    )
