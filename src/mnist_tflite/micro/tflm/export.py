"""TensorFlow Lite Micro: C array + op resolver + arena size, checked in the TFLM interpreter.

``export`` answers a deployer's three questions before flashing: does the model run in
TFLM (it is run there), how much flash and RAM (model bytes; the smallest tensor arena
that works, found by bisection, plus a margin) and does the device answer like the
desktop (``verify``: every test image through TFLM, compared with LiteRT row by row; the
summary states the count of identical rows).
No TensorFlow here; TFLM always runs in forked children (see ``_tflm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_tflite.core import atomic, rundir
from mnist_tflite.core.errors import MnistTfliteError, fail, printable
from mnist_tflite.edge.flatbuffer import ModelInfo
from mnist_tflite.micro.tflm import c_source as c_text
from mnist_tflite.micro.tflm.check import (
    deployer_columns,
    int8_problem,
    load,
    measure_arena,
    tflm_problem,
    verify,
)

__all__ = [
    "ExportOptions",
    "deployer_columns",
    "export",
    "int8_problem",
    "load",
    "measure_arena",
    "summary_text",
    "tflm_problem",
    "verify",
]

FORMAT = "mnist-tflite-micro/1"


@dataclass(frozen=True)
class ExportOptions:
    """Options of ``export-micro``."""

    model: Path
    out: Path
    name: str = "mnist_model"
    verify: bool = False
    force: bool = False
    allow_float: bool = False
    allow_modified: bool = False
    data: str = "auto"


def describe(path: object, data: bytes, info: ModelInfo, name: str, arena: dict[str, Any]) -> dict[str, Any]:
    """The summary of an export (written as micro.json)."""
    from mnist_tflite.core.sidecar import sha256_bytes

    return {
        "format": FORMAT,
        "model": str(path),
        "sha256": sha256_bytes(data),
        "name": name,
        "flash_bytes": len(data),
        "arena": arena,
        "macs": info.macs,
        "macs_by_op": info.macs_by_op(),
        "ops": info.ops,
        "op_counts": info.op_counts(),
        "resolver": f"tflite::MicroMutableOpResolver<{len(info.ops)}>",
        "input": info.input.describe(),
        "output": info.output.describe(),
    }


def _check_out(out: Path, force: bool) -> None:
    rundir.check_replaceable(out, force, "micro.json", "export-micro")


def _write_dir(out: Path, files: dict[str, str], force: bool) -> None:
    """Write all files into a staging folder beside ``out``, then swap it in (``rundir``).

    A kill at any moment leaves ``out`` holding the previous export or the new one.
    """
    with rundir.transaction(out) as staging:
        _check_out(out, force)  # again, under the lock
        try:
            for fname, text in files.items():
                (staging / fname).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise fail(out, f"cannot write it ({exc.strerror})") from None


def export(opts: ExportOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the C sources for ``opts.model`` into ``opts.out``; returns the summary (micro.json).

    Args:
        opts: model, output directory, C name and flags (see ``ExportOptions``).
        log: progress lines (data loading, verification).

    Returns:
        The summary: flash, arena (with its bisection), MACs, ops, I/O quantization, files and,
        with ``verify``, the TFLM-vs-LiteRT comparison. Raises MnistTfliteError (nothing written)
        for a bad name, an existing ``--out``, a non-int8 model, a corrupt model or one TFLM can't run.

    Example:
        >>> export(ExportOptions(Path("runs/demo/int8.tflite"), Path("firmware"), verify=True))
    """
    import json

    problem = c_text.identifier_problem(opts.name)
    if problem:
        raise MnistTfliteError(f"--name {opts.name!r} {problem}")
    out = Path(opts.out)
    _check_out(out, opts.force)
    data, info = load(opts.model, allow_modified=opts.allow_modified)
    problem = None if opts.allow_float else int8_problem(info)
    if problem:
        raise fail(opts.model, problem)
    arena = measure_arena(data, info, opts.model)
    summary = describe(opts.model, data, info, opts.name, arena)
    if opts.verify:
        from mnist_tflite.core import data as data_mod

        ds = data_mod.load(opts.data, log=log, test_only=True)
        log(f"verifying in TFLM on {len(ds.x_test):,} test images ({ds.source})")
        summary["verification"] = verify(
            opts.model,
            ds.x_test,
            ds.y_test,
            arena_bytes=arena["recommended_bytes"],
            allow_modified=opts.allow_modified,
            log=log,
        )
    n = opts.name
    files = {
        f"{n}_data.cc": c_text.data_cc(n, data),
        f"{n}_data.h": c_text.data_h(n, len(data), arena["recommended_bytes"], arena["min_bytes"]),
        f"{n}_ops.h": c_text.ops_h(n, info.ops),
        "main.cc": c_text.main_cc(
            n, info.input.dtype.lower(), info.input.scale, info.input.zero_point, info.output.dtype.lower()
        ),
    }
    summary["files"] = [*files, "summary.txt", "micro.json"]
    files["summary.txt"] = summary_text(summary, out) + "\n"
    files["micro.json"] = json.dumps(summary, indent=2, default=atomic._jsonable) + "\n"
    _write_dir(out, files, opts.force)
    return summary


def _num(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def summary_text(s: dict[str, Any], out: object = None) -> str:
    """The human-readable export summary (also written as summary.txt)."""
    a, search = s["arena"], s["arena"]["search"]
    macs = ", ".join(f"{op} {m:,}" for op, m in s["macs_by_op"].items())
    ops = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in s["op_counts"].items())

    def io(t: dict[str, Any]) -> str:
        q = f", scale {t['scale']:.8g}, zero point {t['zero_point']}" if t["scale"] else ""
        return f"{t['dtype']} {t['shape']}{q}"

    lines = [
        f"{s['name']}: {printable(s['model'])}" + (f" -> {out}" if out else ""),
        f"  flash   {s['flash_bytes']:,} bytes (const array {s['name']}[] in {s['name']}_data.cc)",
        f"  arena   {a['recommended_bytes']:,} bytes to allocate = smallest that works in TFLM "
        f"{a['min_bytes']:,} bytes {a['margin']}",
        f"          found by bisection: {search['probes']} probes, {search['last_failing_bytes']:,} bytes "
        f"fails, {a['min_bytes']:,} works; TFLM's RecordingMicroAllocator tally: "
        f"{_num(search['recorded_total_bytes'])} bytes ({a['host']})",
        f"  MACs    {s['macs']:,} per inference ({macs or 'no conv/dense layers'})",
        f"  ops     {len(s['ops'])}: {ops} -> {s['resolver']} in {s['name']}_ops.h",
        f"  input   {io(s['input'])}",
        f"  output  {io(s['output'])}",
    ]
    v = s.get("verification")
    if v:
        b, x = v["vs_litert_builtin"], v["vs_litert_xnnpack"]
        unit = " steps" if v["output_dtype"].startswith(("int", "uint")) else ""
        lines += [
            f"  TFLM check on {v['images']:,} test images ({v['tflm_seconds']:.1f} s, {v['workers']} "
            f"processes, arena {v['arena_bytes']:,} bytes): accuracy {100 * v['accuracy']:.2f} % "
            f"(LiteRT {100 * v['litert_accuracy']:.2f} %)",
            f"    vs LiteRT builtin kernels: {v['images'] - b['rows_differing']:,}/{v['images']:,} output "
            f"rows identical ({b['rows_differing']:,} differ, {b['predictions_differing']} predictions, "
            f"max {b['max_abs_diff']:g}{unit})",
            f"    vs LiteRT XNNPACK (default): {x['rows_differing']:,} rows differ "
            f"({x['predictions_differing']} predictions, max {x['max_abs_diff']:g}{unit})",
        ]
    return "\n".join(lines)
