"""Train the touching-digit reader: a small CTC model over strings of MNIST training digits.

Strings of 1-5 training digits are composed touching (:mod:`mnist_tflite.training.compose`),
made to look like what the segmenter hands the reader (a component of the ink map, about
20-90 pixels tall: slant, rotation, stroke width, blur, the ink map's contrast stretch and
its 0.12 connection level), normalised by :func:`mnist_tflite.edge.reader.normalize` (the
inference path's own function) and learned with CTC loss. The last ``HOLD_OUT`` training
digits make the held-out strings; the test digits are never used (the benchmark's).

Usage (seeded, deterministic; writes the model and its sidecar atomically):
    python -m mnist_tflite.training.reader --out src/mnist_tflite/edge/models/reader.tflite
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from mnist_tflite.core import atomic, data, sidecar
from mnist_tflite.edge.reader import BLANK, HEIGHT, STEP, WIDTH, decode, normalize
from mnist_tflite.training.compose import compose_line, shear
from mnist_tflite.training.convert import versions
from mnist_tflite.training.tfimport import import_tf, quiet_stdout
from mnist_tflite.training.train import set_determinism

__all__ = ["ReaderConfig", "make_strings", "train_reader"]

HOLD_OUT = 5000  # the last training digits: held-out strings, never trained on
MAX_LEN = 5
LENGTHS = (1, 2, 3, 4, 5)
LENGTH_P = (0.08, 0.22, 0.25, 0.3, 0.15)


@dataclass(frozen=True)
class ReaderConfig:
    """How the reader is trained (defaults: the shipped model)."""

    strings: int = 60_000
    held_out: int = 2_000
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0


def _looks(line: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A composed line (uint8, MNIST scale) -> a component of the ink map, as the segmenter cuts it."""
    ink = shear(line, float(rng.uniform(-0.3, 0.3)))
    img = Image.fromarray(ink)
    factor = float(rng.uniform(0.9, 4.0))  # the ink map: photos at most 320 px on their longest side
    size = (max(2, round(img.width * factor)), max(2, round(img.height * factor)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    k = int(rng.choice([-1, 0, 0, 1])) * int(factor * 28 // 90)
    if k > 0:
        img = img.filter(ImageFilter.MaxFilter(2 * k + 1))
    elif k < 0:
        img = img.filter(ImageFilter.MinFilter(-2 * k + 1))
    img = img.rotate(float(rng.uniform(-4, 4)), resample=Image.Resampling.BILINEAR, expand=True)
    blur = float(rng.choice([0.0, 0.0, 0.6, 1.2])) * max(1.0, factor / 2)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.clip((np.asarray(img, np.float32) / 255.0 - 0.15) * 1.6, 0.0, 1.0)
    a = a + rng.normal(0, float(rng.choice([0.0, 0.03, 0.06])), a.shape).astype(np.float32)
    low, high = float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.55, 0.9))  # the ink map's stretch
    a = np.clip((a - low) / (high - low), 0.0, 1.0)
    mask = a > 0.12  # the segmenter's connection level, grown a pixel for the soft edge
    grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    return a * grown


def make_strings(
    x: np.ndarray, y: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` strings of touching digits drawn from (x, y) -> (images (N, H, W), labels
    (N, MAX_LEN) padded with 0, lengths (N,))."""
    images = np.zeros((count, HEIGHT, WIDTH), np.float32)
    labels = np.zeros((count, MAX_LEN), np.int32)
    lengths = np.zeros(count, np.int32)
    for i in range(count):
        n = int(rng.choice(LENGTHS, p=LENGTH_P))
        idx = rng.integers(0, len(x), n)
        gap = None if rng.random() < 0.85 else (-3, 1)  # touching, or close and overlapping
        line = compose_line(list(x[idx]), rng, gap=gap)
        images[i] = normalize(_looks(line, rng)).image
        labels[i, :n] = y[idx]
        lengths[i] = n
    return images, labels, lengths


def _model(keras: Any) -> Any:
    """(HEIGHT, WIDTH, 1) -> (WIDTH // STEP, 11) logits: the height folds to 1, a step is 4 columns."""
    layers = keras.layers
    inp = keras.Input((HEIGHT, WIDTH, 1))
    z = inp
    for filters, pool in ((16, (2, 2)), (32, (2, 2)), (48, (2, 1)), (64, (4, 1))):
        z = layers.Conv2D(filters, 3, padding="same", use_bias=False)(z)
        z = layers.BatchNormalization()(z)
        z = layers.ReLU()(z)
        z = layers.MaxPooling2D(pool)(z)
    z = layers.Conv2D(64, (1, 5), padding="same", activation="relu")(z)  # context: the neighbours
    z = layers.Conv2D(BLANK + 1, 1)(z)
    logits = layers.Reshape((WIDTH // STEP, BLANK + 1))(z)
    return keras.Model(inp, logits)


def _accuracy(probs: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """(whole strings read right, digit count right) as fractions."""
    right = count = 0
    for p, lab, n in zip(probs, labels, lengths, strict=True):
        read = [d for d, *_ in decode(p)]
        right += read == list(lab[:n])
        count += len(read) == n
    return right / len(probs), count / len(probs)


def train_reader(config: ReaderConfig, out: Path, *, log=print) -> dict[str, Any]:
    """Train, convert to a float32 ``.tflite`` and write it with its sidecar; returns the sidecar."""
    tf = import_tf()
    import keras

    keras.backend.clear_session()  # layer names (in the flatbuffer) restart: same seed, same bytes
    set_determinism(config.seed)
    d = data.load("embedded", log=lambda m: None)  # the official 60,000 + 10,000, checksummed
    x, y = d.x_train, d.y_train.astype(np.int32)
    rng = np.random.default_rng(config.seed)
    t0 = time.perf_counter()
    tr = make_strings(x[:-HOLD_OUT], y[:-HOLD_OUT], config.strings, rng)
    va = make_strings(x[-HOLD_OUT:], y[-HOLD_OUT:], config.held_out, rng)
    log(f"composed {config.strings} + {config.held_out} strings in {time.perf_counter() - t0:.0f} s")
    model = _model(keras)
    opt = keras.optimizers.Adam(config.learning_rate)
    steps = WIDTH // STEP

    @tf.function(reduce_retracing=True)
    def step(xb: Any, lb: Any, nb: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = tf.reduce_mean(
                tf.nn.ctc_loss(
                    lb,
                    logits,
                    nb,
                    tf.fill([tf.shape(xb)[0]], steps),
                    logits_time_major=False,
                    blank_index=BLANK,
                )
            )
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    order_rng = np.random.default_rng(config.seed + 1)
    n = len(tr[0])
    for epoch in range(config.epochs):
        # a step schedule: the last third at a quarter of the rate, the last epoch at 1/16
        if epoch in (config.epochs * 2 // 3, config.epochs - 1):
            opt.learning_rate.assign(float(opt.learning_rate.numpy()) / 4)
        order = order_rng.permutation(n)
        t = time.perf_counter()
        losses = []
        for s in range(0, n - config.batch_size + 1, config.batch_size):
            b = order[s : s + config.batch_size]
            losses.append(float(step(tr[0][b, ..., None], tr[1][b], tr[2][b])))
        probs = tf.nn.softmax(model.predict(va[0][..., None], verbose=0, batch_size=256)).numpy()
        acc, cnt = _accuracy(probs, va[1], va[2])
        took = time.perf_counter() - t
        log(
            f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out {acc:.2%} right, "
            f"count {cnt:.2%}, {took:.0f} s"
        )
    seconds = time.perf_counter() - t0
    export = keras.Model(model.input, keras.layers.Softmax()(model.output))
    conv = tf.lite.TFLiteConverter.from_keras_model(export)
    with quiet_stdout():
        flatbuffer = bytes(conv.convert())
    meta = {
        "model": out.name,
        "kind": "ctc reader of touching digits",
        "sha256": sidecar.sha256_bytes(flatbuffer),
        "size_bytes": len(flatbuffer),
        "class_names": [*data.MNIST_CLASSES, "blank"],
        "normalization": {
            "function": "mnist_tflite.edge.reader.normalize",
            "layout": f"NHWC {HEIGHT}x{WIDTH}x1: ink cropped, 28 px tall, left-aligned, brightest ink 1",
            "polarity": "white ink on black background",
            "output": f"{WIDTH // STEP} steps of {STEP} columns x (10 digits + CTC blank), probabilities",
        },
        "data_source": (
            f"MNIST training set, digits 0-{len(x) - HOLD_OUT - 1} (held out: the last {HOLD_OUT}); "
            f"the MNIST database of handwritten digits ({data.MNIST_ATTRIBUTION})"
        ),
        "training": {**config.__dict__, "seconds": round(seconds, 1), "weights": int(model.count_params())},
        "held_out": {
            "strings": config.held_out,
            "lengths": "1-5 digits, touching (15 % close and overlapping)",
            "number_right": round(acc, 4),
            "count_right": round(cnt, 4),
        },
        "versions": versions(),
    }
    with sidecar.writing(out), atomic.atomic_path(out) as tmp:
        tmp.write_bytes(flatbuffer)
        sidecar.write(out, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python -m mnist_tflite.training.reader --out reader.tflite --seed 0",
    )
    ap.add_argument("--out", type=Path, required=True, help="the .tflite to write (its .json beside it)")
    ap.add_argument("--strings", type=int, default=ReaderConfig.strings)
    ap.add_argument("--epochs", type=int, default=ReaderConfig.epochs)
    ap.add_argument("--seed", type=int, default=ReaderConfig.seed)
    args = ap.parse_args(argv)
    meta = train_reader(ReaderConfig(strings=args.strings, epochs=args.epochs, seed=args.seed), args.out)
    right = meta["held_out"]["number_right"]
    print(f"wrote {args.out} ({meta['size_bytes']:,} B); held-out strings {right:.2%} read right")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
