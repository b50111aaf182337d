"""Sweep the training defaults on the full 60,000-image training set: prints a table, writes JSON.

Each row trains one configuration of an architecture (default: the seed CNN, 34,826
parameters) with ``training.train.train``, then scores the Keras model (float32) and its int8
conversion on the 10,000 official test images. The figures that chose the defaults are in
``benchmarks/results/training_sweep.json`` (``--arch tiny``: ``training_sweep_tiny.json``).

Usage:
    python benchmarks/sweep_training.py                  # every row of the seed CNN's grid
    python benchmarks/sweep_training.py --only e6-b128-cos-aug,seed-recipe
    python benchmarks/sweep_training.py --arch tiny --data ../shared/data/mnist

Rows are written one by one (atomically), so an interrupted sweep keeps what it measured;
``--resume`` skips rows already in the JSON file. Wall times depend on what else runs: the
file records the load average before and after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"


def _row(epochs: int, batch: int, lr: float, augment: bool = True, **more: Any) -> dict[str, Any]:
    """TrainConfig overrides of one row: float32 unless ``precision`` says otherwise, so a row
    means the same on every CPU (the seed default, ``auto``, depends on the CPU)."""
    return dict(
        epochs=epochs, batch_size=batch, learning_rate=lr, augment=augment, **{"precision": "float32", **more}
    )


# name -> TrainConfig overrides. "lr" cosine-decays unless cosine_decay is False.
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {
        "seed-recipe": _row(5, 32, 1e-3, augment=False, cosine_decay=False, val_fraction=0.0),
        "e4-b128-cos": _row(4, 128, 2e-3, augment=False),
        "e6-b128-cos": _row(6, 128, 2e-3, augment=False),
        "e6-b128-const": _row(6, 128, 1e-3, augment=False, cosine_decay=False),
        "e6-b128-cos-val0": _row(6, 128, 2e-3, augment=False, val_fraction=0.0),
        "e6-b128-cos-aug": _row(6, 128, 2e-3),
        "e6-b128-cos-aug-val0": _row(6, 128, 2e-3, val_fraction=0.0),
        "e6-b64-cos-aug": _row(6, 64, 2e-3),
        "e6-b256-cos-aug": _row(6, 256, 4e-3),
        "e8-b128-cos-lr3": _row(8, 128, 3e-3, augment=False),
        "e8-b128-cos-aug": _row(8, 128, 2e-3),
        "e8-b256-cos-aug": _row(8, 256, 3e-3),
        "e12-b128-cos-aug": _row(12, 128, 3e-3),
        # bfloat16 arithmetic (float32 weights): about 10 CPU s per epoch at batch 256 instead of 16
        "e6-b128-cos-aug-bf16": _row(6, 128, 2e-3, precision="mixed_bfloat16"),
        "e9-b256-cos-aug-bf16": _row(9, 256, 4e-3, precision="mixed_bfloat16"),
        "e12-b256-cos-aug-bf16": _row(12, 256, 4e-3, precision="mixed_bfloat16"),
        # the weights handed out are the moving average of the last ~1,000 steps' weights
        "e9-b256-cos-aug-bf16-ema": _row(9, 256, 4e-3, precision="mixed_bfloat16", ema_momentum=0.999),
        "e12-b256-cos-aug-bf16-ema": _row(12, 256, 4e-3, precision="mixed_bfloat16", ema_momentum=0.999),
        "e12-b256-cos-aug-bf16-ema9995": _row(12, 256, 4e-3, precision="mixed_bfloat16", ema_momentum=0.9995),
        "e12-b256-cos5-aug-bf16-ema": _row(12, 256, 5e-3, precision="mixed_bfloat16", ema_momentum=0.999),
        "e12-b256-cos-aug-bf16-ema-val0": _row(
            12, 256, 4e-3, precision="mixed_bfloat16", ema_momentum=0.999, val_fraction=0.0
        ),
        "e14-b512-cos6-aug-bf16-ema": _row(14, 512, 6e-3, precision="mixed_bfloat16", ema_momentum=0.998),
    },
    "tiny": {
        "e10-b128-cos-lr3": _row(10, 128, 3e-3, augment=False),
        "e15-b128-cos-lr5": _row(15, 128, 5e-3, augment=False),
    },
}


def _int8_accuracy(
    model: Any, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int
) -> float:
    """Accuracy of the int8 recipe, converted and run exactly as ``run`` does."""
    from mnist_tflite.core import data
    from mnist_tflite.core.recipes import CALIBRATION_SIZE, get_recipe
    from mnist_tflite.edge.infer import TfliteModel
    from mnist_tflite.training.convert import convert

    rep = data.normalize(data.representative_sample(x_train, CALIBRATION_SIZE, seed))
    flat = convert(model, get_recipe("int8"), rep)
    tmp = RESULTS / ".sweep_int8.tflite"
    tmp.write_bytes(flat)
    try:
        probs = TfliteModel(tmp).predict_proba(data.normalize(x_test))
    finally:
        tmp.unlink(missing_ok=True)
    return float((probs.argmax(axis=1) == y_test).mean())


def measure(name: str, overrides: dict[str, Any], arch: str, ds: Any, seed: int) -> dict[str, Any]:
    """Train one row and score it; returns the row."""
    from mnist_tflite.core import data
    from mnist_tflite.training.train import TrainConfig, train

    config = TrainConfig.for_arch(arch, **{**overrides, "seed": seed})
    load_before = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    result = train(ds, config, log=lambda line: print(f"  {name}{line}", flush=True))
    train_s, train_cpu = time.perf_counter() - t, time.process_time() - cpu
    probs = result.model.predict(data.normalize(ds.x_test), batch_size=1024, verbose=0)
    f32 = float((probs.argmax(axis=1) == ds.y_test).mean())
    i8 = _int8_accuracy(result.model, ds.x_train, ds.x_test, ds.y_test, seed)
    hist = result.history
    return {
        "name": name,
        "arch": arch,
        "config": {k: v for k, v in vars(config).items()},
        "train_images": len(ds.x_train),
        "train_seconds": round(train_s, 1),
        "seconds_per_epoch": round(result.seconds / config.epochs, 1),
        # CPU seconds of this process: with the machine shared, CPU / cores estimates wall alone
        "train_cpu_seconds": round(train_cpu, 1),
        "val_accuracy": hist["val_accuracy"][-1] if "val_accuracy" in hist else None,
        "float32_accuracy": f32,
        "int8_accuracy": i8,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def seed_script(ds: Any) -> dict[str, Any]:
    """The seed write-up's training code as written (data from ``ds``: Keras's download is offline)."""
    import tensorflow as tf

    model = tf.keras.models.Sequential(
        [
            tf.keras.layers.Input(shape=(28, 28, 1)),  # the write-up passes input_shape to Conv2D
            tf.keras.layers.Conv2D(32, (3, 3), activation="relu"),
            tf.keras.layers.MaxPooling2D((2, 2)),
            tf.keras.layers.Conv2D(64, (3, 3), activation="relu"),
            tf.keras.layers.MaxPooling2D((2, 2)),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    x_train = ds.x_train.astype("float32") / 255.0
    x_test = ds.x_test.astype("float32") / 255.0
    x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t = time.perf_counter()
    hist = model.fit(x_train, ds.y_train, epochs=5, validation_data=(x_test, ds.y_test), verbose=2)
    return {
        "name": "seed-script",
        "what": "the seed write-up's code: Sequential CNN, adam, fit(epochs=5) (batch 32), unseeded",
        "train_images": len(ds.x_train),
        "train_seconds": round(time.perf_counter() - t, 1),
        "float32_accuracy": float(hist.history["val_accuracy"][-1]),  # its validation_data is the test set
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| row | epochs | batch | lr | schedule | aug | val | s/epoch | train s | CPU s | val acc "
        "| float32 | int8 |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        c = r["config"]
        val = f"{r['val_accuracy'] * 100:.2f} %" if r["val_accuracy"] is not None else ""
        lines.append(
            f"| {r['name']} | {c['epochs']} | {c['batch_size']} | {c['learning_rate']:g} | "
            f"{'cosine' if c['cosine_decay'] else 'constant'} | {'yes' if c['augment'] else 'no'} | "
            f"{c['val_fraction']:g} | {r['seconds_per_epoch']} | {r['train_seconds']} | "
            f"{r['train_cpu_seconds']} | {val} | "
            f"{r['float32_accuracy'] * 100:.2f} % | {r['int8_accuracy'] * 100:.2f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="seed", choices=sorted(GRIDS))
    p.add_argument("--data", default="embedded", help="training and test data (default: embedded: all of it)")
    p.add_argument("--only", help="comma-separated row names (default: the whole grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="skip rows already in the JSON file")
    p.add_argument("--seed-script", action="store_true", help="run the seed write-up's own code once")
    args = p.parse_args(argv)

    from mnist_tflite.core import atomic, data

    grid = GRIDS[args.arch]
    names = args.only.split(",") if args.only else list(grid)
    unknown = [n for n in names if n not in grid]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(grid)}")
    out = RESULTS / ("training_sweep.json" if args.arch == "seed" else f"training_sweep_{args.arch}.json")
    # the rows measured before stay (a row run again replaces its old self); --resume skips them
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {r["name"] for r in doc["rows"]} if args.resume else set()
    ds = data.load(args.data, log=lambda line: None)
    doc.update(
        data=ds.summary(),
        machine=f"{os.cpu_count()} CPUs; shared with other jobs (see load_average per row)",
        seed=args.seed,
    )
    print(ds.source, flush=True)
    if args.seed_script:
        doc["seed_script"] = seed_script(ds)
        atomic.write_text(out, json.dumps(doc, indent=1) + "\n")
        print(f"seed script: {doc['seed_script']['float32_accuracy'] * 100:.2f} %")
        return 0
    for name in names:
        if name in done:
            continue
        row = measure(name, grid[name], args.arch, ds, args.seed)
        doc["rows"] = [r for r in doc["rows"] if r["name"] != name] + [row]
        atomic.write_text(out, json.dumps(doc, indent=1) + "\n")
        print(_table([row]).splitlines()[-1], flush=True)
    print(_table(doc["rows"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
