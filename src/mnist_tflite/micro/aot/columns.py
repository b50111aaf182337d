"""``run``'s compiled columns: each int8 variant compiled for the Cortex-M4 and measured in QEMU."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import procs
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.micro.aot import firmware, targets
from mnist_tflite.micro.aot.build import (
    METHOD,
    NOT_MEASURED,
    CompileOptions,
    quantize_images,
    run_measured,
    write_sources,
)
from mnist_tflite.micro.aot.compiler import load_program


def _m4_figures(path: str | os.PathLike[str], images: np.ndarray) -> dict[str, int]:
    """Compile one model for the Cortex-M4, run it on ``images`` in QEMU, and measure it."""
    _, program = load_program(path)
    with procs.temp_dir("mnist-tflite-compile") as tmp:  # swept by the next run if we are killed
        inputs = quantize_images(images, program.input.scale, program.input.zero_point)
        t = targets.get("cortex-m4")
        opts = CompileOptions(Path(path), tmp / "out", target=t.name, images=len(inputs))
        write_sources(tmp, program, opts, "", inputs)
        firmware.build(tmp, opts.name, t.name)
        result, sizes = run_measured(tmp, t, program, len(inputs), opts.name)
    return {
        "compiled_code_bytes": sizes["code"] + sizes["libgcc"],
        "compiled_static_ram_bytes": sizes["ram_data"] + result.stack_bytes,
        "compiled_instructions": round(result.instructions()["mean"]),
    }


def compiled_columns(
    models: Mapping[str, str | os.PathLike[str]],
    images: np.ndarray,
    *,
    count: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Columns for ``run``'s report: each int8 model compiled for the Cortex-M4 and run in QEMU.

    Args:
        models: variant name -> ``.tflite`` path (non-int8 ones are skipped with a note).
        images: uint8 test images (N, 28, 28); the first ``count`` are run.

    Returns:
        ``{"columns": {variant: {"compiled_code_bytes", "compiled_static_ram_bytes",
        "compiled_instructions"}}, "notes": [...]}``; empty columns and a note when the
        Cortex-M4 toolchain is missing.
    """
    report: dict[str, Any] = {"columns": {}, "notes": []}
    problem = firmware.toolchain_problem("cortex-m4")
    if problem:
        report["notes"].append(f"compiled columns {NOT_MEASURED}")
        return report
    for variant, path in models.items():
        try:
            c = report["columns"][variant] = _m4_figures(path, images[:count])
        except MnistTfliteError as exc:
            report["notes"].append(f"{variant}: not compiled: {exc}")
            continue
        log(
            f"      {variant:<10} compiled for Cortex-M4: {c['compiled_code_bytes']:,} bytes of code, "
            f"{c['compiled_static_ram_bytes']:,} bytes of static RAM, "
            f"{c['compiled_instructions']:,} instructions per inference (QEMU)"
        )
    if report["columns"]:
        report["notes"].append(
            "compiled = `mnist-tflite compile` for the Cortex-M4: code = runtime and kernels (weights not "
            "included), static RAM = activation buffer + measured stack, instructions per inference in QEMU "
            f"({METHOD})"
        )
    return report
