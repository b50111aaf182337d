"""``mnist-tflite compile``: an int8 ``.tflite`` as dependency-free C, built, run and checked.

``compile_model`` (compiler.py) turns the flatbuffer into layers and a memory plan,
codegen.py writes ``<name>.c``/``<name>.h``, firmware.py builds the test program (Cortex-M4
firmware for QEMU's mps2-an386, or a host program) and runs it on embedded test images;
here the pieces are put together: the output directory appears whole or not at all,
``compile.json`` records the figures, and the rows are compared with the TFLM interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.micro.aot import codegen, firmware, wasm
from mnist_tflite.micro.aot.compiler import Program, compile_model
from mnist_tflite.micro.tflm.c_source import identifier_problem

FORMAT = "mnist-tflite-compile/1"
TARGETS = ("cortex-m4", "host", "wasm")
MAX_IMAGES = 10_000
TFLM_ARENA = 4 << 20  # generous: the reference run only needs to work, not to be small
NOT_MEASURED = f"not measured: {firmware.INSTALL_HINT}"
METHOD = (
    "QEMU mps2-an386 with -icount shift=0 (1 ns of virtual time per instruction); the firmware "
    "reads SysTick (25 MHz: one tick per 40 instructions) before and after each invoke"
)
# TFLM figures for the default seed int8 model (42,080-byte flatbuffer), measured earlier on
# this project's machines: TFLM built for Cortex-M4 and run in QEMU mps2-an386 (issue 10).
TFLM_REFERENCE = {
    "reference_kernels": {"code_bytes": 63_600, "arena_bytes": 29_348, "instructions": 181_000_000},
    "cmsis_nn": {"code_bytes": 96_000, "arena_bytes": 29_412, "instructions": 6_140_000},
}


@dataclass(frozen=True)
class CompileOptions:
    model: Path
    out: Path
    target: str = "cortex-m4"
    images: int = 100
    name: str = "mnist_model"
    verify: bool = False
    force: bool = False
    data: str = "embedded"


def check_options(opts: CompileOptions) -> None:
    """Everything that can be refused before reading the model: one line each."""
    problem = identifier_problem(opts.name)
    if problem:
        raise MnistTfliteError(f"--name {opts.name!r} {problem}")
    if opts.target not in TARGETS:
        raise MnistTfliteError(f"--target must be one of {', '.join(TARGETS)}, received: {opts.target!r}")
    if not 1 <= opts.images <= MAX_IMAGES:
        raise MnistTfliteError(f"--images must be 1..{MAX_IMAGES}, received: {opts.images}")
    check_out(Path(opts.out), opts.force)
    problem = wasm.toolchain_problem() if opts.target == "wasm" else firmware.toolchain_problem(opts.target)
    if problem:
        raise MnistTfliteError(problem)


def check_out(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise fail(out, "exists and is not a directory; expected a new directory for the compiled model")
    if not force:
        raise fail(out, "already exists (pass --force to replace an earlier compile output)")
    marker = out / "compile.json"
    try:
        ours = json.loads(marker.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours and any(out.iterdir()):
        raise fail(out, "exists and was not written by compile (no compile.json); not replacing it")


def quantize_images(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8 (N, 28, 28) -> the int8 input tensors, as LiteRT's and the project's runners do."""
    from mnist_tflite.core.data import normalize

    x = normalize(images).reshape(len(images), -1)
    q = np.rint(x / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def tflm_rows(data: bytes, inputs: np.ndarray, workers: int | None = None) -> np.ndarray | str:
    """The TFLM interpreter's output rows for ``inputs`` (int8 (N, size)), or why there are none."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return "not run: the tflite-micro package is not installed (pip install tflite-micro)"
    from mnist_tflite.micro.tflm.interpreter import map_in_children, run_batch

    workers = max(1, min(workers or os.cpu_count() or 1, len(inputs)))
    results = map_in_children(run_batch, [(data, TFLM_ARENA, c) for c in np.array_split(inputs, workers)])
    for res in results:
        if not res.ok:
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            return f"not run: TFLM failed ({res.error or res.signal}{': ' + lines[-1] if lines else ''})"
    return np.concatenate([r.value for r in results]).reshape(len(inputs), -1)


def compare(rows: np.ndarray, reference: np.ndarray | str, labels: np.ndarray, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {"program": what, "images": len(rows)}
    out["accuracy"] = float((rows.argmax(axis=1) == labels[: len(rows)]).mean()) if len(rows) else None
    if isinstance(reference, str):
        out["vs_tflm"] = reference
        return out
    same = (rows == reference.astype(rows.dtype)).all(axis=1)
    out["rows_identical"] = int(same.sum())
    out["rows_differing"] = int((~same).sum())
    out["first_differing"] = [int(i) for i in np.flatnonzero(~same)[:5]]
    return out


def _layers(program: Program) -> list[dict[str, Any]]:
    kernels = {"conv": "i8k_conv", "fc": "i8k_fc", "maxpool": "i8k_maxpool", "softmax": "i8k_softmax",
               "copy": "i8k_copy"}  # fmt: skip
    return [
        {
            "ops": layer.label,
            "nodes": list(layer.nodes),
            "kernel": kernels[layer.kind],
            "in": list(layer.in_shape),
            "out": list(layer.out_shape),
            "macs_model": layer.macs_model,
            "macs_computed": layer.macs_computed,
            "scratch_bytes": layer.scratch_bytes,
        }
        for layer in program.layers
    ]


def _plan(program: Program) -> list[dict[str, Any]]:
    plan = program.plan
    rows = [
        {"what": f"tensor {root}", "offset": off, "bytes": plan.sizes[root]}
        for root, off in plan.offsets.items()
        if off is not None
    ]
    rows += [
        {"what": f"scratch of layer {i}", "offset": off, "bytes": program.layers[i].scratch_bytes}
        for i, off in plan.scratch.items()
    ]
    return sorted(rows, key=lambda r: r["offset"])


def describe(program: Program, opts: CompileOptions, sha256: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": str(opts.model),
        "sha256": sha256,
        "model_bytes": program.model_bytes,
        "name": opts.name,
        "target": opts.target,
        "input": program.input.describe(),
        "output": {**program.output.describe(), "kind": program.output_kind},
        "layers": _layers(program),
        "folded": [{"node": n, "op": op} for n, op in program.folded],
        "macs": {
            "model": program.macs_model,
            "computed": program.macs_computed,
            "smlad_bound_instructions": (program.macs_model + 1) // 2,
        },
        "memory": {
            "arena_bytes": program.plan.arena_bytes,
            "plan": _plan(program),
            "caller_buffers": f"input ({program.input.size} bytes) and output ({program.output.size} bytes) "
            "are the caller's arrays, not in the arena",
        },
        "weight_bytes": program.weight_bytes(),
    }


def _write_sources(
    tmp: Path, program: Program, opts: CompileOptions, sha256: str, inputs: np.ndarray
) -> list[str]:
    n = opts.name
    files = {
        f"{n}.h": codegen.header(program, n),
        f"{n}.c": codegen.source(program, n, Path(opts.model).name, sha256),
        **codegen.kernel_sources(),
        **firmware.board_sources(opts.target),
        "main.c": firmware.harness_main(n, len(inputs)),
        "test_images.S": firmware.images_asm(),
        "Makefile": firmware.makefile(n, opts.target),
    }
    for fname, text in files.items():
        (tmp / fname).write_text(text, encoding="utf-8")
    firmware.write_images(tmp, inputs)
    return [*files, firmware.IMAGES_BIN]


def _place(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir onto ``out`` (replacing an earlier compile output)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        os.chmod(tmp, 0o777 & ~atomic._umask())  # mkdtemp makes 0700
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
    except OSError as exc:
        raise fail(out, f"cannot write it ({exc.strerror})") from None
    finally:
        shutil.rmtree(old, ignore_errors=True)


def compile_to_dir(opts: CompileOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile ``opts.model`` into ``opts.out``; returns compile.json's content.

    Raises MnistTfliteError (one line, nothing written) for a bad option, an existing
    ``--out``, a missing toolchain, a model that is not int8 or has an op without a kernel,
    a corrupt file, or a failed build.

    Example:
        >>> compile_to_dir(CompileOptions(Path("runs/demo/int8.tflite"), Path("fw")))["cortex_m4"]
    """
    from mnist_tflite.core import data as data_mod
    from mnist_tflite.core.sidecar import sha256_bytes
    from mnist_tflite.micro.aot.compiler import load_program

    check_options(opts)
    if opts.target == "wasm":
        return _compile_wasm(opts, log)
    raw, program = load_program(opts.model)
    sha256 = sha256_bytes(raw)
    summary = describe(program, opts, sha256)
    ds = data_mod.load(opts.data, log=log)
    count = min(opts.images, len(ds.x_test))
    if program.input.size != 28 * 28:
        raise fail(opts.model, f"the input has {program.input.size} values; the test images need 784 (28x28)")
    inputs = quantize_images(ds.x_test[:count], program.input.scale, program.input.zero_point)
    labels = np.asarray(ds.y_test)

    out = Path(opts.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise fail(out, f"cannot create it ({exc.strerror})") from None
    try:
        files = _write_sources(tmp, program, opts, sha256, inputs)
        log(f"building the {opts.target} test program ({count} test images)")
        firmware.build(tmp, opts.name, opts.target)
        if opts.target == "cortex-m4":
            sizes = firmware.map_sizes((tmp / "firmware.map").read_text(encoding="utf-8"), opts.name)
            log(f"running firmware.elf in {firmware.QEMU} ({firmware.BOARD}, -icount shift=0)")
            result = firmware.run_firmware(tmp, count, program.output.size)
            files += ["firmware.elf", "firmware.map"]
            ins = result.instructions()
            static_ram = sizes["ram_data"] + result.stack_bytes
            summary["flash"] = {
                "code_bytes": sizes["code"] + sizes["libgcc"],
                "model_data_bytes": sizes["model_data"],
                "libgcc_bytes": sizes["libgcc"],
                "harness_bytes": sizes["harness"],
                "test_images_bytes": sizes["test_images"],
                "functions": sizes["functions"],
                "compiler": " ".join((firmware.ARM_GCC, *firmware.ARM_CFLAGS)),
            }
            summary["memory"].update(
                stack_bytes=result.stack_bytes,
                static_ram_bytes=static_ram,
                static_data_bytes=sizes["ram_data"],
                stack_method="painted with a pattern before each invoke; the deepest word overwritten, after",
            )
            summary["cortex_m4"] = {
                "instructions_per_inference": round(ins["mean"]),
                "instructions_min": round(ins["min"]),
                "instructions_max": round(ins["max"]),
                "resolution_instructions": ins["resolution"],
                "times_smlad_bound": round(ins["mean"] / summary["macs"]["smlad_bound_instructions"], 2),
                "method": METHOD,
                "images": count,
                "qemu_seconds": round(result.seconds, 2),
            }
            program_label = "firmware.elf in QEMU mps2-an386"
        else:
            result = firmware.run_host(tmp, count, program.output.size)
            files += ["firmware_host"]
            summary["flash"] = {"host_code_bytes": firmware.host_code_bytes(tmp, opts.name)}
            summary["memory"].update(
                stack_bytes=None, static_ram_bytes=None, stack_method="not measured on the host"
            )
            summary["cortex_m4"] = {"not_measured": "--target host"}
            program_label = "firmware_host (this computer)"
        (tmp / firmware.RUN_OUTPUT).write_text(result.text, encoding="utf-8")
        files.append(firmware.RUN_OUTPUT)
        log(f"comparing {count} rows with the TFLM interpreter")
        verification = {"reference": "tflite-micro Python interpreter (TFLM reference kernels)"}
        verification["target"] = compare(result.rows, tflm_rows(raw, inputs), labels, program_label)
        if opts.verify:
            all_inputs = quantize_images(ds.x_test, program.input.scale, program.input.zero_point)
            log(f"verifying the host build on all {len(all_inputs):,} test images against TFLM")
            verification["host_all"] = verify_host(
                tmp, opts.name, raw, all_inputs, labels, program.output.size
            )
        summary["verification"] = verification
        summary["files"] = sorted([*files, "compile.json"])
        summary["tools"] = firmware.which_versions()
        (tmp / "compile.json").write_text(json.dumps(summary, indent=2, default=atomic._jsonable) + "\n")
        _place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def host_model(model: str | os.PathLike[str] | bytes, directory: Path, name: str = "mnist_model") -> tuple:
    """Compile a model (a path or flatbuffer bytes) into ``directory`` and build it for this computer.

    Returns:
        ``(program, lib)``: the compiled Program and the ctypes handle of ``lib<name>.so``
        (call it with ``run_library``). Needs gcc.
    """
    from mnist_tflite.micro.aot.compiler import load_program

    if isinstance(model, bytes):
        raw, label = model, "model"
        program = compile_model(raw, label)
    else:
        raw, program = load_program(model)
        label = Path(model).name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.h").write_text(codegen.header(program, name), encoding="utf-8")
    (directory / f"{name}.c").write_text(codegen.source(program, name, label, ""), encoding="utf-8")
    for fname, text in codegen.kernel_sources().items():
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


def verify_host(directory: Path, name: str, raw: bytes, inputs: np.ndarray, labels: np.ndarray, outputs: int):
    with tempfile.TemporaryDirectory(prefix="mnist-tflite-host-") as lib_dir:
        t = time.perf_counter()
        rows = run_library(host_library(directory, name, Path(lib_dir)), name, inputs, outputs)
        seconds = time.perf_counter() - t
    t = time.perf_counter()
    result = compare(rows, tflm_rows(raw, inputs), labels, f"lib{name}.so (host build)")
    result.update(host_seconds=round(seconds, 2), tflm_seconds=round(time.perf_counter() - t, 2))
    return result


def differing_rows(summary: Mapping[str, Any]) -> int:
    v = summary.get("verification") or {}
    return sum(int(part.get("rows_differing", 0)) for part in v.values() if isinstance(part, dict))


def _kb(n: int | None) -> str:
    return "?" if n is None else f"{n:,} bytes ({n / 1024:.1f} KB)"


def summary_text(s: Mapping[str, Any], out: object = None) -> str:
    """What ``compile`` prints (without --json)."""
    mem, flash, m4 = s["memory"], s.get("flash", {}), s.get("cortex_m4", {})
    lines = [f"{s['name']}: {s['model']} -> {out or ''} (target {s['target']}, output {s['output']['kind']})"]
    for layer in s["layers"]:
        lines.append(
            f"  {layer['kernel']:<12} {layer['ops']:<20} {'x'.join(map(str, layer['in']))} -> "
            f"{'x'.join(map(str, layer['out']))}  {layer['macs_computed']:,} MACs"
        )
    if s["folded"]:
        lines.append(
            "  folded at compile time: " + ", ".join(f"{f['op']} (node {f['node']})" for f in s["folded"])
        )
    if "code_bytes" in flash:
        lines.append(
            f"  code      {_kb(flash['code_bytes'])} runtime and kernels; "
            f"model data {_kb(flash['model_data_bytes'])}"
        )
    elif flash.get("host_code_bytes") is not None:
        lines.append(
            f"  code      {_kb(flash['host_code_bytes'])} on this computer (Cortex-M4: {NOT_MEASURED})"
        )
    lines += wasm.summary_lines(s)
    ram = mem.get("static_ram_bytes")
    lines.append(
        f"  RAM       activation buffer {_kb(mem['arena_bytes'])}"
        + (f" + stack {mem['stack_bytes']:,} bytes = {_kb(ram)} static RAM" if ram is not None else "")
    )
    if "instructions_per_inference" in m4:
        lines.append(
            f"  Cortex-M4 {m4['instructions_per_inference']:,} instructions per inference "
            f"({m4['times_smlad_bound']}x the SMLAD bound of {s['macs']['smlad_bound_instructions']:,})"
        )
    else:
        lines.append(f"  Cortex-M4 {m4.get('not_measured', NOT_MEASURED)}")
    for part in (s.get("verification") or {}).values():
        if not isinstance(part, dict):
            continue
        acc = f", accuracy {100 * part['accuracy']:.2f} %" if part.get("accuracy") is not None else ""
        if "rows_identical" in part:
            lines.append(
                f"  vs TFLM   {part['rows_identical']:,}/{part['images']:,} rows identical "
                f"({part['program']}){acc}"
            )
        else:
            lines.append(f"  vs TFLM   {part['vs_tflm']} ({part['program']}){acc}")
    return "\n".join(lines)


def _m4_figures(path: str | os.PathLike[str], images: np.ndarray) -> dict[str, int]:
    """Compile one model for the Cortex-M4, run it on ``images`` in QEMU, and measure it."""
    from mnist_tflite.micro.aot.compiler import load_program

    _, program = load_program(path)
    with tempfile.TemporaryDirectory(prefix="mnist-tflite-compile-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = quantize_images(images, program.input.scale, program.input.zero_point)
        opts = CompileOptions(Path(path), tmp / "out", target="cortex-m4", images=len(inputs))
        _write_sources(tmp, program, opts, "", inputs)
        firmware.build(tmp, opts.name, "cortex-m4")
        sizes = firmware.map_sizes((tmp / "firmware.map").read_text(encoding="utf-8"), opts.name)
        result = firmware.run_firmware(tmp, len(inputs), program.output.size)
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


def _compile_wasm(opts: CompileOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """``compile_to_dir`` for ``--target wasm``: both modules built (wasm.py), run in Node, checked."""
    from mnist_tflite.core import data as data_mod
    from mnist_tflite.core import rundir
    from mnist_tflite.core.sidecar import sha256_bytes
    from mnist_tflite.micro.aot.compiler import load_program

    raw, program = load_program(opts.model)
    summary = describe(program, opts, sha256_bytes(raw))
    if program.input.size != 28 * 28:
        raise fail(opts.model, f"the input has {program.input.size} values; the test images need 784 (28x28)")
    ds = data_mod.load(opts.data, log=log)
    count = len(ds.x_test) if opts.verify else min(opts.images, len(ds.x_test))
    inputs = quantize_images(ds.x_test[:count], program.input.scale, program.input.zero_point)
    out = Path(opts.out)
    with rundir.transaction(out) as tmp:
        check_out(out, opts.force)  # again, under the lock
        log("building the plain and SIMD128 WebAssembly modules with clang")
        summary.update(wasm.build_dir(tmp, program, opts.name, Path(opts.model).name, summary["sha256"]))
        summary["memory"].update(stack_bytes=None, static_ram_bytes=None, stack_method="not measured in wasm")
        summary["cortex_m4"] = {"not_measured": "--target wasm"}
        log(f"running both modules in Node on {count:,} test images and comparing with TFLM")
        runs = wasm.node_runs(tmp, opts.name, inputs, program.output.size)
        reference = tflm_rows(raw, inputs) if any(r[2] is not None for r in runs.values()) else None
        verification: dict[str, Any] = {
            "reference": "tflite-micro Python interpreter (TFLM reference kernels)"
        }
        for kind, (what, rows, seconds) in runs.items():
            if seconds is None:
                verification[kind] = {"program": what, "vs_tflm": rows}
                continue
            verification[kind] = compare(rows, reference, np.asarray(ds.y_test), what)
            verification[kind]["node_seconds"] = round(seconds, 3)
        summary["verification"] = verification
        summary["files"] = sorted([*summary["files"], "compile.json"])
        (tmp / "compile.json").write_text(json.dumps(summary, indent=2, default=atomic._jsonable) + "\n")
    return summary
