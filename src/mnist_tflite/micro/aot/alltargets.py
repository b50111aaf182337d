"""``compile --target all``: every Cortex-M of the target table built, run in QEMU and checked.

Each target's complete ``compile`` output (sources, Makefile, firmware.elf, its own
compile.json) goes into ``--out/<target>/``; ``--out/compile.json`` holds one row per target:
code, static RAM, instructions per inference, the bound of that core, rows identical to TFLM.
``target_row`` and ``table_lines`` are also what benchmarks/bench_targets.py prints and writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.micro.aot import targets

ALL = "all"

# TFLM figures for the default seed int8 model (42,080-byte flatbuffer), measured earlier on
# this project's machines: TFLM built for Cortex-M4 and run in QEMU mps2-an386 (issue 10).
TFLM_REFERENCE = {
    "reference_kernels": {"code_bytes": 63_600, "arena_bytes": 29_348, "instructions": 181_000_000},
    "cmsis_nn": {"code_bytes": 96_000, "arena_bytes": 29_412, "instructions": 6_140_000},
}
INSTRUCTIONS_NOTE = (
    "QEMU -icount shift=0 counts executed instructions (1 ns of virtual time each); QEMU has no cycle "
    "model, so these are instructions, not cycles (an M55 takes about two cycles per 128-bit MVE "
    "instruction; an M0 two or more per load and branch)"
)
TFLM_ANCHORS = {**TFLM_REFERENCE, "note": "TFLM built for Cortex-M4, QEMU mps2-an386 (issue 10)"}


def target_row(summary: Mapping[str, Any], t: targets.Target) -> dict[str, Any]:
    """One row of the table from a Cortex-M target's compile.json content."""
    core, mem, flash = summary[t.key], summary["memory"], summary["flash"]
    v = summary["verification"]["target"]
    return {
        "target": t.name,
        "core": t.core,
        "board": t.board,
        "kernels": t.kernel_isa,
        "test_images": t.images,
        "compiler_flags": " ".join(t.cpu_flags),
        "code_bytes": flash["code_bytes"],
        "libgcc_bytes": flash["libgcc_bytes"],
        "model_data_bytes": flash["model_data_bytes"],
        "static_ram_bytes": mem["static_ram_bytes"],
        "arena_bytes": mem["arena_bytes"],
        "stack_bytes": mem["stack_bytes"],
        "board_ram_bytes": t.ram.length if t.ram else None,
        "board_flash_bytes": t.flash.length if t.flash else None,
        "instructions_per_inference": core["instructions_per_inference"],
        "instructions_min_max": [core["instructions_min"], core["instructions_max"]],
        "bound_instructions": core["bound_instructions"],
        "bound_rule": core["bound_rule"],
        "times_bound": core["times_bound"],
        "rows_identical": v.get("rows_identical"),
        "images": v.get("images"),
        "accuracy": v.get("accuracy"),
        "method": core["method"],
        "qemu_seconds": core["qemu_seconds"],
    }


def table_lines(rows: Iterable[Mapping[str, Any]], aims: Mapping[str, int] | None = None) -> list[str]:
    """The table as text: one line per target (a target that was not built says why)."""
    aim = f" {'aim':>10}" if aims else ""
    lines = [
        f"{'target':<11} {'kernels':<8} {'QEMU board':<11} {'code B':>7} {'RAM B':>6} {'instructions':>12} "
        f"{'bound':>10} {'x bound':>7}{aim}  rows identical to TFLM"
    ]
    for r in rows:
        if "not_built" in r:
            lines.append(f"{r['target']:<11} not built: {r['not_built']}")
            continue
        aim = f" {aims[r['target']]:>10,}" if aims else ""
        identical = "?" if r["rows_identical"] is None else f"{r['rows_identical']:,}"
        lines.append(
            f"{r['target']:<11} {r['kernels']:<8} {r['board']:<11} {r['code_bytes']:>7,} "
            f"{r['static_ram_bytes']:>6,} {r['instructions_per_inference']:>12,} "
            f"{r['bound_instructions']:>10,} {r['times_bound']:>7}{aim}  {identical}/{r['images']:,}"
        )
    return lines


def anchors_line() -> str:
    """The TFLM figures to read ours against."""
    ref, cmsis = TFLM_REFERENCE["reference_kernels"], TFLM_REFERENCE["cmsis_nn"]
    return (
        f"anchors (TFLM on the Cortex-M4, seed model): reference kernels {ref['instructions']:,} "
        f"instructions, with CMSIS-NN {cmsis['instructions']:,}; arena {ref['arena_bytes']:,} B"
    )


def compile_all(
    opts: Any,
    directory: Path,
    build_one: Callable[[Path, Any], dict[str, Any]],
    log: Callable[[str], None] = print,
    names: Iterable[str] = targets.ARM_NAMES,
) -> dict[str, Any]:
    """Build every target of ``names`` into ``directory/<target>`` with ``build_one``; the table.

    ``build_one(folder, options)`` writes one target's whole compile output and returns its
    compile.json content; a target it refuses (MnistTfliteError: the model does not fit the
    board) makes a row saying so, the other targets are still built. ``--verify`` (every test
    image on the host) runs once, with the first target. Returns the content of ``directory/compile.json``.
    """
    names = list(names)
    rows: list[dict[str, Any]] = []
    verification: dict[str, Any] = {}
    sha256 = None
    for i, name in enumerate(names):
        t = targets.get(name)
        one = replace(opts, target=name, out=directory / name, verify=opts.verify and i == 0)
        log(f"[{i + 1}/{len(names)}] {name}")
        try:
            folder = directory / name
            folder.mkdir()
            summary = build_one(folder, one)
        except MnistTfliteError as exc:
            shutil.rmtree(directory / name, ignore_errors=True)
            rows.append({"target": name, "not_built": str(exc)})
            continue
        sha256 = summary["sha256"]
        rows.append(target_row(summary, t))
        verification[name] = summary["verification"]["target"]
        if "host_all" in summary["verification"]:
            verification["host_all"] = summary["verification"]["host_all"]
    if not verification:
        raise MnistTfliteError(f"no target could be built; {rows[0]['target']}: {rows[0]['not_built']}")
    return {
        "model": str(opts.model),
        "sha256": sha256,
        "name": opts.name,
        "target": ALL,
        "rows": rows,
        "verification": verification,
        "tflm_anchors": TFLM_ANCHORS,
        "instructions": INSTRUCTIONS_NOTE,
        "files": sorted([*(f"{r['target']}/" for r in rows if "not_built" not in r), "compile.json"]),
    }


def summary_text(doc: Mapping[str, Any], out: object = None) -> str:
    """What ``compile --target all`` prints (without --json)."""
    streamed = ", rows streamed: --ram-optimized" if doc.get("ram_optimized") else ""
    lines = [f"{doc['name']}: {doc['model']} -> {out or ''} (every Cortex-M target, QEMU{streamed})"]
    lines += ["  " + line for line in table_lines(doc["rows"])]
    host = doc["verification"].get("host_all")
    if host and "rows_identical" in host:
        lines.append(
            f"  --verify: {host['rows_identical']:,}/{host['images']:,} rows identical ({host['program']})"
        )
    lines.append("  " + anchors_line())
    return "\n".join(lines)
