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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from mnist_tflite.core import atomic, data, sidecar
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.edge.infer import vetted_model_bytes
from mnist_tflite.edge.quiet import stderr_silenced
from mnist_tflite.edge.reader import BLANK, HEIGHT, MARGIN, STEP, WIDTH, decode, normalize, placed
from mnist_tflite.training.compose import compose_line, shear
from mnist_tflite.training.convert import versions
from mnist_tflite.training.tfimport import import_tf, quiet_stdout
from mnist_tflite.training.train import set_determinism

__all__ = ["ReaderConfig", "column_offset", "make_strings", "train_reader"]

HOLD_OUT = 5000  # the last training digits: held-out strings, never trained on
MAX_LEN = 5
LENGTHS = (1, 2, 3, 4, 5)
LENGTH_P = (0.08, 0.22, 0.25, 0.3, 0.15)


@dataclass(frozen=True)
class ReaderConfig:
    """How the reader is trained (defaults: the shipped model)."""

    strings: int = 100_000
    held_out: int = 2_000
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0


def _looks(
    line: np.ndarray, rng: np.random.Generator, owner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A composed line (uint8, MNIST scale) -> a component of the ink map, as the segmenter
    cuts it; and ``owner`` (which digit drew each pixel), moved the same way, or None."""
    nearest = Image.Resampling.NEAREST
    slant = float(rng.uniform(-0.3, 0.3))
    ink = shear(line, slant)
    img = Image.fromarray(ink)
    factor = float(rng.uniform(0.9, 4.0))  # the ink map: photos at most 320 px on their longest side
    size = (max(2, round(img.width * factor)), max(2, round(img.height * factor)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    k = int(rng.choice([-1, 0, 0, 1])) * int(factor * 28 // 90)
    if k > 0:
        img = img.filter(ImageFilter.MaxFilter(2 * k + 1))
    elif k < 0:
        img = img.filter(ImageFilter.MinFilter(-2 * k + 1))
    angle = float(rng.uniform(-4, 4))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    if owner is not None:
        moved = Image.fromarray(shear(owner, slant, nearest)).resize(size, nearest)
        owner = np.asarray(moved.rotate(angle, resample=nearest, expand=True))
    blur = float(rng.choice([0.0, 0.0, 0.6, 1.2])) * max(1.0, factor / 2)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.clip((np.asarray(img, np.float32) / 255.0 - 0.15) * 1.6, 0.0, 1.0)
    a = a + rng.normal(0, float(rng.choice([0.0, 0.03, 0.06])), a.shape).astype(np.float32)
    low, high = float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.55, 0.9))  # the ink map's stretch
    a = np.clip((a - low) / (high - low), 0.0, 1.0)
    mask = a > 0.12  # the segmenter's connection level, grown a pixel for the soft edge
    grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    return a * grown, owner


def make_strings(
    x: np.ndarray, y: np.ndarray, count: int, rng: np.random.Generator, centres: list | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` strings of touching digits drawn from (x, y) -> (images (N, H, W), labels
    (N, MAX_LEN) padded with 0, lengths (N,)). ``centres``, when a list, receives each
    string's digit centres (their ink's mean column in the reader's input); the strings are
    the same either way."""
    images = np.zeros((count, HEIGHT, WIDTH), np.float32)
    labels = np.zeros((count, MAX_LEN), np.int32)
    lengths = np.zeros(count, np.int32)
    for i in range(count):
        n = int(rng.choice(LENGTHS, p=LENGTH_P))
        idx = rng.integers(0, len(x), n)
        gap = None if rng.random() < 0.85 else (-3, 1)  # touching, or close and overlapping
        owners: list[np.ndarray] | None = [] if centres is not None else None
        line = compose_line(list(x[idx]), rng, gap=gap, owners=owners)
        ink, owner = _looks(line, rng, owners[0] if owners else None)
        norm = normalize(ink)
        images[i] = norm.image
        labels[i, :n] = y[idx]
        lengths[i] = n
        if centres is not None and owner is not None:
            cols = np.arange(ink.shape[1], dtype=np.float64)[None, :]
            mass = [ink * (owner == k + 1) for k in range(n)]
            at = [float((m * cols).sum() / max(float(m.sum()), 1e-9)) for m in mass]
            centres.append([(c - norm.x0) * norm.scale + MARGIN for c in at])
    return images, labels, lengths


def column_offset(probs: np.ndarray, lengths: np.ndarray, centres: list) -> float:
    """How far (reader pixels) the digits' centres lie right of where the reader placed them:
    the median over the strings it read with the right count. CTC places each digit at
    the steps where its network was surest, not at its middle; :class:`Reader` adds this."""
    gaps = [
        c - at
        for p, n, cs in zip(probs, lengths, centres, strict=True)
        if len(read := decode(p)) == n
        for (_, first, last, _), c in zip(read, cs, strict=True)
        for at in [placed(first, last)]
    ]
    return round(float(np.median(gaps)), 2) if gaps else 0.0


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
    # context: the neighbours, two digits either side (a squeezed 1, an interlocked pair)
    z = layers.Conv2D(64, (1, 5), padding="same", activation="relu")(z)
    z = layers.Conv2D(64, (1, 5), padding="same", activation="relu")(z)
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


def _held_out_strings(config: ReaderConfig, x: np.ndarray, y: np.ndarray) -> tuple:
    """The held-out strings (the last ``HOLD_OUT`` training digits, their own seeded draw):
    (images, labels, lengths, digit centres)."""
    centres: list[list[float]] = []
    rng = np.random.default_rng(config.seed + 2)
    return (*make_strings(x[-HOLD_OUT:], y[-HOLD_OUT:], config.held_out, rng, centres), centres)


def _litert_probabilities(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
    """The converted reader's own answers (LiteRT, as the inference path runs it)."""
    from ai_edge_litert.interpreter import Interpreter

    with stderr_silenced():
        interp = Interpreter(model_content=flatbuffer, num_threads=1)
        interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    probs = []
    for image in images:
        interp.set_tensor(inp["index"], image.reshape(1, HEIGHT, WIDTH, 1).astype(np.float32))
        interp.invoke()
        probs.append(np.array(interp.get_tensor(out["index"])[0]))
    return np.stack(probs)


def held_out_figures(flatbuffer: bytes, config: ReaderConfig) -> dict[str, Any]:
    """The sidecar's ``held_out`` block and ``column_offset``, measured on the converted reader."""
    d = data.load("embedded", log=lambda m: None)
    images, labels, lengths, centres = _held_out_strings(config, d.x_train, d.y_train.astype(np.int32))
    probs = _litert_probabilities(flatbuffer, images)
    acc, cnt = _accuracy(probs, labels, lengths)
    return {
        "held_out": {
            "strings": config.held_out,
            "lengths": "1-5 digits, touching (15 % close and overlapping)",
            "number_right": round(acc, 4),
            "count_right": round(cnt, 4),
        },
        "column_offset": column_offset(probs, lengths, centres),
    }


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
    va = _held_out_strings(config, x, y)
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
        **held_out_figures(flatbuffer, config),
        "versions": versions(),
    }
    with sidecar.writing(out), atomic.atomic_path(out) as tmp:
        tmp.write_bytes(flatbuffer)
        sidecar.write(out, meta)
    return meta


def remeasure(path: Path) -> dict[str, Any]:
    """Measure a trained reader again on its held-out strings (its sidecar's seed) and write
    the figures into its sidecar (the model file is not touched); returns the sidecar."""
    flatbuffer, meta = vetted_model_bytes(path)  # a missing file, a sidecar that does not vouch for it
    if meta is None or "training" not in meta:
        raise fail(path, "no reader sidecar beside it (expected the .json its trainer wrote)")
    t = meta["training"]
    config = ReaderConfig(held_out=int(t["held_out"]), seed=int(t["seed"]))
    meta = {k: v for k, v in meta.items() if k != "format"}
    meta.update(held_out_figures(flatbuffer, config))
    with sidecar.writing(path):
        sidecar.write(path, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python -m mnist_tflite.training.reader --out reader.tflite --seed 0",
    )
    ap.add_argument("--out", type=Path, help="the .tflite to write (its .json beside it)")
    ap.add_argument(
        "--remeasure",
        type=Path,
        metavar="READER",
        help="instead of training: measure this trained reader on its held-out strings again "
        "and write the figures (and its column offset) into its sidecar",
    )
    ap.add_argument("--strings", type=int, default=ReaderConfig.strings, help="training strings")
    ap.add_argument("--epochs", type=int, default=ReaderConfig.epochs, help="passes over the strings")
    ap.add_argument("--seed", type=int, default=ReaderConfig.seed, help="the seed of strings and weights")
    args = ap.parse_args(argv)
    try:
        if args.remeasure:
            meta = remeasure(args.remeasure)
            out = args.remeasure
        elif args.out:
            config = ReaderConfig(strings=args.strings, epochs=args.epochs, seed=args.seed)
            meta = train_reader(config, args.out)
            out = args.out
        else:
            ap.error("say --out FILE (train) or --remeasure FILE")
    except MnistTfliteError as exc:
        print(exc, file=sys.stderr)
        return 2
    held = meta["held_out"]
    print(
        f"{out} ({meta['size_bytes']:,} B): held-out strings {held['number_right']:.2%} read right, "
        f"count {held['count_right']:.2%}; column offset {meta['column_offset']} px"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
