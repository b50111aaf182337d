"""`mnist-tflite compile` on every Cortex-M target: code, static RAM, instructions, bound, exactness.

Compiles the seed int8 model (tests/models/int8.tflite) for each target of the table
(micro/aot/targets.py), runs the firmware in its QEMU board (-icount shift=0) on the first N
official test images, and checks every row against the TFLM interpreter (`compile --target all`
builds the same table; its rows and text come from micro/aot/alltargets.py). Prints one table and
writes benchmarks/results/targets.json, with issue 21's aims and the TFLM anchors beside.

Instructions come from QEMU's instruction count, not from a cycle model, so they do not depend
on the load of the machine (wall times do, and are only recorded).

Usage:
    python benchmarks/bench_targets.py [--images 1000] [--targets cortex-m0 cortex-m55 ...]

With ``--targets``, the other targets' rows of the last run (same --images) stay in the JSON, and
``rows_kept_from_the_last_run`` names them.
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
SEED = ROOT / "tests" / "models" / "int8.tflite"
# issue 21's aims for the seed model: instructions per inference; code <= 4 KB everywhere
AIM_INSTRUCTIONS = {
    "cortex-m0": 11_000_000, "cortex-m3": 6_500_000, "cortex-m4": 2_000_000, "cortex-m33": 2_200_000,
    "cortex-m55": 600_000,
}  # fmt: skip
AIM_CODE_BYTES = 4 * 1024


def measure(target: str, images: int) -> dict:
    from mnist_tflite.micro.aot.alltargets import target_row
    from mnist_tflite.micro.aot.build import CompileOptions, compile_to_dir
    from mnist_tflite.micro.aot.targets import get

    t = get(target)
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        t0 = time.perf_counter()
        s = compile_to_dir(
            CompileOptions(SEED, Path(tmp) / "fw", target=target, images=images), log=lambda m: None
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


def _earlier_rows(images: int, measured: set[str]) -> dict[str, dict]:
    """The last run's rows of the targets not measured now (``--targets`` a few of them), if it
    ran as many images, so targets.json keeps one table of every target."""
    if not RESULTS.is_file():
        return {}
    last = json.loads(RESULTS.read_text(encoding="utf-8"))
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

    measured = {name: measure(name, args.images) for name in args.targets}
    print("\n".join([*table_lines(list(measured.values()), AIM_INSTRUCTIONS), anchors_line()]))
    earlier = _earlier_rows(args.images, set(measured))
    both = {**earlier, **measured}
    rows = [both[name] for name in targets.ARM_NAMES if name in both]
    doc = {
        "what": "mnist-tflite compile of the seed int8 model for every Cortex-M target, run in QEMU",
        "model": str(SEED.relative_to(ROOT)),
        "instructions": INSTRUCTIONS_NOTE,
        "aims": {"instructions": AIM_INSTRUCTIONS, "code_bytes": AIM_CODE_BYTES},
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, doc)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["aims"]["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
