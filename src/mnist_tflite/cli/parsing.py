"""The ``mnist-tflite`` argument parser: every command, its options and its ``--help`` example.

Heavy imports (TensorFlow, LiteRT, matplotlib) happen inside the command functions so
that ``predict`` starts fast and never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mnist_tflite.cli import commands
from mnist_tflite.core.errors import PROG
from mnist_tflite.core.recipes import CALIBRATION_SIZE, INT8_RECIPES
from mnist_tflite.edge.evaluate import LATENCY_SAMPLES
from mnist_tflite.micro.aot import targets


def _parser(sub: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from mnist_tflite.training.train import PRECISIONS, TrainConfig

    d, tiny = TrainConfig.for_arch(), TrainConfig.for_arch("tiny")
    p.add_argument(
        "--data",
        default="auto",
        help="auto (Keras cache, else embedded: all 60k) | embedded | sample (5k) | IDX dir | .npz",
    )
    p.add_argument("--arch", default=d.arch, help=f"model architecture (default: {d.arch})")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: {d.epochs}; tiny: {tiny.epochs})",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"(default: {d.batch_size}; tiny: {tiny.batch_size})"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help=f"training arithmetic (default: {d.precision}; tiny: {tiny.precision}; "
        "auto = mixed_bfloat16 on a CPU with native bfloat16, else float32)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="MOMENTUM",
        help="hand out the exponential moving average of the weights with this momentum "
        f"(default: {d.ema_momentum:g}; tiny: {tiny.ema_momentum:g}; 0: the last step's weights)",
    )
    p.add_argument(
        "--seed-recipe",
        action="store_true",
        help="train exactly as the seed write-up: 5 epochs, no augmentation, no LR schedule",
    )


def _flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(name, action="store_true", help=help)


def _out(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, type=Path, help=help)


def _allow_modified(p: argparse.ArgumentParser) -> None:
    _flag(p, "--allow-modified", "use the model even if its SHA-256 differs from its sidecar's")


def _calibration_size(p: argparse.ArgumentParser) -> None:
    help = f"int8/int16x8 calibration images from the training split (default: {CALIBRATION_SIZE})"
    p.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE, help=help)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "run",
        "train, convert every recipe, evaluate every variant, write a report",
        "mnist-tflite run --out runs/demo --epochs 30",
    )
    _add_train_args(p)
    _out(
        p,
        "output folder: built beside it and swapped in whole at the end; a folder that already "
        "holds a complete run with the same options is left as it is",
    )
    p.add_argument("--recipes", default="default", help="default | all | comma-separated recipe names")
    _calibration_size(p)
    _flag(p, "--force", "replace a non-empty --out (the whole folder: no old file survives)")
    _flag(
        p,
        "--resume",
        "reuse the trained model.keras of the run in --out (same --data and training options) and "
        "redo the rest: e.g. add recipes without training again",
    )
    p.add_argument(
        "--micro-images", type=int, default=None, help="test images to check in TFLM (default: all)"
    )
    p.add_argument(
        "--latency-samples",
        type=int,
        default=LATENCY_SAMPLES,
        help=f"batch-1 latency samples per variant (default: {LATENCY_SAMPLES}; 0: skip)",
    )
    _flag(p, "--json", "print the report as JSON at the end")
    p.set_defaults(func=commands.cmd_run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "train",
        "train a Keras model and save it as model.keras",
        "mnist-tflite train --out model.keras --epochs 30",
    )
    _add_train_args(p)
    _out(p, "where to save the .keras model")
    _flag(p, "--force", "overwrite an existing file")
    p.set_defaults(func=commands.cmd_train)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "convert",
        "convert a .keras / .h5 / SavedModel to .tflite with one recipe",
        "mnist-tflite convert model.keras --recipe int8 --out model_int8.tflite",
    )
    p.add_argument("model", type=Path, help=".keras, .h5 or SavedModel directory")
    p.add_argument("--recipe", default="int8", help="recipe name (see `mnist-tflite recipes`)")
    _out(p, "the .tflite to write (+ .json sidecar)")
    p.add_argument("--data", default="auto", help="calibration data (default: auto)")
    _calibration_size(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.add_argument("--sparsity", type=float, help="target sparsity in (0, 1) for pruned-int8 / pruned80-int8")
    _flag(p, "--force", "overwrite an existing --out")
    _flag(p, "--json", "print the written metadata as JSON")
    p.set_defaults(func=commands.cmd_convert)


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "recipes", "list the conversion recipes", "mnist-tflite recipes --json")
    _flag(p, "--json", "print the result as JSON")
    p.set_defaults(func=commands.cmd_recipes)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--latency-samples",
        type=int,
        default=LATENCY_SAMPLES,
        help=f"batch-1 latency samples (default: {LATENCY_SAMPLES}; 0: skip)",
    )
    _allow_modified(p)
    _flag(p, "--json", "print the result as JSON")
    p.set_defaults(func=commands.cmd_evaluate)


def _add_pareto(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "pareto",
        "merge runs (one per architecture) into one accuracy-vs-flash chart and flash-budget table",
        "mnist-tflite run --arch tiny --recipes all --out runs/tiny\n"
        "  mnist-tflite pareto runs/seed runs/tiny --out runs/pareto",
    )
    p.add_argument("runs", nargs="+", type=Path, help="directories written by `mnist-tflite run`")
    _out(p, "where to write pareto.md/.json/.png")
    _flag(p, "--force", "overwrite an existing pareto.md")
    _flag(p, "--json", "print the merged table as JSON")
    p.set_defaults(func=commands.cmd_pareto)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "predict",
        "read handwritten numbers or digits from photos, scans or MNIST arrays with a .tflite model",
        "mnist-tflite predict runs/demo/int8.tflite photo.jpg scans/ --top-k 3\n"
        "  mnist-tflite predict model.tflite meter.jpg   # meter.jpg: 2026 (digits 2 99.1%, 0 98.7%, ...)\n"
        "  mnist-tflite predict model.tflite digits.npy --json\n\n"
        "A picture may hold several digits, on one or more lines: they are found, read left to\n"
        "right and answered as a number; a digit the model is less sure of than --min-confidence\n"
        "is shown as ? with its two best guesses. --single reads each picture as one digit.\n\n"
        "exit status: 0 all inputs read, 1 some inputs could not be read (each reported on\n"
        "stderr, the others still read), 2 usage or model error, 3 all inputs read but some\n"
        "digits uncertain (shown as ?)",
    )
    p.add_argument(
        "model",
        type=Path,
        help="the .tflite model (its .json sidecar is checked) or a run folder (its int8)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="images (PNG, JPEG, BMP, GIF, WebP, TIFF), .npy/IDX/Parquet, dirs",
    )
    p.add_argument("--top-k", type=int, default=1, help="show the k most probable classes (default: 1)")
    _flag(p, "--json", "print the results as one JSON document")
    p.add_argument("--show-input", type=Path, metavar="DIR", help="save the 28x28 images the model saw")
    _flag(p, "--single", "read each picture as one digit (no search for several digits); implied by --ray")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.6,
        help="below this probability a digit is shown as ? (default: 0.6; not with --single)",
    )
    p.add_argument(
        "--reader",
        metavar="FILE",
        default="default",
        help="the .tflite that reads touching digits (default: the one shipped with mnist-tflite; "
        "none: cut them and let the model choose the pieces)",
    )
    _allow_modified(p)
    p.add_argument(
        "--buffer-size",
        type=int,
        default=256,
        help="images read before each classification call (default: 256; bounds memory)",
    )
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


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "tune",
        "search architectures that fit a flash/RAM budget (Ray Tune; extra: scale)",
        "mnist-tflite tune --out runs/tune --flash 16KB --ram 8KB --trials 30\n"
        "  mnist-tflite tune --out runs/tune --resume          # after Ctrl-C or a crash\n\n"
        "writes DIR/front.md, front.json, front.png and best-flash<F>-ram<R>.tflite (+ .json)\n"
        "for each budget: the cross-validated best, trained on all the training data;\n"
        "exit status: 0 models found, 1 none met the budget, 2 usage error",
    )
    _out(p, "output directory (also holds Ray's search state)")
    p.add_argument("--flash", help="flash budget for the int8 .tflite, e.g. 16KB (1 KB = 1,024 bytes)")
    p.add_argument("--ram", help="RAM budget: the TFLM tensor arena, e.g. 8KB (default: no limit)")
    p.add_argument("--trials", type=int, help="trials to run (default: 30)")
    p.add_argument(
        "--max-epochs",
        type=int,
        help="epochs of a trial that is not stopped early (default: 30; small models gain ~0.3 points at 90)",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="cross-validation folds: a trial holds out one (1/K of the data), finalists are scored on all K "
        "(default: 3)",
    )
    p.add_argument(
        "--finalists",
        type=int,
        help="trials to cross-validate after the search, among those that validation cannot tell from "
        "a budget's best (default: 10); the front is chosen among them and trained on all the data",
    )
    p.add_argument("--address", help="HOST:PORT of a Ray cluster (default: a local Ray instance)")
    _flag(p, "--resume", "continue the search in --out after an interruption")
    p.add_argument("--seed", type=int, help="seed of the data split, training and search (default: 0)")
    p.add_argument(
        "--data",
        help="training data: auto (default: all 60k, Keras cache or embedded) | embedded | sample (5k) | "
        "IDX dir | .npz",
    )
    p.add_argument(
        "--search-images",
        type=int,
        help="trials and cross-validation train on a seeded subset of this many training images "
        "(default: 12000); the front is refit on all of them",
    )
    p.add_argument(
        "--refit-epochs",
        type=int,
        help="epochs of the front's refit on all the training images (default: --max-epochs, at most 15)",
    )
    _flag(p, "--json", "print front.json at the end")
    p.set_defaults(func=commands.cmd_tune)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "serve",
        "a draw-a-digit web page and JSON API running a .tflite model (or every variant of a run)",
        "mnist-tflite serve runs/demo/int8.tflite\n"
        "  mnist-tflite serve runs/demo/ --port 9000    # switch between the run's variants",
    )
    p.add_argument("model", type=Path, help="a .tflite model, or a run folder from `mnist-tflite run`")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only); requests must name it, "
        "localhost or 127.0.0.1 in their Host header (0.0.0.0: any)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    _allow_modified(p)
    p.set_defaults(func=commands.cmd_serve)


def _add_export_micro(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "export-micro",
        "write a model as C sources for TensorFlow Lite Micro, with its flash/arena (RAM) needs",
        "mnist-tflite export-micro runs/demo/int8.tflite --out firmware/ --name mnist_model --verify",
    )
    p.add_argument("model", type=Path, help="a fully int8 .tflite (recipe int8); others need --allow-float")
    _out(p, "directory to create for the C sources")
    p.add_argument("--name", default="mnist_model", help="C name of the model array (default: mnist_model)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the official test set in the TFLM interpreter and compare with LiteRT",
    )
    p.add_argument("--data", default="auto", help="test data for --verify (default: auto)")
    _flag(p, "--force", "replace an existing --out written by export-micro")
    p.add_argument(
        "--allow-float", action="store_true", help="export a model that is not fully int8 (e.g. float32)"
    )
    _allow_modified(p)
    _flag(p, "--json", "print the summary (micro.json) as JSON")
    p.set_defaults(func=commands.cmd_export_micro)


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "compile",
        "compile an int8 .tflite ahead of time into dependency-free C, built and run as Cortex-M firmware",
        "mnist-tflite compile runs/demo/int8.tflite --out fw/ --images 1000 --verify\n"
        "  mnist-tflite compile model.tflite --out fw_m0/ --target cortex-m0   # micro:bit, 16 KB RAM\n"
        "  mnist-tflite compile model.tflite --out fw_host/ --target host   # only gcc needed\n"
        "  mnist-tflite compile model.tflite --out web/ --target wasm       # browsers, Node 18+\n"
        "  mnist-tflite compile model.tflite --out fw_all/ --target all   # every Cortex-M, one table\n"
        "  mnist-tflite compile model.tflite --out fw_ram/ --ram-optimized  # rows streamed, < 3.5 KB RAM\n\n"
        "writes <name>.c/.h (weights, static buffer, <name>_invoke), the int8 kernels, a Makefile,\n"
        "firmware.elf (runs in qemu-system-arm: "
        + ", ".join(f"{t.name} -M {t.board}" for t in targets.TARGETS if t.is_arm)
        + ") and compile.json",
    )
    p.add_argument("model", type=Path, help=f"a fully int8 .tflite (recipes {', '.join(INT8_RECIPES)})")
    _out(p, "directory to create")
    p.add_argument(
        "--target",
        "--targets",
        default="cortex-m4",
        help=f"what to build for: {', '.join(targets.COMPILE_NAMES)}, or all (every Cortex-M, one folder "
        "each, and a table of them in compile.json) (default: cortex-m4; wasm: .wasm + .mjs for browsers, "
        "needs clang and lld)",
    )
    p.add_argument(
        "--images", type=int, default=100, help="test images embedded in the test program (default: 100)"
    )
    p.add_argument(
        "--name", default="mnist_model", help="C prefix of the generated API (default: mnist_model)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check a host build on every test image against the TFLM interpreter",
    )
    p.add_argument(
        "--data", default="embedded", help="test images: embedded | IDX directory | .npz (default: embedded)"
    )
    _flag(
        p,
        "--ram-optimized",
        "stream rows through line buffers instead of holding whole feature maps (convolutions, then a "
        "fully connected layer; other graphs are refused): same bits, less RAM",
    )
    _flag(p, "--force", "replace an existing --out written by compile")
    _flag(p, "--allow-modified", "use the model even if its SHA-256 differs from its sidecar's")
    _flag(p, "--json", "print compile.json")
    p.set_defaults(func=commands.cmd_compile)


def _add_export_web(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "export-web",
        "write a static draw-a-digit site that runs an int8 model in the visitor's browser (WebAssembly)",
        "mnist-tflite export-web runs/demo/int8.tflite --out site/\n"
        "  python -m http.server -d site 8000    # any static host serves it; works offline once loaded",
    )
    p.add_argument("model", type=Path, help=f"a fully int8 .tflite (recipes {', '.join(INT8_RECIPES)})")
    _out(p, "folder to create for the site")
    p.add_argument(
        "--images",
        type=int,
        default=100,
        help="test images checked in Node against TFLM first (default: 100)",
    )
    p.add_argument("--data", default="embedded", help="test images: embedded | IDX directory | .npz")
    _flag(p, "--force", "replace a site written earlier by export-web")
    _flag(p, "--json", "print site.json")
    p.set_defaults(func=commands.cmd_export_web)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the one-line form of every other error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog[len(PROG) :].strip()  # "mnist-tflite train" -> "train"
        self.exit(2, f"{PROG}: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="From MNIST to a verified TensorFlow Lite model on an edge device.",
        epilog="example:\n  mnist-tflite run --out runs/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (
        _add_run,
        _add_train,
        _add_convert,
        _add_recipes,
        _add_evaluate,
        _add_pareto,
        _add_predict,
        _add_serve,
        _add_export_micro,
        _add_compile,
        _add_export_web,
        _add_tune,
    ):
        add(sub)
    return parser
