"""``mnist-tflite run``: data -> train -> convert every recipe -> evaluate -> report."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite import data as data_mod
from mnist_tflite.edge.evaluate import VariantResult, confusion_matrix, evaluate_model
from mnist_tflite.errors import MnistTfliteError, fail
from mnist_tflite.report import tables as report_mod
from mnist_tflite.training import convert as convert_mod
from mnist_tflite.training.optimize import report_notes
from mnist_tflite.training.train import TrainConfig, save_model, train


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``run``; ``train`` holds everything that decides the weights."""

    out: Path
    data: str = "auto"
    recipes: str = "default"
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration_size: int = convert_mod.CALIBRATION_SIZE
    latency_samples: int = 200
    micro_images: int | None = None  # test images checked in TFLM (None: all)
    force: bool = False


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty ``--out`` unless forced; fail early if it cannot be written."""
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise fail(out, "output directory is not empty (pass --force to overwrite its files)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise fail(out, f"output directory is not writable ({exc.strerror})") from None


def machine_info() -> dict[str, Any]:
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [
                        f
                        for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                        if f in have
                    ]
                    break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "python": platform.python_version(),
    }


def run(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole job; returns the report dict (also written to ``report.json``)."""
    recipes = convert_mod.resolve_recipes(config.recipes)
    if config.calibration_size < 1:
        raise MnistTfliteError(f"--calibration-size must be >= 1, received: {config.calibration_size}")
    config.train.validate()
    out = Path(config.out)
    prepare_out_dir(out, config.force)
    t_start = time.perf_counter()

    ds = data_mod.load(config.data, log=log)
    log(f"[1/4] data: {ds.source}: {len(ds.x_train):,} train / {len(ds.x_test):,} test images")

    log(f"[2/4] training {config.train.arch} for {config.train.epochs} epochs (seed {config.train.seed})")
    result = train(ds, config.train, log=log)
    model_path = save_model(result.model, out / "model.keras")
    x_test = data_mod.normalize(ds.x_test)
    keras_probs = np.asarray(result.model.predict(x_test, batch_size=1000, verbose=0), dtype=np.float32)
    keras_acc = float((keras_probs.argmax(1) == ds.y_test).mean())
    log(f"      Keras test accuracy {100 * keras_acc:.2f} % ({result.seconds:.0f} s) -> {model_path}")

    log(f"[3/4] converting {len(recipes)} recipes: {', '.join(r.name for r in recipes)}")
    rep = data_mod.normalize(
        data_mod.representative_sample(ds.x_train, config.calibration_size, config.train.seed)
    )
    calibration = {"images": len(rep), "seed": config.train.seed, "from": "training split"}
    written: list[tuple[convert_mod.Recipe, Path | None, str | None]] = []
    build_extras: dict[str, dict[str, Any]] = {}  # fine-tuning figures and zipped size, per recipe
    for recipe in recipes:
        path = out / f"{recipe.name}.tflite"
        try:
            flatbuffer, build_extras[recipe.name] = _build(recipe, result.model, ds, rep, config, log)
        except MnistTfliteError as exc:
            log(f"      {recipe.name:<10} FAILED: {exc}")
            written.append((recipe, None, str(exc)))
            continue
        convert_mod.write_tflite(
            path,
            flatbuffer,
            recipe,
            class_names=ds.class_names,
            data_source=ds.source,
            calibration=calibration if recipe.needs_calibration else None,
            extra={"architecture": config.train.arch, "seed": config.train.seed, **build_extras[recipe.name]},
        )
        log(f"      {recipe.name:<10} {len(flatbuffer):>9,} bytes -> {path}")
        written.append((recipe, path, None))

    log(f"[4/4] evaluating on {len(ds.x_test):,} test images with LiteRT")
    rows: list[VariantResult] = []
    confusion = {}
    for recipe, path, error in written:
        if path is None:
            rows.append(VariantResult(name=recipe.name, recipe=recipe.name, status="failed", error=error))
            continue
        try:
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
        log(
            f"      {recipe.name:<10} accuracy {100 * row.accuracy:.2f} %  "
            f"agreement {100 * row.agreement:.2f} %"
        )
        row.extra.update(build_extras.get(recipe.name, {}))
        rows.append(row)

    from mnist_tflite.micro.export import deployer_columns

    log("      TensorFlow Lite Micro: flash, arena, MACs, ops per variant; int8 run on every test image")
    n_micro = len(ds.x_test) if config.micro_images is None else config.micro_images
    micro_report = deployer_columns(rows, ds.x_test[:n_micro], ds.y_test[:n_micro], log=log)
    table_rows = report_mod.rows_as_dicts(rows)
    plots = {}
    cm_name = "int8" if "int8" in confusion else next(iter(confusion), None)
    if cm_name:
        report_mod.plot_confusion(
            confusion[cm_name],
            ds.class_names,
            f"Confusion matrix: {cm_name}",
            out / f"confusion_{cm_name}.png",
        )
        plots[f"confusion matrix ({cm_name})"] = f"confusion_{cm_name}.png"
    report_mod.plot_size_accuracy(table_rows, out / "size_vs_accuracy.png")
    plots["size vs accuracy"] = "size_vs_accuracy.png"
    report_mod.plot_size_accuracy(
        [r for r in table_rows if r.get("arena_bytes")],  # only what TFLM can run
        out / "flash_vs_accuracy.png",
        size_key="flash_bytes",
        title="Flash vs accuracy (variants that run in TFLM)",
    )
    plots["flash vs accuracy"] = "flash_vs_accuracy.png"

    report = {
        "format": "mnist-tflite-report/1",
        "seed": config.train.seed,
        "data": ds.summary(),
        "train": {
            "config": asdict(config.train),
            "seconds": result.seconds,
            "keras_accuracy": keras_acc,
            "history": result.history,
        },
        "calibration": calibration,
        "variants": table_rows,
        "confusion": {k: v.tolist() for k, v in confusion.items()},
        "plots": plots,
        "micro": micro_report,
        "machine": machine_info(),
        "versions": convert_mod.versions(),
        "seconds_total": time.perf_counter() - t_start,
    }
    notes = [*micro_report["notes"], *report_notes(table_rows)]
    int8 = report_mod.int8_note(table_rows, report["machine"])
    notes += [int8] if int8 else []
    md, js = report_mod.write_report(out, report, notes=notes)
    log("")
    log(report_mod.markdown_table(table_rows))
    log("")
    log(f"report: {md}  {js}\nmodels: {out}/*.tflite (metadata in *.json)  keras: {model_path}")
    log(f"total {report['seconds_total']:.0f} s")
    return report


def _build(
    recipe: convert_mod.Recipe,
    model: Any,
    ds: data_mod.Dataset,
    rep: np.ndarray,
    config: RunConfig,
    log: Callable[[str], None] = print,
) -> tuple[bytes, dict[str, Any]]:
    """Convert by recipe, fine-tuning first when it says so; returns the bytes and report extras."""
    from mnist_tflite.training.optimize import fine_tune, zip_bytes

    calibration = rep if recipe.needs_calibration else None
    extra: dict[str, Any] = {}
    if recipe.training:
        tuned = fine_tune(model, recipe, ds, config.train, calibration, log=log)
        flatbuffer, extra = tuned.flatbuffer, tuned.extra()
    else:
        flatbuffer = convert_mod.convert(model, recipe, calibration)
    return flatbuffer, {**extra, "zip_bytes": zip_bytes(flatbuffer)}
