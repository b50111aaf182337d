"""`mnist-tflite compile` figures: code, static RAM, instructions per inference on a Cortex-M4.

Compiles each model for the Cortex-M4, runs the firmware in QEMU (mps2-an386, -icount shift=0)
on the first N official test images, checks every row against the TFLM interpreter (and,
with --verify, a host build on all 10,000 test images), and sets the figures beside the
TFLM ones measured earlier for the seed int8 model (the issue's reference figures).

Models: the seed int8 model (tests/models/int8.tflite, ends in SOFTMAX), the same model
without its SOFTMAX (int8 logits, as the int8 recipes are moving to), the tiny int8 model
(tests/models/tiny_int8.tflite), and any --models given (NAME=PATH).

Usage:
    python benchmarks/bench_compile.py [--images 1000] [--verify] [--models qat=/tmp/qat.tflite ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compile.json"
TARGETS = {"static_ram_bytes": 9 * 1024, "code_bytes": 12 * 1024, "instructions_per_inference": 6_100_000}


def logits_variant(data: bytes) -> bytes:
    """The model without its trailing SOFTMAX: the graph output becomes the logits."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    g = model.subgraphs[0]
    g.operators = g.operators[:-1]
    g.outputs = [int(g.operators[-1].outputs[0])]
    for sig in model.signatureDefs or []:
        sig.outputs[0].tensorIndex = g.outputs[0]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def measure(name: str, path: Path, images: int, verify: bool, data: str) -> dict:
    from mnist_tflite.micro.aot.build import TFLM_REFERENCE, CompileOptions, compile_to_dir

    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        c0, t0 = os.times(), time.perf_counter()
        s = compile_to_dir(
            CompileOptions(path, Path(tmp) / "fw", images=images, verify=verify, data=data),
            log=lambda m: None,
        )
        wall, c1 = time.perf_counter() - t0, os.times()
    m4, mem, flash = s["cortex_m4"], s["memory"], s["flash"]
    ref, cmsis = TFLM_REFERENCE["reference_kernels"], TFLM_REFERENCE["cmsis_nn"]
    row = {
        "model": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name),
        "model_bytes": s["model_bytes"],
        "output": s["output"]["kind"],
        "layers": [f"{layer['ops']} {'x'.join(map(str, layer['out']))}" for layer in s["layers"]],
        "code_bytes": flash["code_bytes"],
        "model_data_bytes": flash["model_data_bytes"],
        "functions": flash["functions"],
        "arena_bytes": mem["arena_bytes"],
        "stack_bytes": mem["stack_bytes"],
        "static_ram_bytes": mem["static_ram_bytes"],
        "macs_model": s["macs"]["model"],
        "macs_computed": s["macs"]["computed"],
        "smlad_bound_instructions": s["macs"]["smlad_bound_instructions"],
        "instructions_per_inference": m4["instructions_per_inference"],
        "instructions_min_max": [m4["instructions_min"], m4["instructions_max"]],
        "times_smlad_bound": m4["times_smlad_bound"],
        "verification": s["verification"],
        "compile_wall_s": round(wall, 1),
        "compile_cpu_s": round((c1.children_user - c0.children_user) + (c1.user - c0.user), 1),
    }
    row["meets_targets"] = {k: row[k] <= v for k, v in TARGETS.items()}
    if name.startswith("seed"):  # the TFLM figures were measured on the seed model
        row["vs_tflm"] = {
            "static_ram_vs_arena_reference": round(row["static_ram_bytes"] / ref["arena_bytes"], 3),
            "static_ram_vs_arena_cmsis_nn": round(row["static_ram_bytes"] / cmsis["arena_bytes"], 3),
            "code_vs_reference": round(row["code_bytes"] / ref["code_bytes"], 3),
            "code_vs_cmsis_nn": round(row["code_bytes"] / cmsis["code_bytes"], 3),
            "speedup_vs_reference_kernels": round(ref["instructions"] / row["instructions_per_inference"], 1),
            "speedup_vs_cmsis_nn": round(cmsis["instructions"] / row["instructions_per_inference"], 2),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="test images run in QEMU (default: 1000)")
    parser.add_argument("--verify", action="store_true", help="also check a host build on all 10,000 images")
    parser.add_argument("--models", nargs="*", default=[], help="more models as NAME=PATH")
    parser.add_argument("--data", default="embedded")
    args = parser.parse_args(argv)

    from mnist_tflite.micro.aot import firmware
    from mnist_tflite.micro.aot.build import METHOD, TFLM_REFERENCE

    problem = firmware.toolchain_problem("cortex-m4")
    if problem:
        print(f"bench_compile: {problem}", file=sys.stderr)
        return 2
    seed = ROOT / "tests" / "models" / "int8.tflite"
    with tempfile.TemporaryDirectory(prefix="bench-compile-models-") as tmp:
        logits = Path(tmp) / "seed_logits_int8.tflite"
        logits.write_bytes(logits_variant(seed.read_bytes()))
        models = {"seed int8 (softmax)": seed, "seed int8 (logits)": logits}
        models["tiny int8 (softmax)"] = ROOT / "tests" / "models" / "tiny_int8.tflite"
        for spec in args.models:
            name, _, path = spec.partition("=")
            models[name] = Path(path)
        results = {}
        for name, path in models.items():
            results[name] = measure(name, path, args.images, args.verify, args.data)
            r = results[name]
            print(
                f"{name:<24} code {r['code_bytes']:>6,} B  RAM {r['static_ram_bytes']:>6,} B "
                f"(buffer {r['arena_bytes']:,} + stack {r['stack_bytes']})  "
                f"{r['instructions_per_inference']:>10,} instructions "
                f"({r['times_smlad_bound']}x SMLAD bound)  "
                f"QEMU rows identical {r['verification']['target'].get('rows_identical')}/{args.images}"
            )
    doc = {
        "what": "mnist-tflite compile for the Cortex-M4 (arm-none-eabi-gcc -O2), run in QEMU mps2-an386",
        "instruction_count_method": METHOD,
        "targets": TARGETS,
        "tflm_reference_seed_int8": {
            **TFLM_REFERENCE,
            "note": "TFLM built for Cortex-M4 and run in QEMU mps2-an386 on the seed int8 model "
            "(42,080-byte flatbuffer), measured earlier on this project's machines (issue 10); "
            "cmsis_nn code = 56.6 KB + 39.4 KB",
        },
        "images_in_qemu": args.images,
        "models": results,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0],
        },
        "tools": firmware.which_versions(),
    }
    write_json(RESULTS, doc)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
