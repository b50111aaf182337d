"""The ``mnist-tflite`` commands: each turns parsed arguments into calls to a pipeline stage.

Heavy imports (TensorFlow, LiteRT, matplotlib) happen inside the functions so that
``predict`` starts fast and never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mnist_tflite.cli import ending
from mnist_tflite.core.errors import PROG, MnistTfliteError, fail, printable
from mnist_tflite.core.values import (
    check_data_spec,
    check_int_range,
    check_out_dir,
    check_out_file,
    check_seed,
)

MAX_BUFFER = 65_536  # predict --buffer-size: images held in memory at once
PARETO_BYTES = 256 << 10  # pareto.png (~60 KB), .md and .json, with room to spare


def _train_config(args: argparse.Namespace):  # -> TrainConfig
    from mnist_tflite.training.train import TrainConfig

    overrides = {"arch": args.arch, "seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.precision is not None:
        overrides["precision"] = args.precision
    if args.ema is not None:
        overrides["ema_momentum"] = args.ema
    return TrainConfig.seed_recipe(**overrides) if args.seed_recipe else TrainConfig.for_arch(**overrides)


def cmd_run(args: argparse.Namespace) -> int:
    ending.require("tensorflow", "tflite_micro")
    from mnist_tflite.training.pipeline import RunConfig, run
    from mnist_tflite.training.train import keras_file_bytes

    config = RunConfig(
        out=args.out,
        data=args.data,
        recipes=args.recipes,
        train=_train_config(args),
        calibration_size=args.calibration_size,
        force=args.force,
        resume=args.resume,
        micro_images=args.micro_images,
        latency_samples=args.latency_samples,
    )
    config.validate()
    # the run writes the Keras model, a .tflite per recipe and plots: a full disk fails now
    check_out_dir(args.out, probe_bytes=lambda: 2 * keras_file_bytes(config.train.arch))
    log = _progress(args)
    report = run(config, log=log)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    checked = report["micro"].get("verification", {})
    return _tflm_verdict({args.out / f"{name}.tflite": v for name, v in checked.items()})


def cmd_train(args: argparse.Namespace) -> int:
    ending.require("tensorflow")
    from mnist_tflite.core import data
    from mnist_tflite.training.download import keras_mnist
    from mnist_tflite.training.train import keras_file_bytes, save_model, train

    config = _train_config(args)
    config.validate()
    check_data_spec(args.data)
    # a full disk or read-only folder fails now, not after the training
    check_out_file(args.out, force=args.force, probe_bytes=lambda: keras_file_bytes(config.arch))
    ds = data.load(args.data, downloader=keras_mnist, need_train=True)
    result = train(ds, config)
    save_model(result.model, args.out)
    print(f"saved {args.out} ({result.seconds:.0f} s)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    ending.require("tensorflow")
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.training.download import keras_mnist
    from mnist_tflite.training.variants import convert_file

    get_recipe(args.recipe)  # unknown recipe: fail before loading anything
    check_seed(args.seed)
    if args.calibration_size < 1:
        raise MnistTfliteError(f"--calibration-size must be >= 1, received: {args.calibration_size}")
    check_data_spec(args.data)
    check_out_file(args.out, force=args.force, suffixes=(".tflite",))
    sidecar = args.out.with_suffix(".json")
    if sidecar.exists() and not sidecar.is_file():
        raise fail(sidecar, "exists and is not a regular file; the metadata sidecar is written here")
    log = _progress(args)
    meta = convert_file(
        args.model,
        args.recipe,
        args.out,
        data_spec=args.data,
        calibration_size=args.calibration_size,
        seed=args.seed,
        sparsity=args.sparsity,
        downloader=keras_mnist,
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

    from mnist_tflite.core.recipes import RECIPES

    if args.json:
        print(json.dumps([asdict(r) for r in RECIPES], indent=2))
    else:
        for r in RECIPES:
            print(f"{r.name:<{max(len(x.name) for x in RECIPES)}}  {r.description}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from mnist_tflite.report.pareto import write_pareto

    check_out_dir(args.out, probe_bytes=PARETO_BYTES)  # read-only or full: before the folder is made
    doc = write_pareto(args.runs, args.out, force=args.force)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print((args.out / "pareto.md").read_text(encoding="utf-8"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mnist_tflite.core import data
    from mnist_tflite.edge.evaluate import compare_models
    from mnist_tflite.report import tables as report_mod

    ds = data.load(args.data, log=lambda m: print(m, file=sys.stderr), test_only=True)
    check_int_range(args.latency_samples, "--latency-samples", 0, len(ds.x_test))
    options = _pick(args, "reference", "latency_samples", "allow_modified")
    rows = compare_models(args.models, ds.x_test, ds.y_test, class_names=ds.class_names, **options)
    table = report_mod.rows_as_dicts(rows)
    if args.json:
        print(json.dumps({"data": ds.summary(), "variants": table}, indent=2))
    else:
        print(report_mod.markdown_table(table).replace("agrees w/ Keras", "agrees w/ reference"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mnist_tflite.edge.predict import Classifier, Failure, model_file, save_inputs

    if args.top_k < 1:  # before the model loads; the upper bound below needs its classes
        raise MnistTfliteError(f"--top-k must be >= 1, received: {args.top_k}")
    check_int_range(args.buffer_size, "--buffer-size", 1, MAX_BUFFER)
    if args.show_input:  # a full or read-only disk fails before any image is read
        check_out_dir(args.show_input, probe_bytes=64 << 10)
    if args.model.is_dir():  # a run folder: its int8 model, as `serve` does
        args.model = model_file(args.model)
        print(f"{PROG}: using {printable(args.model)}", file=sys.stderr)
    if args.ray:  # bulk classification of digits: each picture is one digit, as with --single
        from mnist_tflite.scale.ray_predict import cmd_predict_ray

        args.single = True
        return cmd_predict_ray(args)
    if args.address or args.output:
        raise MnistTfliteError("--address and --output go with --ray")
    reader = None if args.single or args.reader == "none" else args.reader
    clf = Classifier(
        args.model, allow_modified=args.allow_modified, buffer_size=args.buffer_size, reader=reader
    )
    check_int_range(args.top_k, "--top-k", 1, len(clf.class_names))
    if not 0.0 <= args.min_confidence <= 1.0:
        raise MnistTfliteError(f"--min-confidence must be in 0..1, received: {args.min_confidence}")
    results, failed, uncertain = [], 0, 0
    saver = save_inputs(args.show_input) if args.show_input else None
    seen = 0
    if args.single:
        answers = clf.predict_files(args.inputs)
    else:
        answers = clf.read_files(args.inputs, min_confidence=args.min_confidence)
    for r in answers:
        seen += 1
        if isinstance(r, Failure):
            failed += 1
            print(f"{PROG}: error: {printable(r.problem)}", file=sys.stderr)
            if args.json:
                results.append(r.to_dict())
            continue
        if saver:
            saver(r)
        uncertain += bool(getattr(r, "uncertain", False))
        if args.json:
            results.append(r.to_dict(args.top_k))
        else:
            print(r.line(args.top_k))
    if not seen:
        names = ", ".join(str(p) for p in args.inputs)
        raise MnistTfliteError(
            f"{names}: no input found; expected image files (PNG, JPEG, BMP, GIF, WebP, TIFF), "
            ".npy, IDX or Parquet files, or directories holding them"
        )
    if args.json:
        doc = {"model": str(args.model), "classified": len(results) - failed, "failed": failed}
        doc = {**doc, "uncertain": uncertain} if not args.single else doc
        print(json.dumps({**doc, "results": results}, indent=2))
    return 1 if failed else 3 if uncertain else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from mnist_tflite.scale.front import summary_text
    from mnist_tflite.scale.options import TuneOptions, parse_size
    from mnist_tflite.scale.tune import search

    options = TuneOptions(
        out=args.out,
        flash=parse_size(args.flash, "--flash") if args.flash else None,
        ram=parse_size(args.ram, "--ram") if args.ram else None,
        trials=args.trials,
        max_epochs=args.max_epochs,
        address=args.address,
        resume=args.resume,
        seed=args.seed,
        data=args.data,
        folds=args.folds,
        finalists=args.finalists,
        search_images=args.search_images,
        refit_epochs=args.refit_epochs,
    )
    doc = search(options, log=_progress(args))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(summary_text(doc))
        print(f"wrote front.md, front.json, front.png and {len(doc['best'])} best-*.tflite into {args.out}/")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    ending.require("fastapi", "uvicorn", "pydantic")
    from mnist_tflite.serve.app import serve

    if not 0 <= args.port <= 65535:
        raise MnistTfliteError(f"--port must be 0..65535, received: {args.port}")
    serve(args.model, host=args.host, port=args.port, allow_modified=args.allow_modified, log=_log_flush)
    return 0


def cmd_export_micro(args: argparse.Namespace) -> int:
    ending.require("tflite_micro")  # the arena is measured in TFLM, --verify or not
    from mnist_tflite.micro.tflm.export import ExportOptions, export, summary_text

    fields = ("model", "out", "name", "verify", "force", "allow_float", "allow_modified", "data")
    summary = export(ExportOptions(**_pick(args, *fields)), log=_progress(args))
    files = ", ".join(summary["files"])
    out = printable(args.out)  # a newline or escape in the name must not forge lines
    _show(args, summary, f"{summary_text(summary, out)}\nwrote {files} into {out}/")
    return _tflm_verdict({args.model: summary.get("verification")})


def cmd_compile(args: argparse.Namespace) -> int:
    from mnist_tflite.micro.aot.build import CompileOptions, compile_to_dir
    from mnist_tflite.micro.aot.summary import differing_rows, summary_text

    if args.verify:
        ending.require("tflite_micro")  # a check that cannot run fails now, with the pip command
    fields = ("model", "out", "target", "images", "name", "verify", "force", "data", "allow_modified",
              "ram_optimized")  # fmt: skip
    summary = compile_to_dir(CompileOptions(**_pick(args, *fields)), log=_progress(args))
    folders = [f for f in summary["files"] if f.endswith("/")]  # --target all: one per target
    files = f"{len(folders)} target folders and compile.json" if folders else f"{len(summary['files'])} files"
    out = printable(args.out)  # a newline or escape in the name must not forge lines
    _show(args, summary, f"{summary_text(summary, out)}\nwrote {files} into {out}/")
    if differing_rows(summary):
        print(f"{PROG}: the compiled model and TFLM disagree on some output rows", file=sys.stderr)
        return 1
    return 0


def _tflm_verdict(checked: dict[Any, dict[str, Any] | None]) -> int:
    """The exit code of ``run`` and ``export-micro``, after every file is written: 1 if TFLM disagrees."""
    from mnist_tflite.micro.tflm.check import first_disagreement

    problem = first_disagreement(checked)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 1


def cmd_export_web(args: argparse.Namespace) -> int:
    from mnist_tflite.serve.web import SiteOptions, export_site, summary_text

    if not 1 <= args.images <= 10_000:
        raise MnistTfliteError(f"--images must be 1..10000, received: {args.images}")
    summary = export_site(
        SiteOptions(**_pick(args, "model", "out", "force", "images", "data")), log=_progress(args)
    )
    _show(args, summary, summary_text(summary, args.out))
    return 0


def _show(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    """The command's result on stdout: the JSON document with --json, else the text."""
    print(json.dumps(doc, indent=2) if args.json else _escaped(text))


def _escaped(text: object) -> str:
    """Text for the terminal: control characters (a file name's, a class name's) escaped line by line."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def _log_flush(message: str, file: Any = None) -> None:
    print(_escaped(message), file=file or sys.stdout, flush=True)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a command's progress lines go: stdout, or stderr when stdout carries --json.

    Flushed line by line, so a log file or a pipe shows long work as it happens.
    """
    if getattr(args, "json", False):
        return lambda message: _log_flush(message, sys.stderr)
    return _log_flush


def _pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named options, as keyword arguments for a stage function."""
    return {name: getattr(args, name) for name in names}
