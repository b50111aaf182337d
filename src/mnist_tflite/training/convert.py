"""Convert a Keras model (or HDF5 / SavedModel) to ``.tflite`` by recipe (``recipes.RECIPES``)."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic, sidecar
from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import ConversionError, fail, first_line
from mnist_tflite.core.recipes import Recipe
from mnist_tflite.edge.infer import io_details
from mnist_tflite.training.model import logits_copy
from mnist_tflite.training.tfimport import import_tf, quiet_stdout


def load_model_source(path: str | os.PathLike[str]) -> Any:
    """A Keras model from ``.keras`` / ``.h5``, or the path itself for a SavedModel directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise fail(path, "directory has no saved_model.pb; expected a TensorFlow SavedModel")
        return path
    if not path.exists():
        raise fail(path, "no such file")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise fail(
            path,
            f"unsupported model file {path.suffix!r}; expected .keras, .h5 or a SavedModel dir",
        )
    import_tf()
    import keras

    try:
        with quiet_stdout():
            return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a file that is not a model
        raise fail(path, f"not a loadable Keras model ({first_line(exc, 160)})") from None


def without_names(flatbuffer: bytes) -> bytes:
    """The model without the strings a device never reads: tensor and subgraph names and the
    signature (TensorFlow's own ``flatbuffer_utils.strip_strings``). Operators, weights and
    quantization are untouched: LiteRT, TFLM and ``compile`` run it as before, and it is
    about 0.8 KB smaller (``tune``'s 8 KB model: 7,936 -> 7,144 B)."""
    from tensorflow.lite.tools import flatbuffer_utils

    import_tf()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _converter(source: Any) -> Any:
    tf = import_tf()
    if isinstance(source, (str, os.PathLike)):
        return tf.lite.TFLiteConverter.from_saved_model(str(source))
    return tf.lite.TFLiteConverter.from_keras_model(source)


def convert(
    source: Any,
    recipe: Recipe,
    representative: np.ndarray | None = None,
) -> bytes:
    """Apply ``recipe`` to a Keras model or SavedModel path; return the flatbuffer bytes.

    Args:
        source: a Keras model, or a SavedModel directory path.
        recipe: the recipe to apply.
        representative: float32 (N, 28, 28, 1) images for calibration, when the recipe needs it.
            With ``recipe.output_logits`` a Keras model is converted without its final
            softmax (``model.logits_copy``).

    Raises:
        ConversionError: the converter refused this recipe for this model.
    """
    tf = import_tf()
    if recipe.training is not None:
        raise ConversionError(
            f"recipe {recipe.name!r} fine-tunes the model first; build it with variants.build_variant() "
            f"or `mnist-tflite convert MODEL --recipe {recipe.name}`"
        )
    if recipe.needs_calibration and (representative is None or len(representative) == 0):
        raise ConversionError(f"recipe {recipe.name!r} needs representative images for calibration")
    if recipe.output_logits and not isinstance(source, (str, os.PathLike)):
        source = logits_copy(source)  # a SavedModel keeps its own output (the sidecar says which)
    conv = _converter(source)
    conv.optimizations = [getattr(tf.lite.Optimize, o) for o in recipe.optimizations]
    if recipe.supported_types:
        conv.target_spec.supported_types = [getattr(tf, t) for t in recipe.supported_types]
    if recipe.supported_ops:
        conv.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o) for o in recipe.supported_ops]
    if recipe.inference_input_type:
        conv.inference_input_type = getattr(tf, recipe.inference_input_type)
    if recipe.inference_output_type:
        conv.inference_output_type = getattr(tf, recipe.inference_output_type)
    if recipe.needs_calibration:
        rep = np.asarray(representative, dtype=np.float32).reshape(-1, 28, 28, 1)

        def gen() -> Any:
            for i in range(len(rep)):
                yield [rep[i : i + 1]]

        conv.representative_dataset = gen
    try:
        with quiet_stdout():
            return bytes(conv.convert())
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ConversionError(f"recipe {recipe.name!r} failed: {first_line(exc)}") from None


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("mnist-tflite", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def write_tflite(
    path: str | os.PathLike[str],
    flatbuffer: bytes,
    recipe: Recipe,
    *,
    class_names: Sequence[str] = data_mod.MNIST_CLASSES,
    data_source: str = "unknown",
    calibration: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model and its metadata sidecar as a unit (see ``sidecar.writing``); return the metadata."""
    if Path(path).suffix != ".tflite":  # the sidecar is <stem>.json: it would overwrite a .json model path
        raise fail(path, "expected a file name ending in .tflite")
    meta = {
        "model": Path(path).name,
        "sha256": sidecar.sha256_bytes(flatbuffer),
        "size_bytes": len(flatbuffer),
        "recipe": {k: v for k, v in asdict(recipe).items() if v not in ((), None)},
        "class_names": list(class_names),
        "normalization": {
            "pixel_scale": data_mod.PIXEL_SCALE,
            "pixel_offset": 0.0,
            "input_range": [0.0, 1.0],
            "layout": "NHWC 28x28x1",
            "polarity": "white digit on black background",
        },
        **io_details(flatbuffer),
        "data_source": data_source,
        "calibration": calibration,
        "versions": versions(),
        **(extra or {}),
    }
    # sidecar replaced before the model: a model never stands without the hash that vouches for it
    with sidecar.writing(path), atomic.atomic_path(path) as model_tmp:
        model_tmp.write_bytes(flatbuffer)  # the big write first: a full disk fails here, naming the model
        sidecar.write(path, meta)
    return meta
