"""``mnist-tflite`` command line: parses arguments and calls the pipeline stages.

Heavy imports (TensorFlow, LiteRT, matplotlib) happen inside the command functions so
that ``predict`` starts fast and never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import MnistTfliteError

PROG = "mnist-tflite"


def _parser(sub: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

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


def _train_config(args: argparse.Namespace):  # -> TrainConfig
    from .train import TrainConfig

    overrides = {"arch": args.arch, "seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    return TrainConfig.seed_recipe(**overrides) if args.seed_recipe else TrainConfig.for_arch(**overrides)


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
    p.set_defaults(func=cmd_run)

    p = _parser(
        sub,
        "train",
        "train a Keras model and save it as model.keras",
        "mnist-tflite train --out model.keras --epochs 30",
    )
    _add_train_args(p)
    p.add_argument("--out", required=True, type=Path, help="where to save the .keras model")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_train)

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
    p.set_defaults(func=cmd_convert)

    p = _parser(sub, "recipes", "list the conversion recipes", "mnist-tflite recipes --json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)

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
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_pareto)

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
    p.set_defaults(func=cmd_predict)

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
    p.set_defaults(func=cmd_serve)

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
    p.set_defaults(func=cmd_export_micro)

    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .convert import CALIBRATION_SIZE
    from .pipeline import RunConfig, run

    config = RunConfig(
        out=args.out,
        data=args.data,
        recipes=args.recipes,
        train=_train_config(args),
        calibration_size=args.calibration_size or CALIBRATION_SIZE,
        force=args.force,
        micro_images=args.micro_images,
    )
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = run(config, log=log)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import data
    from .train import save_model, train

    if args.out.exists() and not args.force:
        raise MnistTfliteError(f"{args.out}: already exists (pass --force to overwrite)")
    config = _train_config(args)
    config.validate()
    ds = data.load(args.data)
    result = train(ds, config)
    save_model(result.model, args.out)
    print(f"saved {args.out} ({result.seconds:.0f} s)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import CALIBRATION_SIZE, convert_file, get_recipe

    get_recipe(args.recipe)  # unknown recipe: fail before loading anything
    if args.out.exists() and not args.force:
        raise MnistTfliteError(f"{args.out}: already exists (pass --force to overwrite)")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    meta = convert_file(
        args.model,
        args.recipe,
        args.out,
        data_spec=args.data,
        calibration_size=args.calibration_size or CALIBRATION_SIZE,
        seed=args.seed,
        sparsity=args.sparsity,
        log=log,
    )
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(
            f"wrote {args.out} ({meta['size_bytes']:,} bytes, recipe {args.recipe}) and its metadata "
            f"{args.out.with_suffix('.json')}"
        )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .convert import RECIPES

    if args.json:
        print(json.dumps([asdict(r) for r in RECIPES], indent=2))
    else:
        for r in RECIPES:
            print(f"{r.name:<{max(len(x.name) for x in RECIPES)}}  {r.description}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from .pareto import write_pareto

    doc = write_pareto(args.runs, args.out, force=args.force)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print((args.out / "pareto.md").read_text(encoding="utf-8"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import data
    from . import report as report_mod
    from .evaluate import evaluate_model

    ds = data.load(args.data, log=lambda m: print(m, file=sys.stderr))
    reference = None
    rows = []
    if args.reference is not None:
        _, reference = evaluate_model(
            args.reference, ds.x_test, ds.y_test, latency_samples=0, allow_modified=args.allow_modified
        )
    for path in args.models:
        row, probs = evaluate_model(
            path,
            ds.x_test,
            ds.y_test,
            reference_probs=reference,
            latency_samples=args.latency_samples,
            allow_modified=args.allow_modified,
        )
        if reference is None:
            reference = probs
            row.agreement, row.max_prob_diff = 1.0, 0.0
        rows.append(row)
    table = report_mod.rows_as_dicts(rows)
    if args.json:
        print(json.dumps({"data": ds.summary(), "variants": table}, indent=2))
    else:
        print(report_mod.markdown_table(table).replace("agrees w/ Keras", "agrees w/ reference"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Classifier, Failure, save_inputs

    if args.top_k < 1 or args.batch_size < 1:
        raise MnistTfliteError(
            f"--top-k and --batch-size must be >= 1, received: {args.top_k} and {args.batch_size}"
        )
    clf = Classifier(args.model, allow_modified=args.allow_modified, batch_size=args.batch_size)
    results, failed = [], 0
    saver = save_inputs(args.show_input) if args.show_input else None
    seen = 0
    for r in clf.predict_files(args.inputs):
        seen += 1
        if isinstance(r, Failure):
            failed += 1
            print(f"{PROG}: error: {r.problem}", file=sys.stderr)
            if args.json:
                results.append(r.to_dict())
            continue
        if saver:
            saver(r)
        if args.json:
            results.append(r.to_dict(args.top_k))
        else:
            top = ", ".join(f"{n} {p:.1%}" for n, p in r.top(args.top_k)[1:])
            print(f"{r.source}: {r.label} ({r.confidence:.1%})" + (f"  next: {top}" if top else ""))
    if not seen:
        names = ", ".join(str(p) for p in args.inputs)
        raise MnistTfliteError(
            f"{names}: no input found; expected image files (PNG, JPEG, BMP, GIF, WebP, TIFF), "
            ".npy or IDX files, or directories holding them"
        )
    if args.json:
        doc = {"model": str(args.model), "classified": len(results) - failed, "failed": failed}
        print(json.dumps({**doc, "results": results}, indent=2))
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    if not 0 <= args.port <= 65535:
        raise MnistTfliteError(f"--port must be 0..65535, received: {args.port}")
    serve(args.model, host=args.host, port=args.port, allow_modified=args.allow_modified, log=_log_flush)
    return 0


def cmd_export_micro(args: argparse.Namespace) -> int:
    from .micro import ExportOptions, export, summary_text

    opts = ExportOptions(
        model=args.model,
        out=args.out,
        name=args.name,
        verify=args.verify,
        force=args.force,
        allow_float=args.allow_float,
        allow_modified=args.allow_modified,
        data=args.data,
    )
    summary = export(opts, log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary_text(summary, args.out))
        print(f"wrote {', '.join(summary['files'])} into {args.out}/")
    v = summary.get("verification")
    if v and v["output_dtype"] == "int8" and v["vs_litert_builtin"]["rows_differing"]:
        print(f"{PROG}: TFLM and LiteRT's builtin kernels disagree on int8 outputs", file=sys.stderr)
        return 1
    return 0


def _log_flush(message: str) -> None:
    print(message, flush=True)


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
