"""The Keras 2 world: QAT and pruning with tensorflow-model-optimization, in a child process.

tensorflow-model-optimization supports only Keras 2 (``tf_keras``, selected by
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported), and Keras 2 and Keras 3 cannot
share one interpreter. ``optimize.py`` therefore runs ``python -m mnist_tflite.training.optimize_child
WORKDIR`` with everything in files:

- ``job.json``: method (``qat`` / ``prune``), architecture name, options, seed, recipe;
- ``weights.npz``: the trained Keras 3 weights, in ``model.get_weights()`` order;
- ``data.npz``: ``x_train`` (uint8) and ``y_train``, the data the base model was trained on.

It writes ``result.json`` (seconds, history, sparsity) and either ``model.tflite`` (QAT: the
fake-quant graph exists only here, so it is converted here) or ``weights_out.npz`` (pruning:
plain float weights, converted by the parent with the ordinary int8 path).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # must precede the first TensorFlow import
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np

from mnist_tflite.core import data as data_mod
from mnist_tflite.core import procs
from mnist_tflite.training.model import get_architecture, logits_copy
from mnist_tflite.training.tfimport import import_tf, quiet_stdout
from mnist_tflite.training.train import batches


def _dataset(tf: Any, tf_keras: Any, job: dict[str, Any], work: Path) -> tuple[Any, int]:
    """The base model's training split (same seed, same validation hold-out), batched."""
    arrays = np.load(work / "data.npz")
    x, y, _, _ = data_mod.split_validation(
        arrays["x_train"], arrays["y_train"], job["val_fraction"], job["seed"]
    )
    x = data_mod.normalize(x)
    ds = batches(tf, tf_keras, x, y, seed=job["seed"], batch_size=job["batch_size"], augment=job["augment"])
    steps = int(np.ceil(len(x) / job["batch_size"]))
    if job.get("max_steps"):
        ds, steps = ds.take(job["max_steps"]), min(steps, job["max_steps"])
    return ds.prefetch(2), steps


def _prunable_zero_fraction(model: Any) -> float:
    """Fraction of exact zeros over the kernels that pruning acts on (Conv2D and Dense)."""
    zeros = total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            k = kernel.numpy()
            zeros, total = zeros + int((k == 0).sum()), total + k.size
    return zeros / max(total, 1)


def _wrap(
    tfmot: Any, model: Any, method: str, opts: dict[str, Any], steps_per_epoch: int, steps: int
) -> tuple[Any, list[Any]]:
    """The model wrapped for QAT (fake-quant) or pruning (masks on a schedule), and its callbacks."""
    if method == "qat":
        return tfmot.quantization.keras.quantize_model(model), []
    # reach the target sparsity with a third of the steps left to recover from it; the mask
    # only changes every `frequency` steps, so end on one of those or stop short of the target
    frequency = max(1, steps_per_epoch // 4)
    end_step = frequency * max(1, min(round(steps * 2 / 3 / frequency), (steps - 1) // frequency))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=opts["sparsity"],
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    return pruned, [tfmot.sparsity.keras.UpdatePruningStep()]


def run(work: Path) -> dict[str, Any]:
    """Fine-tune as ``work/job.json`` says; returns what ``result.json`` gets."""
    job = json.loads((work / "job.json").read_text())
    t0 = time.perf_counter()
    tf = import_tf()
    import tensorflow_model_optimization as tfmot
    import tf_keras

    phases = {"import": time.perf_counter() - t0}

    tf_keras.utils.set_random_seed(job["seed"])
    tf.config.experimental.enable_op_determinism()

    model = get_architecture(job["arch"]).build(job["num_classes"], keras=tf_keras)
    weights = np.load(work / "weights.npz")
    model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
    # QAT learns the output's int8 range during training: fine-tune the model whose output
    # the device will produce (logits, when the recipe says so), with the matching loss
    from_logits = job["method"] == "qat" and bool(job["recipe"].get("output_logits"))
    if from_logits:
        model = logits_copy(model, keras=tf_keras)

    ds, steps_per_epoch = _dataset(tf, tf_keras, job, work)
    opts = job["options"]
    steps = steps_per_epoch * opts["epochs"]
    tuned, callbacks = _wrap(tfmot, model, job["method"], opts, steps_per_epoch, steps)
    lr = tf_keras.optimizers.schedules.CosineDecay(opts["learning_rate"], decay_steps=steps, alpha=0.05)
    tuned.compile(
        optimizer=tf_keras.optimizers.Adam(lr),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    phases["setup"] = start - t0 - phases["import"]
    hist = tuned.fit(ds, epochs=opts["epochs"], verbose=0, callbacks=callbacks)
    phases["fit"] = time.perf_counter() - start
    result: dict[str, Any] = {
        "train_seconds": phases["fit"],
        "phase_seconds": phases,
        "steps": steps,
        "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()},
    }

    _save(tfmot, tuned, job, work, result)
    phases["finish"] = time.perf_counter() - start - phases["fit"]  # QAT: the conversion
    return result


def _save(tfmot: Any, tuned: Any, job: dict[str, Any], work: Path, result: dict[str, Any]) -> None:
    """QAT: the int8 .tflite, converted here (tf_keras); pruning: the stripped weights."""
    if job["method"] == "qat":
        from dataclasses import replace

        from mnist_tflite.core.recipes import Recipe
        from mnist_tflite.training.convert import convert

        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in job["recipe"].items()}
        # the model is already the logits copy: convert it as it is
        recipe = replace(Recipe(**fields), training=None, training_options=(), output_logits=False)
        with quiet_stdout():
            flatbuffer = convert(tuned, recipe, None)
        (work / "model.tflite").write_bytes(flatbuffer)
    else:
        stripped = tfmot.sparsity.keras.strip_pruning(tuned)
        result["sparsity"] = _prunable_zero_fraction(stripped)
        np.savez(work / "weights_out.npz", **{f"w{i}": w for i, w in enumerate(stripped.get_weights())})


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mnist_tflite.training.optimize_child WORKDIR", file=sys.stderr)
        return 2
    procs.die_with_parent_from_env()  # first: fine-tuning must not outlive a killed parent
    work = Path(argv[0])
    result = run(work)
    (work / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
