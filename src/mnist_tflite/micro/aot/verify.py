"""Check compiled code against the TFLM interpreter, row for row, and load it on this computer.

``tflm_rows`` runs the reference (tflite-micro's Python interpreter, in children that die
with us); ``host_model``/``run_library`` build the generated C as a shared library and call
``<name>_invoke`` through ctypes; ``compare`` counts identical output rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import procs
from mnist_tflite.micro.aot import codegen, firmware
from mnist_tflite.micro.aot.compiler import Program, compile_model, load_program

TFLM_ARENA = 4 << 20  # generous: the reference run only needs to work, not to be small
TFLM_MISSING = "the tflite-micro package is not installed (pip install 'mnist-tflite[micro]')"


def tflm_rows(data: bytes, inputs: np.ndarray, workers: int | None = None) -> np.ndarray | str:
    """The TFLM interpreter's output rows for ``inputs`` (int8 (N, size)), or why there are none."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return TFLM_MISSING
    from mnist_tflite.micro.tflm.interpreter import map_in_children, run_batch

    workers = max(1, min(workers or os.cpu_count() or 1, len(inputs)))
    results = map_in_children(run_batch, [(data, TFLM_ARENA, c) for c in np.array_split(inputs, workers)])
    for res in results:
        if not res.ok:
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            return f"TFLM failed ({res.error or res.signal}{': ' + lines[-1] if lines else ''})"
    return np.concatenate([r.value for r in results]).reshape(len(inputs), -1)


def compare(rows: np.ndarray, reference: np.ndarray | str, labels: np.ndarray, what: str) -> dict[str, Any]:
    """Accuracy of ``rows`` and, unless ``reference`` says why there is none, the identical-row count."""
    out: dict[str, Any] = {"program": what, "images": len(rows)}
    out["accuracy"] = float((rows.argmax(axis=1) == labels[: len(rows)]).mean()) if len(rows) else None
    if isinstance(reference, str):
        out["vs_tflm"] = f"not run: {reference}"
        return out
    same = (rows == reference.astype(rows.dtype)).all(axis=1)
    out["rows_identical"] = int(same.sum())
    out["rows_differing"] = int((~same).sum())
    out["first_differing"] = [int(i) for i in np.flatnonzero(~same)[:5]]
    return out


def host_model(
    model: str | os.PathLike[str] | bytes,
    directory: Path,
    name: str = "mnist_model",
    ram_optimized: bool = False,
) -> tuple:
    """Compile a model (a path or flatbuffer bytes) into ``directory`` and build it for this computer
    (``ram_optimized``: with the streaming plan of stream.py).

    Returns:
        ``(program, lib)``: the compiled Program and the ctypes handle of ``lib<name>.so``
        (call it with ``run_library``). Needs gcc.
    """
    program: Program
    if isinstance(model, bytes):
        program, label = compile_model(model, "model", ram_optimized), "model"
    else:
        _, program = load_program(model, ram_optimized=ram_optimized)
        label = Path(model).name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.h").write_text(codegen.header(program, name), encoding="utf-8")
    (directory / f"{name}.c").write_text(codegen.source(program, name, label, ""), encoding="utf-8")
    for fname, text in codegen.kernel_sources(program.stream is not None).items():
        (directory / fname).write_text(text, encoding="utf-8")
    return program, host_library(directory, name, directory)


def host_library(directory: Path, name: str, into: Path) -> Any:
    """Build ``<name>.c`` and the kernels as a shared library in ``into``; returns the ctypes handle."""
    import ctypes

    lib = firmware.build_host_library(directory, name, into / f"lib{name}.so")
    return ctypes.CDLL(str(lib))


def run_library(lib: Any, name: str, inputs: np.ndarray, outputs: int) -> np.ndarray:
    """Call ``<name>_invoke`` once per input row (int8 (N, size)); returns int8 (N, outputs)."""
    import ctypes

    invoke = getattr(lib, f"{name}_invoke")
    invoke.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    rows = np.zeros((len(inputs), outputs), dtype=np.int8)
    x = np.ascontiguousarray(inputs, dtype=np.int8)
    for i in range(len(x)):
        invoke(x[i].ctypes.data, rows[i].ctypes.data)
    return rows


def verify_host(
    directory: Path, name: str, raw: bytes, inputs: np.ndarray, labels: np.ndarray, outputs: int
) -> dict[str, Any]:
    """Every row of ``inputs`` through a host build of ``directory``'s C and through TFLM, compared."""
    with procs.temp_dir("mnist-tflite-host") as lib_dir:  # swept by the next run if we are killed
        t = time.perf_counter()
        rows = run_library(host_library(directory, name, lib_dir), name, inputs, outputs)
        seconds = time.perf_counter() - t
    t = time.perf_counter()
    result = compare(rows, tflm_rows(raw, inputs), labels, f"lib{name}.so (host build)")
    result.update(host_seconds=round(seconds, 2), tflm_seconds=round(time.perf_counter() - t, 2))
    return result
