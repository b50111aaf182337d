"""`mnist-tflite compile` on every Cortex-M target: code, static RAM, instructions, bound, exactness.

Compiles the seed int8 model (tests/models/int8.tflite) for each target of the table
(micro/aot/targets.py), runs the firmware in its QEMU board (-icount shift=0) on the first N
official test images, and checks every row against the TFLM interpreter (`compile --target all`
builds the same table; its rows and text come from micro/aot/alltargets.py). Prints one table and
writes benchmarks/results/targets.json, with issue 21's aims and the TFLM anchors beside.

With --ram-optimized, every target is built twice, streamed (`compile --ram-optimized`) and
default, and the table is written to benchmarks/results/targets_ram_optimized.json with issue 21's
aim for it: static RAM (activation buffer + stack) <= 3,584 B at <= 1.5x the default build's
instructions on the Cortex-M4, the same rows.

Instructions come from QEMU's instruction count, not from a cycle model, so they do not depend
on the load of the machine (wall times do, and are only recorded).

Usage:
    python benchmarks/bench_targets.py [--images 1000] [--targets cortex-m0 cortex-m55 ...] [--ram-optimized]

With ``--targets``, the other targets' rows of the last run (same --images, same mode) stay in the
JSON, and ``rows_kept_from_the_last_run`` names them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "targets.json"
RESULTS_RAM = ROOT / "benchmarks" / "results" / "targets_ram_optimized.json"
SEED = ROOT / "tests" / "models" / "int8.tflite"
# issue 21's aims for the seed model: instructions per inference; code <= 4 KB everywhere
AIM_INSTRUCTIONS = {
    "cortex-m0": 11_000_000, "cortex-m3": 6_500_000, "cortex-m4": 2_000_000, "cortex-m33": 2_200_000,
    "cortex-m55": 600_000,
}  # fmt: skip
AIM_CODE_BYTES = 4 * 1024
AIM_RAM_OPTIMIZED = {"static_ram_bytes": 3_584, "times_default_instructions": 1.5}  # on the Cortex-M4


def measure(target: str, images: int, ram_optimized: bool = False) -> dict:
    from mnist_tflite.micro.aot.alltargets import target_row
    from mnist_tflite.micro.aot.build import CompileOptions, compile_to_dir
    from mnist_tflite.micro.aot.targets import get

    t = get(target)
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        t0 = time.perf_counter()
        s = compile_to_dir(
            CompileOptions(SEED, Path(tmp) / "fw", target=target, images=images, ram_optimized=ram_optimized),
            log=lambda m: None,
        )
        wall = time.perf_counter() - t0
    row = {**target_row(s, t), "compile_wall_s": round(wall, 1)}
    row["aims"] = {
        "instructions": AIM_INSTRUCTIONS[target],
        "meets_instructions": row["instructions_per_inference"] <= AIM_INSTRUCTIONS[target],
        "meets_code": row["code_bytes"] <= AIM_CODE_BYTES,
        "fits_board_ram": row["static_ram_bytes"] <= t.ram.length,
        "exact": row["rows_identical"] == images,
    }
    return row


def measure_ram_optimized(target: str, images: int) -> dict:
    """The streamed build of ``target`` beside its default build: RAM and instructions of both."""
    row, default = measure(target, images, ram_optimized=True), measure(target, images)
    ratio = row["instructions_per_inference"] / default["instructions_per_inference"]
    row["default"] = {k: default[k] for k in ("code_bytes", "static_ram_bytes", "arena_bytes", "stack_bytes",
                                              "instructions_per_inference", "rows_identical")}  # fmt: skip
    row["times_default_instructions"] = round(ratio, 3)
    row["aims"]["meets_ram_optimized"] = (
        row["static_ram_bytes"] <= AIM_RAM_OPTIMIZED["static_ram_bytes"]
        and ratio <= AIM_RAM_OPTIMIZED["times_default_instructions"]
    )
    return row


def ram_lines(rows: list[dict]) -> list[str]:
    """The streamed builds against the default ones, one line per target."""
    lines = [f"{'streamed':<12} {'static RAM B':>16} {'instructions':>25} {'x default':>9}  rows identical"]
    for r in rows:
        d = r["default"]
        lines.append(
            f"{r['target']:<12} {d['static_ram_bytes']:>7,} -> {r['static_ram_bytes']:>5,} "
            f"{d['instructions_per_inference']:>11,} -> {r['instructions_per_inference']:>10,} "
            f"{r['times_default_instructions']:>9}  {r['rows_identical']:,}/{r['images']:,}"
        )
    return lines


def _earlier_rows(results: Path, images: int, measured: set[str]) -> dict[str, dict]:
    """The last run's rows of the targets not measured now (``--targets`` a few of them), if it
    ran as many images, so targets.json keeps one table of every target."""
    if not results.is_file():
        return {}
    last = json.loads(results.read_text(encoding="utf-8"))
    if last.get("images_per_target") != images:
        return {}
    return {r["target"]: r for r in last.get("rows", []) if r["target"] not in measured}


def main(argv: list[str] | None = None) -> int:
    from mnist_tflite.micro.aot import firmware, targets
    from mnist_tflite.micro.aot.alltargets import INSTRUCTIONS_NOTE, TFLM_ANCHORS, anchors_line, table_lines

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="test images per target (default: 1000)")
    parser.add_argument(
        "--targets", nargs="*", default=list(targets.ARM_NAMES), help="default: every Cortex-M"
    )
    parser.add_argument(
        "--ram-optimized", action="store_true", help="the streamed builds beside the default ones"
    )
    args = parser.parse_args(argv)
    problem = firmware.toolchain_problem("cortex-m4")
    if problem:
        print(f"bench_targets: {problem}", file=sys.stderr)
        return 2
    unknown = [t for t in args.targets if t not in targets.ARM_NAMES]
    if unknown:
        print(
            f"bench_targets: unknown targets {unknown}; the targets: {', '.join(targets.ARM_NAMES)}",
            file=sys.stderr,
        )
        return 2

    if args.ram_optimized:
        measured = {name: measure_ram_optimized(name, args.images) for name in args.targets}
        print("\n".join([*table_lines(list(measured.values())), "", *ram_lines(list(measured.values()))]))
    else:
        measured = {name: measure(name, args.images) for name in args.targets}
        print("\n".join([*table_lines(list(measured.values()), AIM_INSTRUCTIONS), anchors_line()]))
    results = RESULTS_RAM if args.ram_optimized else RESULTS
    earlier = _earlier_rows(results, args.images, set(measured))
    both = {**earlier, **measured}
    rows = [both[name] for name in targets.ARM_NAMES if name in both]
    doc = {
        "what": "mnist-tflite compile of the seed int8 model for every Cortex-M target, run in QEMU"
        + (" (--ram-optimized, beside the default build)" if args.ram_optimized else ""),
        "model": str(SEED.relative_to(ROOT)),
        "instructions": INSTRUCTIONS_NOTE,
        "aims": {
            "instructions": AIM_INSTRUCTIONS,
            "code_bytes": AIM_CODE_BYTES,
            **({"ram_optimized_cortex_m4": AIM_RAM_OPTIMIZED} if args.ram_optimized else {}),
        },
        "tflm_anchors": TFLM_ANCHORS,
        "images_per_target": args.images,
        "rows": rows,
        "rows_kept_from_the_last_run": sorted(earlier),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tools": firmware.which_versions(),
        },
        "conditions": "shared machine (2 vCPU, other sessions running): instruction counts are not "
        "affected by load, wall times are",
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    write_json(results, doc)
    print(f"wrote {results.relative_to(ROOT)}")
    return 0 if all(r["aims"]["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
