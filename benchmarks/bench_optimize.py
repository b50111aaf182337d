"""Issue 7's figures: QAT and pruning vs post-training int8, their cost, and the tiny model.

From the committed seed model (tests/models/model.keras, the default `run`, 98.71 %) on
the embedded 5k training sample and the official 10,000 test images:

- accuracy of float32 (Keras), post-training int8, qat-int8, pruned-int8, pruned80-int8;
- fine-tuning time: ``fit`` alone and the whole tf_keras child (TF import, conversion);
- the tiny architecture trained with its defaults: int8 file bytes, accuracy, TFLM arena.

Usage:
    python benchmarks/bench_optimize.py [--skip-tiny]

Writes ``benchmarks/results/optimize.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _accuracy(flatbuffer: bytes, ds: Any, tmp: Path, name: str) -> float:
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.edge.infer import TfliteModel
    from mnist_tflite.training.convert import write_tflite

    path = tmp / f"{name}.tflite"
    write_tflite(path, flatbuffer, get_recipe("int8"))
    probs = TfliteModel(path).predict_proba(ds.x_test.astype(np.float32) / 255)
    return float((probs.argmax(1) == ds.y_test).mean())


def seed_rows(ds: Any, tmp: Path) -> list[dict[str, Any]]:
    import keras

    from mnist_tflite.core import data
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.training import optimize
    from mnist_tflite.training.convert import convert
    from mnist_tflite.training.train import TrainConfig

    model = keras.models.load_model(ROOT / "tests" / "models" / "model.keras", compile=False)
    probs = model.predict(data.normalize(ds.x_test), batch_size=1000, verbose=0)
    rows = [{"variant": "seed/float32 (Keras)", "accuracy": float((probs.argmax(1) == ds.y_test).mean())}]
    rep = data.normalize(data.representative_sample(ds.x_train, 500, 0))
    fb = convert(model, get_recipe("int8"), rep)
    rows.append(
        {
            "variant": "seed/int8 (post-training)",
            "accuracy": _accuracy(fb, ds, tmp, "int8"),
            "bytes": len(fb),
            "zip_bytes": optimize.zip_bytes(fb),
        }
    )
    for name in ("qat-int8", "pruned-int8", "pruned80-int8"):
        recipe = get_recipe(name)
        res = optimize.fine_tune(model, recipe, ds, TrainConfig(), rep, log=lambda m: None)
        rows.append(
            {
                "variant": f"seed/{name}",
                "accuracy": _accuracy(res.flatbuffer, ds, tmp, name),
                "bytes": len(res.flatbuffer),
                "zip_bytes": optimize.zip_bytes(res.flatbuffer),
                "fit_s": res.train_seconds,
                "child_s": res.child_seconds,
                "sparsity": res.sparsity,
                "child_phases_s": res.phase_seconds,
                "options": res.options,
            }
        )
    return rows


def tiny_rows(ds: Any, tmp: Path) -> list[dict[str, Any]]:
    from mnist_tflite.core import data
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.micro.tflm import export as micro
    from mnist_tflite.training.convert import convert, write_tflite
    from mnist_tflite.training.train import TrainConfig, train

    config = TrainConfig.for_arch("tiny")
    result = train(ds, config, log=lambda m: None)
    rep = data.normalize(data.representative_sample(ds.x_train, 500, 0))
    fb = convert(result.model, get_recipe("int8"), rep)
    path = tmp / "tiny-int8.tflite"
    write_tflite(path, fb, get_recipe("int8"))
    raw, info = micro.load(path)
    arena = micro.measure_arena(raw, info, path)
    return [
        {
            "variant": "tiny/int8 (post-training)",
            "accuracy": _accuracy(fb, ds, tmp, "tiny"),
            "bytes": len(fb),
            "arena_min_bytes": arena["min_bytes"],
            "arena_recommended_bytes": arena.get("recommended_bytes"),
            "params": int(result.model.count_params()),
            "train_s": result.seconds,
            "train_config": {"epochs": config.epochs, "learning_rate": config.learning_rate},
        }
    ]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tiny", action="store_true", help="only the seed model's QAT/pruning rows")
    args = ap.parse_args()
    from mnist_tflite.core import data

    ds = data.load("embedded")
    with tempfile.TemporaryDirectory() as t:
        rows = seed_rows(ds, Path(t)) + ([] if args.skip_tiny else tiny_rows(ds, Path(t)))
    cols = ("variant", "accuracy", "bytes", "zip_bytes", "sparsity", "fit_s", "child_s", "arena_min_bytes")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{100 * r['accuracy']:.2f} %" if c == "accuracy" else _fmt(r.get(c)) for c in cols]
        print("| " + " | ".join(cells) + " |")
    out = ROOT / "benchmarks" / "results" / "optimize.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "rows": rows,
        "machine": {"cores": os.cpu_count(), "machine": platform.machine()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
