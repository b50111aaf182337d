"""``mnist-tflite run``: data -> train -> convert every recipe -> evaluate -> report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import data as data_mod
from mnist_tflite.core import rundir
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.core.recipes import CALIBRATION_SIZE, Recipe, resolve_recipes
from mnist_tflite.core.values import MAX_IMAGES, check_data_spec, check_int_range
from mnist_tflite.edge.evaluate import LATENCY_SAMPLES, VariantResult, confusion_matrix, evaluate_model
from mnist_tflite.report import notes as notes_mod
from mnist_tflite.report import tables as report_mod
from mnist_tflite.training.convert import load_model_source, versions, write_tflite
from mnist_tflite.training.download import keras_mnist
from mnist_tflite.training.train import TrainConfig, TrainResult, cpu_flags, save_model, train
from mnist_tflite.training.variants import Variant, build_variant


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``run``; ``train`` holds everything that decides the weights."""

    out: Path
    data: str = "auto"
    recipes: str = "default"
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration_size: int = CALIBRATION_SIZE
    latency_samples: int = LATENCY_SAMPLES
    micro_images: int | None = None  # test images checked in TFLM (None: all)
    force: bool = False
    resume: bool = False  # reuse the model.keras of the run in ``out`` (same data and training options)

    def validate(self) -> list[Recipe]:
        """Check every option before any work starts; returns the recipes to build."""
        check_int_range(self.calibration_size, "--calibration-size", 1, MAX_IMAGES)
        if self.latency_samples < 0:
            raise MnistTfliteError(f"--latency-samples must be >= 0, received: {self.latency_samples}")
        if self.micro_images is not None:
            check_int_range(self.micro_images, "--micro-images", 1, MAX_IMAGES)
        self.train.validate()
        check_data_spec(self.data)  # before anything is created: a typo must not leave an empty folder
        return resolve_recipes(self.recipes)


def fingerprint(config: RunConfig, recipes: list[Recipe]) -> dict[str, Any]:
    """What decides a run's results; a folder holding a run with the same one is already done."""
    fp = {
        "data": config.data,
        "recipes": [r.name for r in recipes],
        "train": asdict(config.train),
        "calibration_size": config.calibration_size,
        "latency_samples": config.latency_samples,
        "micro_images": config.micro_images,
    }
    return json.loads(json.dumps(fp, default=str))  # tuples -> lists, as read back from report.json


def machine_info() -> dict[str, Any]:
    have = cpu_flags()
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have]
    return {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "python": platform.python_version(),
    }


def run(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole job; returns the report dict (also written to ``report.json``).

    The run is built in a staging folder beside ``--out`` and swapped in at the end (see
    ``rundir``): ``--out`` holds the previous complete run or the new one, never a mix.
    A folder that already holds a complete run with this configuration is left as it is.
    """
    recipes = config.validate()
    out = Path(config.out)
    fp = fingerprint(config, recipes)
    replace = config.force or config.resume
    try:
        _refuse_or_done(out, fp, config, replace)
        ds = data_mod.load(config.data, downloader=keras_mnist, log=log, need_train=True)
        with rundir.transaction(out, log=log, foreign=rundir.run_foreign) as staging:
            # again, under the lock: another run may have finished into ``out`` meanwhile
            _refuse_or_done(out, fp, config, replace)
            resume = rundir.resumable(out, fp, ds) if config.resume else None
            report = build(config, recipes, fp, ds, staging, log, resume=resume)
    except _AlreadyDone as done:
        log(f"{out}: already holds a complete run with these options; nothing to do (--force runs it again)")
        return done.report
    report_lines(report, out, log)
    return report


class _AlreadyDone(Exception):
    """Not an error: leaves the transaction (the staging folder is deleted) without publishing."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report


def _refuse_or_done(out: Path, fp: dict[str, Any], config: RunConfig, replace: bool) -> None:
    done = None if replace else rundir.finished_report(out, fp)
    if done is not None:
        raise _AlreadyDone(done)
    rundir.check_out_dir(out, replace)  # first: what run did not write is named before anything else
    if config.resume:
        rundir.resumable(out, fp)


def build(
    config: RunConfig,
    recipes: list[Recipe],
    fp: dict[str, Any],
    ds: data_mod.Dataset,
    out: Path,
    log: Callable[[str], None],
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every stage, writing into ``out`` (the staging folder); returns the report.

    ``resume``: the previous report of ``config.out``, whose ``model.keras`` is reused untrained.
    """
    t_start = time.perf_counter()
    log(f"[1/4] data: {ds.source}")
    trained, keras_probs = train_stage(ds, config, out, log, resume)
    rep = data_mod.normalize(
        data_mod.representative_sample(ds.x_train, config.calibration_size, config.train.seed)
    )
    calibration = {"images": len(rep), "seed": config.train.seed, "from": "training split"}
    built = convert_stage(recipes, trained, ds, rep, calibration, config, out, log)
    rows, confusion = evaluate_stage(built, ds, keras_probs, config, log)
    micro = micro_stage(rows, ds, config, log)
    for row in rows:  # the paths the report names are where the files will be, not the staging folder
        row.path = str(Path(config.out) / Path(row.path).name) if row.path else row.path
    table_rows = report_mod.rows_as_dicts(rows)
    plots = plot_stage(table_rows, confusion, ds.class_names, out)
    report = {
        "format": "mnist-tflite-report/1",
        "seed": config.train.seed,
        "run_config": fp,
        "data": ds.summary(),
        "train": {
            "config": asdict(config.train),
            "seconds": trained.seconds,
            "precision": trained.precision,
            "keras_accuracy": float((keras_probs.argmax(1) == ds.y_test).mean()),
            "history": trained.history,
        },
        "calibration": calibration,
        "variants": table_rows,
        "confusion": {k: v.tolist() for k, v in confusion.items()},
        "plots": plots,
        "micro": micro,
        "machine": machine_info(),
        "versions": versions(),
        "seconds_total": time.perf_counter() - t_start,
    }
    report_stage(report, out, log)
    return report


def train_stage(
    ds: data_mod.Dataset,
    config: RunConfig,
    out: Path,
    log: Callable[[str], None],
    resume: dict[str, Any] | None = None,
) -> tuple[TrainResult, np.ndarray]:
    """Train the Keras model (or reuse it); keep its test-set answers: every variant is compared with them."""
    tc = config.train
    if resume is not None:
        model_path = out / "model.keras"
        shutil.copy2(Path(config.out) / "model.keras", model_path)
        log(f"[2/4] reusing {Path(config.out) / 'model.keras'} (--resume: {tc.arch}, seed {tc.seed})")
        result = TrainResult(
            model=load_model_source(model_path),
            history=resume["train"]["history"],
            seconds=resume["train"]["seconds"],
            config=tc,
            precision=resume["train"].get("precision", "float32"),
        )
    else:
        log(f"[2/4] training {tc.arch} for {tc.epochs} epochs (seed {tc.seed})")
        result = train(ds, tc, log=log)
        model_path = save_model(result.model, out / "model.keras")
    x_test = data_mod.normalize(ds.x_test)
    probs = np.asarray(result.model.predict(x_test, batch_size=1000, verbose=0), dtype=np.float32)
    accuracy = float((probs.argmax(1) == ds.y_test).mean())
    log(f"      Keras test accuracy {100 * accuracy:.2f} % ({result.seconds:.0f} s) -> {model_path.name}")
    return result, probs


def convert_stage(
    recipes: list[Recipe],
    trained: TrainResult,
    ds: data_mod.Dataset,
    rep: np.ndarray,
    calibration: dict[str, Any],
    config: RunConfig,
    out: Path,
    log: Callable[[str], None],
) -> list[tuple[Recipe, Path | None, Variant | str]]:
    """Build and write every recipe; a recipe the converter refuses becomes a failed row, not an abort."""
    log(f"[3/4] converting {len(recipes)} recipes: {', '.join(r.name for r in recipes)}")
    built: list[tuple[Recipe, Path | None, Variant | str]] = []
    for recipe in recipes:
        try:
            variant = build_variant(trained.model, recipe, ds, config.train, rep, log=log)
        except MnistTfliteError as exc:
            log(f"      {recipe.name:<10} FAILED: {exc}")
            built.append((recipe, None, str(exc)))
            continue
        path = out / f"{recipe.name}.tflite"
        write_tflite(
            path,
            variant.flatbuffer,
            recipe,
            class_names=ds.class_names,
            data_source=ds.source,
            calibration=calibration if recipe.needs_calibration else None,
            extra={"architecture": config.train.arch, "seed": config.train.seed, **variant.extra},
        )
        log(f"      {recipe.name:<10} {len(variant.flatbuffer):>9,} bytes -> {path.name}")
        built.append((recipe, path, variant))
    return built


def evaluate_stage(
    built: list[tuple[Recipe, Path | None, Variant | str]],
    ds: data_mod.Dataset,
    keras_probs: np.ndarray,
    config: RunConfig,
    log: Callable[[str], None],
) -> tuple[list[VariantResult], dict[str, np.ndarray]]:
    """Run every written variant through LiteRT, as the device would, against Keras's answers."""
    log(f"[4/4] evaluating on {len(ds.x_test):,} test images with LiteRT")
    rows: list[VariantResult] = []
    confusion: dict[str, np.ndarray] = {}
    for recipe, path, variant in built:
        try:
            if path is None or isinstance(variant, str):
                raise MnistTfliteError(str(variant))
            row, probs = evaluate_model(
                path,
                ds.x_test,
                ds.y_test,
                reference_probs=keras_probs,
                name=recipe.name,
                latency_samples=config.latency_samples,
            )
        except MnistTfliteError as exc:
            rows.append(VariantResult(name=recipe.name, recipe=recipe.name, status="failed", error=str(exc)))
            continue
        confusion[recipe.name] = confusion_matrix(ds.y_test, probs.argmax(1), len(ds.class_names))
        acc, agree = 100 * (row.accuracy or 0), 100 * (row.agreement or 0)
        log(f"      {recipe.name:<10} accuracy {acc:.2f} %  agreement {agree:.2f} %")
        row.extra.update(variant.extra)
        rows.append(row)
    return rows, confusion


def micro_stage(
    rows: list[VariantResult], ds: data_mod.Dataset, config: RunConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """What a microcontroller needs (flash, TFLM arena, MACs, ops), and the int8 model run in TFLM."""
    from mnist_tflite.micro.aot.columns import compiled_columns
    from mnist_tflite.micro.tflm.export import deployer_columns

    total = len(ds.x_test)
    n = total if config.micro_images is None else min(config.micro_images, total)
    subset = f"{n:,} of {total:,} test images" if n < total else f"all {total:,} test images"
    log(f"      TensorFlow Lite Micro: flash, arena, MACs, ops per variant; int8 run on {subset}")
    micro = deployer_columns(rows, ds.x_test[:n], ds.y_test[:n], log=log, of_images=total)
    # our own compiler: what the int8 variants cost as plain C on a Cortex-M4 (QEMU), if installed
    int8 = {r.name: r.path for r in rows if r.status == "ok" and r.path and r.input_dtype == "int8"}
    compiled = compiled_columns(int8, ds.x_test, log=log)
    for row in rows:
        row.extra.update(compiled["columns"].get(row.name, {}))
    micro["notes"] += compiled["notes"]
    micro["compiled"] = compiled["columns"]
    return micro


def plot_stage(
    table_rows: list[dict[str, Any]], confusion: dict[str, np.ndarray], class_names: Any, out: Path
) -> dict[str, str]:
    """The PNGs a reader looks at first: where int8 errs, and what each variant costs in flash and RAM.

    Flash is the model file's size for every variant (TFLM maps the flatbuffer as it is), so
    the second plot shows the other cost a microcontroller pays: the TFLM tensor arena.
    """
    plots = {}
    cm_name = "int8" if "int8" in confusion else next(iter(confusion), None)
    if cm_name:
        path = out / f"confusion_{cm_name}.png"
        report_mod.plot_confusion(confusion[cm_name], class_names, f"Confusion matrix: {cm_name}", path)
        plots[f"confusion matrix ({cm_name})"] = path.name
    n = int(cm_total(confusion)) or 10_000
    report_mod.plot_accuracy_vs_size(table_rows, out / "size_vs_accuracy.png", test_images=n)
    plots["size vs accuracy"] = "size_vs_accuracy.png"
    report_mod.plot_accuracy_vs_size(
        [r for r in table_rows if r.get("arena_bytes")],  # only what TFLM can run
        out / "ram_vs_accuracy.png",
        size_key="arena_bytes",
        title="RAM vs accuracy (TFLM tensor arena; variants that run in TFLM)",
        test_images=n,
    )
    plots["RAM (TFLM arena) vs accuracy"] = "ram_vs_accuracy.png"
    return plots


def cm_total(confusion: dict[str, np.ndarray]) -> int:
    """The number of test images the confusion matrices count (0 when there are none)."""
    return int(next(iter(confusion.values())).sum()) if confusion else 0


def report_stage(report: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    """Write report.md/json with the notes that say what the figures mean."""
    rows = report["variants"]
    notes = [*report["micro"]["notes"], *notes_mod.finetune_notes(rows)]
    int8 = notes_mod.int8_note(rows, report["machine"])
    notes += [int8] if int8 else []
    report_mod.write_report(out, report, notes=notes)


def report_lines(report: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    """Show the table and where the files are, once they are in ``out``."""
    log("")
    log(report_mod.markdown_table(report["variants"]))
    log("")
    log(f"report: {out / 'report.md'}  {out / 'report.json'}")
    log(f"models: {out}/*.tflite (metadata in *.json)  keras: {out / 'model.keras'}")
    log(f"total {report['seconds_total']:.0f} s")
    for line in next_steps(report["variants"], out):
        log(line)


def next_steps(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """The commands a first-time user runs next, with this run's paths."""
    import shlex

    ok = [r["name"] for r in rows if r.get("status") == "ok"]
    if not ok:
        return []
    best = "int8" if "int8" in ok else ok[0]
    model = shlex.quote(str(out / f"{best}.tflite"))
    steps = [
        "",
        "next steps:",
        f"  mnist-tflite predict {model} YOUR_DIGIT.png       # classify photos or scans",
        f"  mnist-tflite serve {shlex.quote(str(out))}                  # draw digits in a browser",
    ]
    if best == "int8":
        # beside the run folder, not in it: `run --force` replaces the run folder whole
        base = out if out.name else out.resolve()
        fw = shlex.quote(str(base.parent / f"{base.name}-firmware"))
        steps.append(f"  mnist-tflite export-micro {model} --out {fw} --verify   # C sources for TFLM")
        c = shlex.quote(str(base.parent / f"{base.name}-compiled"))
        steps.append(f"  mnist-tflite compile {model} --out {c}   # plain C + Cortex-M4 firmware (QEMU)")
    return steps
