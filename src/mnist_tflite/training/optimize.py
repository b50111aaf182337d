"""Fine-tune a trained model before int8 conversion: quantization-aware training and pruning.

Why a child process: tensorflow-model-optimization (tfmot) is the only maintained QAT and
pruning toolkit whose output the TFLite converter understands, and it supports only Keras 2
(``tf_keras``; tfmot issue #1119). Keras 3.15's own ``model.quantize("int8")`` freezes int8
weights and quantizes activations dynamically per call (its only trainable mode, float8, is
for float8 matmuls), so nothing learns the static activation ranges a TFLite int8 graph
needs; Keras ships a fake-quant op but no QAT workflow (range tracking, layer wrapping,
folding, conversion) to build on without re-implementing tfmot. Keras 2 and 3 cannot share an
interpreter, so ``_legacy_optimize`` runs in ``python -m`` with weights, data and options in
files: it rebuilds the same architecture from ``model.ARCHITECTURES`` in ``tf_keras``, copies
the Keras 3 weights over, fine-tunes on the base model's training split with the same seed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import data as data_mod
from mnist_tflite.core import procs
from mnist_tflite.core.errors import ConversionError, MnistTfliteError
from mnist_tflite.core.recipes import Recipe, resolve_options
from mnist_tflite.training.convert import convert
from mnist_tflite.training.model import ARCHITECTURES, Architecture

__all__ = [
    "FineTuneResult",
    "fine_tune",
    "identify_architecture",
    "zip_bytes",
]

CHILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class FineTuneResult:
    """The int8 flatbuffer and what fine-tuning cost."""

    flatbuffer: bytes
    method: str
    architecture: str
    options: dict[str, Any]
    train_seconds: float  # model.fit only, in the child
    child_seconds: float  # the whole child: TF import, fine-tuning, conversion (QAT)
    sparsity: float | None = None  # measured fraction of zero weights in Conv2D/Dense kernels
    history: dict[str, list[float]] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # child: import, setup, fit, finish

    def extra(self) -> dict[str, Any]:
        """Fields for a report row and the model's sidecar."""
        out = {
            "training": self.method,
            "training_options": self.options,
            "finetune_seconds": round(self.train_seconds, 2),
            "finetune_child_seconds": round(self.child_seconds, 2),
            "finetune_phase_seconds": self.phase_seconds,
        }
        if self.sparsity is not None:
            out["sparsity"] = round(self.sparsity, 4)
        return out


def zip_bytes(flatbuffer: bytes) -> int:
    """Size of the model in a deflate-compressed ``.zip``: where pruning's zeros pay off.

    Example:
        >>> zip_bytes(Path("pruned-int8.tflite").read_bytes())
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.tflite", flatbuffer)
    return len(buf.getvalue())


def identify_architecture(model: Any) -> Architecture:
    """The ``ARCHITECTURES`` entry a Keras model was built from, by name and weight shapes.

    Raises:
        MnistTfliteError: the model was not built by this tool (QAT and pruning rebuild it
            layer by layer in Keras 2, so they need to know its exact architecture).
    """
    if isinstance(model, (str, os.PathLike)) or not hasattr(model, "get_weights"):
        raise MnistTfliteError(
            f"{model}: QAT and pruning need a .keras model trained by mnist-tflite, received a SavedModel"
        )
    name = str(getattr(model, "name", ""))
    known = ", ".join(f"mnist_{a.name}" for a in ARCHITECTURES)
    arch = next((a for a in ARCHITECTURES if f"mnist_{a.name}" == name), None)
    if arch is None:
        raise MnistTfliteError(
            f"model {name!r} was not trained by mnist-tflite (expected one of: {known}); "
            "QAT and pruning rebuild the model from its architecture, so train it with `mnist-tflite train`"
        )
    shapes = [tuple(w.shape) for w in model.get_weights()]
    num_classes = int(shapes[-1][0]) if shapes else 10
    expected = [tuple(w.shape) for w in arch.build(num_classes).get_weights()]
    if shapes != expected:
        raise MnistTfliteError(
            f"model {name!r} has weights of shapes {shapes}, expected {expected} for architecture "
            f"{arch.name!r}; it was not trained by mnist-tflite"
        )
    return arch


def fine_tune(
    model: Any,
    recipe: Recipe,
    dataset: data_mod.Dataset,
    train_config: Any,
    representative: np.ndarray | None = None,
    *,
    log: Any = print,
) -> FineTuneResult:
    """Fine-tune ``model`` as ``recipe.training`` says, then convert to int8.

    Args:
        model: a trained Keras 3 model built from ``model.ARCHITECTURES`` (left unchanged).
        recipe: a ``convert.Recipe`` with ``training`` = ``"qat"`` or ``"prune"``.
        dataset: the data the model was trained on; fine-tuning uses the same training split.
        train_config: the ``TrainConfig`` of the base model (seed, batch size, augmentation).
        representative: calibration images, float32 (N, 28, 28, 1); needed for pruning.

    Returns:
        The int8 flatbuffer plus timings and the measured sparsity.

    Example:
        >>> fine_tune(model, get_recipe("qat-int8"), data.load("embedded"), TrainConfig())
    """
    arch = identify_architecture(model)
    num_classes = int(model.get_weights()[-1].shape[0])
    job = _job(recipe, arch, num_classes, train_config)
    opts = job["options"]
    with procs.temp_dir("mnist-tflite-optimize") as work:  # swept by the next run if we are killed
        (work / "job.json").write_text(json.dumps(job))
        np.savez(work / "weights.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        np.savez(work / "data.npz", x_train=dataset.x_train, y_train=dataset.y_train)
        log(f"      {recipe.name}: {recipe.training} fine-tuning {arch.name} for {opts['epochs']} epochs")
        result, child_seconds = _run_child(work, recipe.name)
        log(
            f"      {recipe.name}: fine-tuned in {result['train_seconds']:.0f} s "
            f"({child_seconds:.0f} s with the tf_keras child's start-up)"
        )
        if recipe.training == "qat":
            flatbuffer = (work / "model.tflite").read_bytes()
        else:
            arrays = np.load(work / "weights_out.npz")
            pruned = arch.build(num_classes)
            pruned.set_weights([arrays[f"w{i}"] for i in range(len(arrays.files))])
            # the same converter path as post-training int8, so the two rows differ only by pruning
            flatbuffer = convert(pruned, replace(recipe, training=None, training_options=()), representative)
    if not flatbuffer:
        raise ConversionError(f"recipe {recipe.name!r}: fine-tuning produced no model")
    return FineTuneResult(
        flatbuffer=flatbuffer,
        method=recipe.training,
        architecture=arch.name,
        options=opts,
        train_seconds=float(result["train_seconds"]),
        child_seconds=child_seconds,
        sparsity=result.get("sparsity"),
        history=result.get("history", {}),
        phase_seconds={k: round(v, 2) for k, v in result.get("phase_seconds", {}).items()},
    )


def _job(recipe: Recipe, arch: Architecture, num_classes: int, train_config: Any) -> dict[str, Any]:
    """What the tf_keras child needs to rebuild the model and fine-tune it as training did."""
    opts = resolve_options(recipe.training, recipe.training_options)
    return {
        "method": recipe.training,
        "arch": arch.name,
        "num_classes": num_classes,
        "options": opts,
        "max_steps": opts.pop("max_steps", None),
        "seed": train_config.seed,
        "batch_size": train_config.batch_size,
        "val_fraction": train_config.val_fraction,
        "augment": train_config.augment,
        "recipe": asdict(recipe),
    }


def _run_child(work: Path, recipe_name: str) -> tuple[dict[str, Any], float]:
    # the child dies with us, even on SIGKILL (procs.die_with_parent_from_env)
    env = procs.child_env({**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mnist_tflite.training.optimize_child", str(work)],
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ConversionError(
            f"recipe {recipe_name!r}: fine-tuning took over {CHILD_TIMEOUT_S:.0f} s"
        ) from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not (work / "result.json").exists():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ConversionError(
            f"recipe {recipe_name!r}: fine-tuning failed in the tf_keras child: {last[:200]}"
        )
    return json.loads((work / "result.json").read_text()), seconds
