"""Train a Keras model on MNIST-shaped data, deterministically for a given seed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.core.values import check_int_range, check_seed
from mnist_tflite.training.tfimport import import_tf

MAX_EPOCHS = 100_000
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
MAX_BATCH = 65_536  # larger batches than the data set are pointless; TF overflows far beyond


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights.

    The defaults were chosen for the 60,000 official training images by
    ``benchmarks/sweep_training.py`` (``benchmarks/results/training_sweep.json``): the most
    accuracy that fits a ``run`` of about two and a half minutes on 2 CPU cores.
    ``TrainConfig.seed_recipe()`` is the seed write-up's exact recipe.
    """

    arch: str = "seed"
    epochs: int = 6
    batch_size: int = 128  # the seed's 32 costs 30 % more CPU per epoch (sweep: 20.6 vs 16.1 CPU s)
    learning_rate: float = 2e-3
    cosine_decay: bool = True
    augment: bool = True
    val_fraction: float = 0.05
    val_block: int = 0  # which val_fraction-sized block is held out (a fold of a cross-validation)
    seed: int = 0
    # mixed_bfloat16: bfloat16 arithmetic, float32 weights and softmax (Keras mixed precision);
    # auto: that when the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), else float32.
    # The trained model is always handed out as float32 (same layers, same weights).
    precision: str = "float32"
    # > 0: the weights handed out are an exponential moving average of the trained ones, with
    # this momentum (Keras' Adam ``use_ema``); the validation figures during training are not
    ema_momentum: float = 0.0

    @classmethod
    def seed_recipe(cls, **overrides: Any) -> TrainConfig:
        """The seed's recipe: 5 epochs, batch 32, Adam defaults, no augmentation, no schedule, no hold-out."""
        base = dict(
            epochs=5,
            batch_size=32,
            learning_rate=1e-3,
            cosine_decay=False,
            augment=False,
            val_fraction=0.0,
            precision="float32",
            ema_momentum=0.0,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def for_arch(cls, arch: str = "seed", **overrides: Any) -> TrainConfig:
        """These defaults, then the architecture's ``train_defaults``, then ``overrides``."""
        from mnist_tflite.training.model import get_architecture

        return cls(**{**dict(get_architecture(arch).train_defaults), "arch": arch, **overrides})

    def validate(self, *, known_arch: bool = True) -> None:
        """Raise MnistTfliteError for a bad field; ``known_arch``: ``arch`` must name a table entry."""
        from mnist_tflite.training.model import get_architecture

        if known_arch:
            get_architecture(self.arch)
        check_int_range(self.epochs, "--epochs", 1, MAX_EPOCHS)
        check_int_range(self.batch_size, "--batch-size", 1, MAX_BATCH)
        check_seed(self.seed)
        if not 0.0 <= self.val_fraction < 1.0:
            raise MnistTfliteError(f"validation fraction must be in [0, 1), received: {self.val_fraction}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise MnistTfliteError(f"--ema: the momentum must be in [0, 1), received: {self.ema_momentum}")
        if self.precision not in PRECISIONS:
            raise MnistTfliteError(
                f"--precision: expected one of {', '.join(PRECISIONS)}, received: {self.precision!r}"
            )


@dataclass(frozen=True)
class TrainResult:
    model: Any
    history: dict[str, list[float]]
    seconds: float
    config: TrainConfig
    precision: str = "float32"  # what training computed in (``config.precision`` resolved)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo); empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_bfloat16() -> bool:
    """Does this CPU multiply bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)?"""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``mixed_bfloat16`` on a CPU with native bfloat16, else ``float32``."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TF and make TF ops deterministic (same seed -> same weights)."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    tf = import_tf()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def augmenter(keras: Any, seed: int) -> Any:
    """Small geometric jitter: MNIST digits are size-normalized and centred, so keep it mild.

    ``keras`` is Keras 3 here and ``tf_keras`` in the fine-tuning child, so QAT and pruning
    see the same jitter as training.
    """
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.08, fill_mode="constant", seed=seed + 2),
        ],
        name="augment",
    )


def batches(
    tf: Any, keras: Any, x: np.ndarray, y: np.ndarray, *, seed: int, batch_size: int, augment: bool
) -> Any:
    """The training split as a seeded, shuffled, batched (and jittered) ``tf.data`` pipeline."""
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if augment:
        jitter = augmenter(keras, seed)
        ds = ds.map(lambda a, b: (jitter(a, training=True), b), num_parallel_calls=1)
    return ds


def train(
    dataset: data_mod.Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    log: Callable[[str], None] = print,
    architecture: Any = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config.arch`` on ``dataset``; returns the Keras model and its history.

    Args:
        architecture: an ``Architecture`` to train instead of the table entry named by
            ``config.arch`` (which is then only its label), e.g. a point of ``tune``'s space.
        on_epoch: called after each epoch with (epoch number from 1, Keras' logs as floats:
            loss, accuracy, val_loss, val_accuracy); ``tune`` reports to Ray Tune from it.

    Example:
        >>> result = train(data.load("embedded"), TrainConfig(epochs=2))
    """
    config.validate(known_arch=architecture is None)
    set_determinism(config.seed)
    import keras
    import tensorflow as tf

    from mnist_tflite.training.model import get_architecture

    arch = architecture if architecture is not None else get_architecture(config.arch)
    x_tr, y_tr, x_val, y_val = data_mod.split_validation(
        dataset.x_train, dataset.y_train, config.val_fraction, config.seed, config.val_block
    )
    x_tr, x_val = data_mod.normalize(x_tr), data_mod.normalize(x_val)
    steps = int(np.ceil(len(x_tr) / config.batch_size)) * config.epochs
    lr: Any = config.learning_rate
    if config.cosine_decay:
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
    precision = resolve_precision(config.precision)
    if precision != "float32":
        log(f"  computing in {precision} (float32 weights; the model is handed out in float32)")
    model = arch.build(len(dataset.class_names), dtype=None if precision == "float32" else precision)
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    if ema:
        log(f"  handing out the moving average of the weights (momentum {config.ema_momentum:g})")
    model.compile(
        optimizer=keras.optimizers.Adam(lr, **ema),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    ds = batches(
        tf, keras, x_tr, y_tr, seed=config.seed, batch_size=config.batch_size, augment=config.augment
    ).prefetch(2)
    val = (x_val, y_val.astype(np.int32)) if len(x_val) else None

    start = time.perf_counter()
    hist = model.fit(
        ds,
        epochs=config.epochs,
        validation_data=val,
        verbose=0,
        shuffle=False,  # tf.data already shuffles, seeded
        callbacks=[_EpochLog(config.epochs, log, on_epoch)],
    )
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if precision != "float32":  # the same layers in float32, for conversion and for the .keras file
        trained, model = model, arch.build(len(dataset.class_names))
        model.set_weights(trained.get_weights())
    return TrainResult(model=model, history=history, seconds=seconds, config=config, precision=precision)


class _EpochLog:
    """One progress line per epoch (Keras' own bar is noisy in logs and CI)."""

    def __new__(
        cls,
        epochs: int,
        log: Callable[[str], None],
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> Any:
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                val = f"  val_acc {logs['val_accuracy']:.4f}" if "val_accuracy" in logs else ""
                log(
                    f"  epoch {epoch + 1:>3}/{epochs}  loss {logs.get('loss', 0):.4f}  "
                    f"acc {logs.get('accuracy', 0):.4f}{val}  {time.perf_counter() - self._t:.1f}s"
                )
                if on_epoch is not None:
                    on_epoch(epoch + 1, {k: float(v) for k, v in logs.items()})

        return EpochLog()


def save_model(model: Any, path: str | os.PathLike[str]) -> Path:
    """Save in the Keras 3 format, atomically."""
    from mnist_tflite.core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_suffix(".keras")  # Keras insists on the extension
        try:
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
        except OSError as exc:  # full disk: name our file, not Keras's temporary one
            raise OSError(exc.errno, exc.strerror) from None
        finally:
            keras_tmp.unlink(missing_ok=True)
    return path


def keras_file_bytes(arch: str) -> int:
    """An upper bound of the ``.keras`` file's size: weights, two Adam moments, the zip's overhead."""
    from mnist_tflite.training.model import get_architecture

    a = get_architecture(arch)
    params = a.param_count()
    if params is None:  # a layer the table arithmetic does not know: ask Keras
        params = a.build().count_params()
    return 3 * 4 * params + (128 << 10)
