"""One ``tune`` trial, run by Ray Tune in a worker: measure, train, convert, measure again.

1. The point's geometry (``space``): unbuildable, or int8 weights alone over the flash
   budget -> infeasible at once, no TensorFlow.
2. An untrained copy converted to int8 gives the exact flash size and, run in TFLM, the
   exact arena; over budget -> infeasible, reported with its figures, not trained.
3. Training on the training split reports validation accuracy after every epoch (the
   scheduler stops poor trials early), then the int8 model is measured again and its
   validation accuracy taken with LiteRT; it travels as the trial's checkpoint
   (``model.tflite`` + sidecar).

Every report carries ``score`` (what the search maximizes: validation accuracy, plus a
small bonus for a smaller file; 0 for an infeasible point) and ``epoch``; training reports
also ``rung_score`` (minus the validation loss), on which early stopping ranks trials: on
500 validation images, accuracy moves in steps of 0.2 points and ties or flips on noise,
the loss does not. The test set is never touched here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mnist_tflite.core import procs
from mnist_tflite.scale import space

# the search's objective: accuracy first; +0.2 percentage points per halving of the flash
# size below the budget, so that between two equally accurate points the smaller one wins
SIZE_BONUS_PER_HALVING = 0.002
# test hook, read by the driver: the trial of the point so named (or labelled) raises
CRASH_ENV = "MNIST_TFLITE_TUNE_CRASH"
CALIBRATION_IMAGES = 500
TEMP_PREFIXES = ("mnist-tflite-trial", "mnist-tflite-val")  # <prefix>-<pid>-*: swept once the pid is gone


def score(val_accuracy: float, flash: int, flash_budget: int) -> float:
    return val_accuracy + SIZE_BONUS_PER_HALVING * math.log2(flash_budget / max(flash, 1))


def int8_recipe() -> Any:
    """The recipe every trial is measured with: post-training full integer."""
    from mnist_tflite.core.recipes import get_recipe

    return get_recipe("int8")


def int8_flatbuffer(model_or_arch: Any, rep: np.ndarray, seed: int | None = None) -> bytes:
    """The file ``tune`` measures and hands out: the int8 recipe's flatbuffer without the
    names a device never reads (``convert.without_names``). An ``Architecture`` (with
    ``seed``) is converted untrained: the trained model's exact size."""
    from mnist_tflite.training import search as tf_search
    from mnist_tflite.training.convert import convert, without_names

    if seed is None:
        return without_names(convert(model_or_arch, int8_recipe(), rep))
    return without_names(tf_search.untrained_flatbuffer(model_or_arch, int8_recipe(), rep, seed))


def measure_tflm(flatbuffer: bytes) -> tuple[int | None, str | None]:
    """(exact TFLM arena in bytes, None), or (None, why TFLM cannot run it)."""
    from mnist_tflite.edge.flatbuffer import parse
    from mnist_tflite.micro.tflm.check import tflm_problem
    from mnist_tflite.micro.tflm.interpreter import map_in_children, search_arena

    res = map_in_children(search_arena, [(flatbuffer,)])[0]
    if res.ok:
        return int(res.value["min_bytes"]), None
    return None, tflm_problem(res, parse(flatbuffer), flatbuffer)


def over_budget(flash: int, arena: int | None, budget: dict[str, Any]) -> str | None:
    if flash > budget["flash"]:
        return f"flash {flash:,} B > budget {budget['flash']:,} B"
    if budget.get("ram") and arena is not None and arena > budget["ram"]:
        return f"arena {arena:,} B > budget {budget['ram']:,} B"
    return None


def _setup(settings: dict[str, Any], full: bool = False) -> tuple[Any, np.ndarray]:
    """(the data set, the calibration images), with TensorFlow held to the trial's CPU.

    The trials and the cross-validation see the search subset (:func:`search_subset`); the
    refit (``full``) sees every training image.
    """
    from mnist_tflite.core import data as data_mod
    from mnist_tflite.training import search as tf_search

    tf_search.limit_threads(int(settings.get("threads", 1)))
    images = settings.get("search_images")
    key = (str(settings["data"]), int(settings["seed"]), None if full else images)
    if key not in _LOADED:  # a Ray worker runs many trials and folds: load once
        ds = data_mod.load(settings["data"], log=lambda m: None)
        if not full:
            ds = search_subset(ds, images, int(settings["seed"]))
        rep = data_mod.representative_sample(ds.x_train, CALIBRATION_IMAGES, settings["seed"])
        if len(_LOADED) > 1:  # at most the search subset and the full set
            _LOADED.clear()
        _LOADED[key] = (ds, data_mod.normalize(rep))
    return _LOADED[key]


def search_subset(ds: Any, images: int | None, seed: int) -> Any:
    """``images`` training images drawn (seeded) from ``ds``, or ``ds`` when it has no more.

    A trial on 8,000 images ranks architectures about as a trial on 60,000 would, at a
    seventh of the CPU; the front is then refit on all of them.
    """
    from dataclasses import replace

    n = len(ds.x_train)
    if images is None or images >= n:
        return ds
    idx = np.sort(np.random.default_rng(seed + 2).choice(n, size=images, replace=False))
    source = f"{ds.source}; the search: a seeded subset of {images:,} of the {n:,} training images"
    return replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx], source=source)


_LOADED: dict[tuple[str, int, int | None], tuple[Any, np.ndarray]] = {}


def footprint(spec: space.ArchSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """Exact int8 flash and TFLM arena of a point, untrained (a few seconds, no training)."""
    _, rep = _setup(settings)
    fb = int8_flatbuffer(spec.architecture("smallest"), rep, settings["seed"])
    arena, problem = measure_tflm(fb)
    return {"arch": spec.label(), "flash": len(fb), "arena": arena, "problem": problem}


def run_trial(config: dict[str, Any], settings: dict[str, Any], report: Callable[..., None]) -> None:
    """Run one point; ``report(metrics, checkpoint_dir=None)`` sends results to the search.

    ``settings``: flash, ram (bytes or None), max_epochs, seed, data, val_fraction.
    """
    t0 = time.perf_counter()
    spec, lr = space.from_config(config)
    name = space.point_name(spec, lr) or ""
    base: dict[str, Any] = {
        "point": name,
        "arch": spec.label(),
        "params": spec.params(),
        "macs": spec.macs(),
        "learning_rate": lr,
        "augment": space.augments(config),
    }
    crash = settings.get("crash")
    if crash and crash in (name, spec.label()):
        raise RuntimeError(f"injected crash ({CRASH_ENV}={crash})")

    def send(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        metrics = {**base, **metrics, "seconds": time.perf_counter() - t0}
        report(metrics, checkpoint_dir=checkpoint_dir)

    def infeasible(reason: str, **figures: Any) -> None:
        send(
            {**figures, "status": "infeasible", "reason": reason, "feasible": False, "score": 0.0, "epoch": 0}
        )

    problem = _problem_before_building(spec, settings)
    if problem:
        return infeasible(problem)

    from mnist_tflite.edge.flatbuffer import parse

    ds, rep = _setup(settings)
    # exact flash and arena before any training
    fb0 = int8_flatbuffer(spec.architecture(name or "tuned"), rep, settings["seed"])
    arena0, tflm_error = measure_tflm(fb0)
    figures = {"flash": len(fb0), "arena": arena0, "macs": parse(fb0).macs}
    if tflm_error:
        return infeasible(f"does not run in TFLM: {tflm_error}", **figures)
    why = over_budget(len(fb0), arena0, settings)
    if why:
        return infeasible(why, **figures)
    return _train_and_report(config, settings, ds, figures, send)


def _problem_before_building(spec: space.ArchSpec, settings: dict[str, Any]) -> str | None:
    """Why ``spec`` cannot meet the budget whatever its training, from its shape alone."""
    problem = spec.problem()
    if problem:
        return f"cannot be built: {problem}"
    if spec.params() > settings["flash"]:
        return f"{spec.params():,} int8 weights alone exceed the flash budget {settings['flash']:,} B"
    if settings.get("ram") and spec.min_activation_bytes() > settings["ram"]:
        return f"its largest layer input + output, {spec.min_activation_bytes():,} B, exceeds the RAM budget"
    return None


def _train_and_report(
    config: dict[str, Any],
    settings: dict[str, Any],
    ds: Any,
    figures: dict[str, Any],
    send: Callable[..., None],
) -> None:
    """Train (each epoch but the last reported for ASHA), convert to int8, measure and report."""
    from mnist_tflite.edge.flatbuffer import parse

    max_epochs = int(settings["max_epochs"])

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if epoch < max_epochs:  # the last epoch is reported with the model, below
            val = logs.get("val_accuracy", 0.0)
            send(
                {
                    **figures,
                    "status": "training",
                    "feasible": True,
                    "epoch": epoch,
                    "keras_val_accuracy": val,
                    "rung_score": -logs.get("val_loss", math.inf),
                    "score": score(val, figures["flash"], settings["flash"]),
                }
            )

    fb, cfg, result = _train_int8(config, settings, float(settings["val_fraction"]), on_epoch=on_epoch)
    arena, tflm_error = measure_tflm(fb)
    figures = {"flash": len(fb), "arena": arena, "macs": parse(fb).macs}
    val_correct, val_images = _int8_val_correct(fb, ds, cfg)
    val_int8 = val_correct / val_images if val_images else 0.0
    status_reason = over_budget(len(fb), arena, settings) or tflm_error
    with procs.temp_dir(TEMP_PREFIXES[0]) as tmp:  # pid in the name: swept if we are killed
        _write_model(os.path.join(tmp, "model.tflite"), fb, config, settings, cfg, "training split")
        metrics = {
            **figures,
            "status": "infeasible" if status_reason else "ok",
            "reason": status_reason,
            "feasible": status_reason is None,
            "epoch": max_epochs,
            "keras_val_accuracy": result.history.get("val_accuracy", [0.0])[-1],
            "rung_score": -result.history.get("val_loss", [math.inf])[-1],
            "val_accuracy": val_int8,
            "val_correct": val_correct,
            "val_images": val_images,
            "score": 0.0 if status_reason else score(val_int8, len(fb), settings["flash"]),
        }
        send(metrics, checkpoint_dir=str(tmp))


def _int8_val_correct(flatbuffer: bytes, ds: Any, cfg: Any) -> tuple[int, int]:
    """(images the int8 model gets right, images) on the block that ``cfg`` held out."""
    from mnist_tflite.core.data import normalize, split_validation
    from mnist_tflite.edge.infer import TfliteModel

    _, _, x_val, y_val = split_validation(ds.x_train, ds.y_train, cfg.val_fraction, cfg.seed, cfg.val_block)
    if not len(x_val):
        return 0, 0
    with procs.temp_dir(TEMP_PREFIXES[1]) as tmp:
        path = os.path.join(tmp, "m.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        model = TfliteModel(path, num_threads=1)
        return int(np.sum(model.predict(normalize(x_val)) == y_val)), len(y_val)


def _train_int8(
    config: dict[str, Any],
    settings: dict[str, Any],
    val_fraction: float,
    val_block: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    full: bool = False,
) -> tuple[bytes, Any, Any]:
    """Train the point as every trial is trained (same epochs, seed, schedule, split) and
    convert it to int8: (flatbuffer, train config, train result). ``full``: the refit, on
    every training image for ``refit_epochs``."""
    from mnist_tflite.training.train import TrainConfig, train

    spec, lr = space.from_config(config)
    arch = spec.architecture(space.point_name(spec, lr) or "tuned")
    ds, rep = _setup(settings, full)
    cfg = TrainConfig(
        arch=arch.name,
        epochs=int(settings["refit_epochs" if full else "max_epochs"]),
        learning_rate=lr,
        augment=space.augments(config),
        val_fraction=val_fraction,
        val_block=val_block,
        seed=int(settings["seed"]),
    )
    result = train(ds, cfg, architecture=arch, on_epoch=on_epoch, log=lambda m: None)
    return int8_flatbuffer(result.model, rep), cfg, result


def cross_validation_fold(config: dict[str, Any], settings: dict[str, Any], fold: int) -> dict[str, Any]:
    """Train the point with fold ``fold`` of the training data held out; the int8 model's score on it.

    The folds are the ``val_fraction``-sized blocks of the same seeded shuffle that the trial
    held out block 0 of, so folds 0 .. k-1 see every training image once.
    """
    t0 = time.perf_counter()
    fb, cfg, _ = _train_int8(config, settings, float(settings["val_fraction"]), fold)
    correct, images = _int8_val_correct(fb, _setup(settings)[0], cfg)
    return {"fold": fold, "correct": correct, "images": images, "seconds": round(time.perf_counter() - t0, 1)}


def _write_model(
    path: str,
    flatbuffer: bytes,
    config: dict[str, Any],
    settings: dict[str, Any],
    cfg: Any,
    calibrated_on: str,
    full: bool = False,
) -> None:
    """The int8 model and its sidecar: the point, the seed and how it was trained."""
    from mnist_tflite.training.convert import write_tflite

    spec, lr = space.from_config(config)
    ds, rep = _setup(settings, full)  # the same objects training used
    write_tflite(
        path,
        flatbuffer,
        int8_recipe(),
        class_names=ds.class_names,
        data_source=ds.source,
        calibration={"images": len(rep), "seed": settings["seed"], "from": calibrated_on},
        extra={
            "architecture": spec.label(),
            "architecture_spec": spec.to_dict(),
            "seed": settings["seed"],
            "train": {
                "epochs": cfg.epochs,
                "learning_rate": lr,
                "augment": cfg.augment,
                "val_fraction": cfg.val_fraction,
                "images": len(ds.x_train),
            },
        },
    )


def refit(config: dict[str, Any], settings: dict[str, Any], path: str) -> dict[str, Any]:
    """Train the point on the whole training data (nothing held out, not only the search subset)
    for ``refit_epochs`` and write it, int8, with its sidecar to ``path``: the model ``tune``
    hands out. Returns its flash and TFLM arena."""
    from mnist_tflite.edge.flatbuffer import parse

    t0 = time.perf_counter()
    fb, cfg, _ = _train_int8(config, settings, 0.0, full=True)
    arena, problem = measure_tflm(fb)
    _write_model(path, fb, config, settings, cfg, "training data", full=True)
    return {
        "flash": len(fb),
        "arena": arena,
        "problem": problem,
        "macs": parse(fb).macs,
        "seconds": round(time.perf_counter() - t0, 1),
    }
