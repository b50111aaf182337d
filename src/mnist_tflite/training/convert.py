"""Convert a Keras model (or HDF5 / SavedModel) to ``.tflite`` by recipe.

Recipes are data: adding one is adding an entry to ``RECIPES``.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite import atomic, metadata
from mnist_tflite import data as data_mod
from mnist_tflite.errors import MnistTfliteError, fail
from mnist_tflite.training.tfimport import import_tf, quiet_stdout


@dataclass(frozen=True)
class Recipe:
    """One way to turn a float model into a ``.tflite`` file.

    Field values are names of ``tf.lite`` members, so a recipe stays plain data.
    """

    name: str
    description: str
    optimizations: tuple[str, ...] = ()  # tf.lite.Optimize members
    supported_types: tuple[str, ...] = ()  # tf dtypes for target_spec.supported_types
    supported_ops: tuple[str, ...] = ()  # tf.lite.OpsSet members
    inference_input_type: str | None = None  # tf dtype name, e.g. "int8"
    inference_output_type: str | None = None
    needs_calibration: bool = False
    # "qat" / "prune": the float model is fine-tuned first (see optimize.py)
    training: str | None = None
    training_options: tuple[tuple[str, Any], ...] = field(default=())


RECIPES: tuple[Recipe, ...] = (
    Recipe("float32", "no quantization: the reference"),
    Recipe(
        "float16",
        "float16 weights, float32 compute",
        optimizations=("DEFAULT",),
        supported_types=("float16",),
    ),
    Recipe(
        "dynamic",
        "dynamic range: int8 weights, float activations, no calibration",
        optimizations=("DEFAULT",),
    ),
    Recipe(
        "int8",
        "full integer: int8 weights and activations, int8 input and output",
        optimizations=("DEFAULT",),
        supported_ops=("TFLITE_BUILTINS_INT8",),
        inference_input_type="int8",
        inference_output_type="int8",
        needs_calibration=True,
    ),
    Recipe(
        "int16x8",
        "16-bit activations, 8-bit weights, float input and output",
        optimizations=("DEFAULT",),
        supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
        needs_calibration=True,
    ),
    # fine-tuned first (optimize.py); QAT's ranges come from training, not calibration
    Recipe(
        "qat-int8",
        "quantization-aware fine-tuning, then full integer with int8 input and output",
        # no TFLITE_BUILTINS_INT8: it demands a representative dataset, which QAT replaces
        optimizations=("DEFAULT",),
        inference_input_type="int8",
        inference_output_type="int8",
        training="qat",
    ),
    Recipe(
        "pruned-int8",
        "50 % magnitude pruning with fine-tuning, then full integer (smaller only when zipped)",
        optimizations=("DEFAULT",),
        supported_ops=("TFLITE_BUILTINS_INT8",),
        inference_input_type="int8",
        inference_output_type="int8",
        needs_calibration=True,
        training="prune",
        training_options=(("sparsity", 0.5),),
    ),
    Recipe(
        "pruned80-int8",
        "80 % magnitude pruning with fine-tuning, then full integer (smaller only when zipped)",
        optimizations=("DEFAULT",),
        supported_ops=("TFLITE_BUILTINS_INT8",),
        inference_input_type="int8",
        inference_output_type="int8",
        needs_calibration=True,
        training="prune",
        training_options=(("sparsity", 0.8),),
    ),
)
DEFAULT_RECIPES = tuple(r.name for r in RECIPES if r.training is None)
CALIBRATION_SIZE = 500


def get_recipe(name: str) -> Recipe:
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    known = ", ".join(r.name for r in RECIPES)
    raise MnistTfliteError(f"unknown recipe {name!r}; expected one of: {known}")


def resolve_recipes(names: Sequence[str] | str) -> list[Recipe]:
    """``"all"``, ``"default"`` or a comma-separated list -> recipes, validated."""
    if isinstance(names, str):
        if names == "all":
            return list(RECIPES)
        if names == "default":
            return [get_recipe(n) for n in DEFAULT_RECIPES]
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [get_recipe(n) for n in names]


class ConversionError(MnistTfliteError):
    """The converter could not apply a recipe to this model (a failed row, not a crash)."""


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
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(path, f"not a loadable Keras model ({msg[:160]})") from None


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

    Raises:
        ConversionError: the converter refused this recipe for this model.
    """
    tf = import_tf()
    if recipe.training is not None:
        raise ConversionError(f"recipe {recipe.name!r} fine-tunes the model first; use optimize.py")
    if recipe.needs_calibration and (representative is None or len(representative) == 0):
        raise ConversionError(f"recipe {recipe.name!r} needs representative images for calibration")
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
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConversionError(f"recipe {recipe.name!r} failed: {first[:200]}") from None


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("mnist-tflite", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def io_details(flatbuffer: bytes) -> dict[str, dict[str, Any]]:
    """Input/output dtype, shape, scale and zero point, read by LiteRT from the model."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flatbuffer)
    out = {}
    for key, det in (
        ("input", interp.get_input_details()[0]),
        ("output", interp.get_output_details()[0]),
    ):
        scale, zero_point = det["quantization"]
        out[key] = {
            "dtype": np.dtype(det["dtype"]).name,
            "shape": [int(s) for s in det["shape_signature"]],
            "scale": float(scale),
            "zero_point": int(zero_point),
        }
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
    """Write the model and its metadata sidecar atomically; return the metadata."""
    meta = {
        "model": Path(path).name,
        "sha256": metadata.sha256_bytes(flatbuffer),
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
    atomic.write_bytes(path, flatbuffer)
    metadata.write(path, meta)
    return meta


def convert_file(
    model_path: str | os.PathLike[str],
    recipe_name: str,
    out: str | os.PathLike[str],
    *,
    data_spec: str = "auto",
    calibration_size: int = CALIBRATION_SIZE,
    seed: int = 0,
    sparsity: float | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """``mnist-tflite convert``: one model file, one recipe, one ``.tflite`` plus sidecar."""
    from mnist_tflite.training import optimize

    recipe = optimize.with_sparsity(get_recipe(recipe_name), sparsity)
    source = load_model_source(model_path)
    if recipe.training:  # not one of our architectures: fail before loading data
        arch = optimize.identify_architecture(source)
    rep, calibration, data_source, classes = (
        None,
        None,
        "not used (no calibration)",
        data_mod.MNIST_CLASSES,
    )
    if recipe.needs_calibration or recipe.training:
        ds = data_mod.load(data_spec, log=log)
        data_source, classes = ds.source, ds.class_names
    if recipe.needs_calibration:
        rep = data_mod.normalize(data_mod.representative_sample(ds.x_train, calibration_size, seed))
        calibration = {"images": len(rep), "seed": seed, "from": "training split"}
    extra: dict[str, Any] = {"converted_from": str(model_path)}
    if recipe.training:
        from mnist_tflite.training.train import TrainConfig

        # fine-tune on the data and with the seed that `mnist-tflite train` would have used
        base = TrainConfig.for_arch(arch.name, seed=seed)
        tuned = optimize.fine_tune(source, recipe, ds, base, rep, log=log)
        flatbuffer, extra = tuned.flatbuffer, {**extra, **tuned.extra()}
    else:
        flatbuffer = convert(source, recipe, rep)
    return write_tflite(
        out,
        flatbuffer,
        recipe,
        class_names=classes,
        data_source=data_source,
        calibration=calibration,
        extra=extra,
    )
