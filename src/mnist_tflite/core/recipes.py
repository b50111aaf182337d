"""The conversion recipes, as data: adding a recipe is adding an entry to ``RECIPES``.

A leaf module (no TensorFlow, no other stage): the CLI, ``convert``, ``optimize`` and the
report all read the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mnist_tflite.core.errors import MnistTfliteError, find_named

__all__ = [
    "CALIBRATION_SIZE",
    "DEFAULT_RECIPES",
    "METHODS",
    "RECIPES",
    "Recipe",
    "get_recipe",
    "resolve_options",
    "resolve_recipes",
    "with_sparsity",
]

CALIBRATION_SIZE = 500  # int8 / int16x8 calibration images drawn from the training split


# fine-tuning defaults per method; a recipe's ``training_options`` override them.
# Sized for the 60,000-image training set (one epoch there is 12 of the old 5k sample's), so
# that `run --recipes all` stays within 8 minutes on 2 CPU cores for the seed CNN.
METHODS: dict[str, dict[str, Any]] = {
    "qat": {"epochs": 2, "learning_rate": 3e-4},
    "prune": {"epochs": 2, "learning_rate": 2e-3, "sparsity": 0.5},
}


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
    # int8 output: convert without the final softmax (8 bits of probability saturate at
    # 255/256); the host applies softmax (edge/infer.py) and the sidecar says "logits"
    output_logits: bool = False
    # "qat" / "prune": the float model is fine-tuned first (training/optimize.py)
    training: str | None = None
    training_options: tuple[tuple[str, Any], ...] = field(default=())


_INT8 = Recipe(
    "int8",
    "full integer: int8 weights and activations, int8 input and output",
    optimizations=("DEFAULT",),
    supported_ops=("TFLITE_BUILTINS_INT8",),
    inference_input_type="int8",
    inference_output_type="int8",
    output_logits=True,
    needs_calibration=True,
)


def _pruned(name: str, sparsity: float) -> Recipe:
    """``int8`` after magnitude pruning to ``sparsity`` zeros with fine-tuning."""
    return replace(
        _INT8,
        name=name,
        description=f"{100 * sparsity:.0f} % magnitude pruning with fine-tuning, then full integer "
        "(smaller only when zipped)",
        training="prune",
        training_options=(("sparsity", sparsity),),
    )


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
    _INT8,
    Recipe(
        "int16x8",
        "16-bit activations, 8-bit weights, float input and output",
        optimizations=("DEFAULT",),
        supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
        needs_calibration=True,
    ),
    # fine-tuned first (training/optimize.py); QAT's ranges come from training, not calibration
    Recipe(
        "qat-int8",
        "quantization-aware fine-tuning, then full integer with int8 input and output",
        # no TFLITE_BUILTINS_INT8: it demands a representative dataset, which QAT replaces
        optimizations=("DEFAULT",),
        inference_input_type="int8",
        inference_output_type="int8",
        output_logits=True,
        training="qat",
    ),
    *(_pruned(name, sparsity) for name, sparsity in (("pruned-int8", 0.5), ("pruned80-int8", 0.8))),
)
DEFAULT_RECIPES = tuple(r.name for r in RECIPES if r.training is None)
# the fully integer recipes (int8 in, int8 out): what TFLM-only targets and `compile` take
INT8_RECIPES = tuple(
    r.name for r in RECIPES if r.inference_input_type == "int8" and r.inference_output_type == "int8"
)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name lists the known ones."""
    return find_named(RECIPES, name, "recipe")


def resolve_recipes(names: Sequence[str] | str) -> list[Recipe]:
    """``"all"``, ``"default"`` or a comma-separated list -> recipes, validated.

    Example:
        >>> [r.name for r in resolve_recipes("float32,int8")]
        ['float32', 'int8']
    """
    if isinstance(names, str):
        if names == "all":
            return list(RECIPES)
        if names == "default":
            return [get_recipe(n) for n in DEFAULT_RECIPES]
        names = [n.strip() for n in names.split(",")]
    if not names or any(not n for n in names):
        raise MnistTfliteError(
            f"--recipes received {','.join(names)!r}: an empty name; expected all, default or "
            "a comma-separated list of recipe names"
        )
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise MnistTfliteError(f"--recipes names {', '.join(dupes)} more than once; expected each once")
    return [get_recipe(n) for n in names]


def resolve_options(method: str | None, options: Any = ()) -> dict[str, Any]:
    """Method defaults merged with a recipe's ``training_options``, validated.

    Args:
        method: ``"qat"`` or ``"prune"``.
        options: (key, value) pairs, e.g. ``(("sparsity", 0.8),)``.

    Returns:
        The full option dict (``epochs``, ``learning_rate`` and, for pruning, ``sparsity``).
    """
    if method not in METHODS:
        raise MnistTfliteError(f"unknown training method {method!r}; expected one of: {', '.join(METHODS)}")
    opts = dict(METHODS[method])
    for key, value in dict(options).items():
        if key not in opts and key != "max_steps":
            raise MnistTfliteError(f"unknown {method} option {key!r}; expected one of: {', '.join(opts)}")
        opts[key] = value
    if "sparsity" in opts and not (isinstance(opts["sparsity"], (int, float)) and 0 < opts["sparsity"] < 1):
        raise MnistTfliteError(f"sparsity must be in (0, 1), received: {opts['sparsity']!r}")
    if not (isinstance(opts["epochs"], int) and opts["epochs"] >= 1):
        raise MnistTfliteError(f"{method} epochs must be an integer >= 1, received: {opts['epochs']!r}")
    if not 0 < float(opts["learning_rate"]) < 1:
        raise MnistTfliteError(
            f"{method} learning rate must be in (0, 1), received: {opts['learning_rate']!r}"
        )
    return opts


def with_sparsity(recipe: Recipe, sparsity: float | None) -> Recipe:
    """``recipe`` with its target sparsity replaced (``None``: unchanged), validated.

    Example:
        >>> with_sparsity(get_recipe("pruned-int8"), 0.9)
    """
    if sparsity is None:
        return recipe
    if not 0 < sparsity < 1:  # also NaN
        raise MnistTfliteError(f"--sparsity must be in (0, 1), received: {sparsity}")
    if recipe.training != "prune":
        pruning = ", ".join(r.name for r in RECIPES if r.training == "prune")
        raise MnistTfliteError(f"--sparsity applies to pruning recipes ({pruning}), not {recipe.name!r}")
    options = {**dict(recipe.training_options), "sparsity": sparsity}
    resolve_options(recipe.training, options)
    description = f"{recipe.description}; target sparsity overridden to {sparsity:g}"
    return replace(recipe, description=description, training_options=tuple(options.items()))
