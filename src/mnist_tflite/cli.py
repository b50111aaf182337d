"""``mnist-tflite`` command line: parses arguments and calls the pipeline stages.

Heavy imports (TensorFlow, LiteRT, matplotlib) happen inside the command functions so
that ``predict`` starts fast and never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_tflite import commands
from mnist_tflite.errors import PROG, MnistTfliteError


def _parser(sub: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from mnist_tflite.training.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--data", default="auto", help="auto | embedded | IDX directory | .npz (default: auto)")
    p.add_argument("--arch", default=d.arch, help=f"model architecture (default: {d.arch})")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {d.epochs}; tiny: 50)")
    p.add_argument("--batch-size", type=int, default=None, help=f"(default: {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    p.add_argument(
        "--seed-recipe",
        action="store_true",
        help="train exactly as the seed write-up: 5 epochs, no augmentation, no LR schedule",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="From MNIST to a verified TensorFlow Lite model on an edge device.",
        epilog="example:\n  mnist-tflite run --out runs/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _parser(
        sub,
        "run",
        "train, convert every recipe, evaluate every variant, write a report",
        "mnist-tflite run --out runs/demo --epochs 30",
    )
    _add_train_args(p)
    p.add_argument("--out", required=True, type=Path, help="output directory (must be empty)")
    p.add_argument("--recipes", default="default", help="default | all | comma-separated recipe names")
    p.add_argument(
        "--calibration-size", type=int, default=None, help="int8 calibration images (default: 500)"
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument(
        "--micro-images", type=int, default=None, help="test images to check in TFLM (default: all)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    p.set_defaults(func=commands.cmd_run)

    p = _parser(
        sub,
        "train",
        "train a Keras model and save it as model.keras",
        "mnist-tflite train --out model.keras --epochs 30",
    )
    _add_train_args(p)
    p.add_argument("--out", required=True, type=Path, help="where to save the .keras model")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=commands.cmd_train)

    p = _parser(
        sub,
        "convert",
        "convert a .keras / .h5 / SavedModel to .tflite with one recipe",
        "mnist-tflite convert model.keras --recipe int8 --out model_int8.tflite",
    )
    p.add_argument("model", type=Path, help=".keras, .h5 or SavedModel directory")
    p.add_argument("--recipe", default="int8", help="recipe name (see `mnist-tflite recipes`)")
    p.add_argument("--out", required=True, type=Path, help="the .tflite to write (+ .json sidecar)")
    p.add_argument("--data", default="auto", help="calibration data (default: auto)")
    p.add_argument("--calibration-size", type=int, default=None, help="calibration images (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.add_argument("--sparsity", type=float, help="target sparsity in (0, 1) for pruned-int8 / pruned80-int8")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--json", action="store_true", help="print the written metadata as JSON")
    p.set_defaults(func=commands.cmd_convert)

    p = _parser(sub, "recipes", "list the conversion recipes", "mnist-tflite recipes --json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_recipes)

    p = _parser(
        sub,
        "evaluate",
        "measure .tflite models on the test set: accuracy, size, speed",
        "mnist-tflite evaluate runs/demo/float32.tflite runs/demo/int8.tflite --json",
    )
    p.add_argument("models", nargs="+", type=Path, help=".tflite files (any MNIST-shaped model)")
    p.add_argument("--data", default="auto", help="test data (default: auto)")
    p.add_argument(
        "--reference",
        type=Path,
        help="a .tflite whose answers to compare with (default: the first model)",
    )
    p.add_argument("--latency-samples", type=int, default=200, help="batch-1 latency samples (0: skip)")
    p.add_argument("--allow-modified", action="store_true", help="ignore a SHA-256 mismatch with the sidecar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_evaluate)

    p = _parser(
        sub,
        "pareto",
        "merge runs (one per architecture) into one accuracy-vs-flash chart and flash-budget table",
        "mnist-tflite run --arch tiny --recipes all --out runs/tiny\n"
        "  mnist-tflite pareto runs/seed runs/tiny --out runs/pareto",
    )
    p.add_argument("runs", nargs="+", type=Path, help="directories written by `mnist-tflite run`")
    p.add_argument("--out", required=True, type=Path, help="where to write pareto.md/.json/.png")
    p.add_argument("--force", action="store_true", help="overwrite an existing pareto.md")
    p.add_argument("--json", action="store_true", help="print the merged table as JSON")
    p.set_defaults(func=commands.cmd_pareto)

    p = _parser(
        sub,
        "predict",
        "classify photos, scans or MNIST arrays of digits with a .tflite model (no TensorFlow)",
        "mnist-tflite predict runs/demo/int8.tflite photo.jpg scans/ --top-k 3\n"
        "  mnist-tflite predict model.tflite digits.npy --json\n\n"
        "exit status: 0 all inputs classified, 1 some inputs could not be read (each reported\n"
        "on stderr, the others still classified), 2 usage or model error",
    )
    p.add_argument("model", type=Path, help="the .tflite model (its .json sidecar is checked)")
    p.add_argument(
        "inputs", nargs="+", type=Path, help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF), .npy/IDX, dirs"
    )
    p.add_argument("--top-k", type=int, default=1, help="show the k most probable classes (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    p.add_argument("--show-input", type=Path, metavar="DIR", help="save the 28x28 images the model saw")
    p.add_argument("--allow-modified", action="store_true", help="ignore a SHA-256 mismatch with the sidecar")
    p.add_argument("--batch-size", type=int, default=256, help="images per interpreter call (default: 256)")
    p.add_argument(
        "--ray",
        action="store_true",
        help="run as a Ray Data pipeline: one model actor per CPU (extra: scale)",
    )
    p.add_argument("--address", help="with --ray: HOST:PORT of a Ray cluster (default: a local Ray instance)")
    p.add_argument(
        "--output",
        type=Path,
        help="with --ray: write the results to a .parquet or .csv file (default: print)",
    )
    p.set_defaults(func=commands.cmd_predict)

    p = _parser(
        sub,
        "tune",
        "search architectures that fit a flash/RAM budget (Ray Tune; extra: scale)",
        "mnist-tflite tune --out runs/tune --flash 16KB --ram 8KB --trials 30\n"
        "  mnist-tflite tune --out runs/tune --resume          # after Ctrl-C or a crash\n\n"
        "writes DIR/front.md, front.json, front.png and best-flash<F>-ram<R>.tflite (+ .json)\n"
        "for each budget; exit status: 0 models found, 1 none met the budget, 2 usage error",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (also holds Ray's search state)")
    p.add_argument("--flash", help="flash budget for the int8 .tflite, e.g. 16KB (1 KB = 1,024 bytes)")
    p.add_argument("--ram", help="RAM budget: the TFLM tensor arena, e.g. 8KB (default: no limit)")
    p.add_argument("--trials", type=int, help="trials to run (default: 30)")
    p.add_argument(
        "--max-epochs",
        type=int,
        help="epochs of a trial that is not stopped early (default: 30; small models gain ~0.3 points at 90)",
    )
    p.add_argument("--address", help="HOST:PORT of a Ray cluster (default: a local Ray instance)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out after an interruption")
    p.add_argument("--seed", type=int, help="seed of the data split, training and search (default: 0)")
    p.add_argument("--data", help="training data: embedded (default: the 5k sample) | IDX dir | .npz")
    p.add_argument("--json", action="store_true", help="print front.json at the end")
    p.set_defaults(func=commands.cmd_tune)

    p = _parser(
        sub,
        "serve",
        "a draw-a-digit web page and JSON API running a .tflite model (or every variant of a run)",
        "mnist-tflite serve runs/demo/int8.tflite\n"
        "  mnist-tflite serve runs/demo/ --port 9000    # switch between the run's variants",
    )
    p.add_argument("model", type=Path, help="a .tflite model, or a run folder from `mnist-tflite run`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--allow-modified", action="store_true", help="ignore a SHA-256 mismatch with the sidecar")
    p.set_defaults(func=commands.cmd_serve)

    p = _parser(
        sub,
        "export-micro",
        "write a model as C sources for TensorFlow Lite Micro, with its flash/arena (RAM) needs",
        "mnist-tflite export-micro runs/demo/int8.tflite --out firmware/ --name mnist_model --verify",
    )
    p.add_argument("model", type=Path, help="a fully int8 .tflite (recipe int8); others need --allow-float")
    p.add_argument("--out", required=True, type=Path, help="directory to create for the C sources")
    p.add_argument("--name", default="mnist_model", help="C name of the model array (default: mnist_model)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the official test set in the TFLM interpreter and compare with LiteRT",
    )
    p.add_argument("--data", default="auto", help="test data for --verify (default: auto)")
    p.add_argument("--force", action="store_true", help="replace an existing --out written by export-micro")
    p.add_argument(
        "--allow-float", action="store_true", help="export a model that is not fully int8 (e.g. float32)"
    )
    p.add_argument("--allow-modified", action="store_true", help="ignore a SHA-256 mismatch with the sidecar")
    p.add_argument("--json", action="store_true", help="print the summary (micro.json) as JSON")
    p.set_defaults(func=commands.cmd_export_micro)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, with a one-line message)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except MnistTfliteError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
