"""``mnist-tflite compile``: an int8 ``.tflite`` as dependency-free C, built, run and checked.

``compile_model`` (compiler.py) turns the flatbuffer into layers and a memory plan,
codegen.py writes ``<name>.c``/``<name>.h``, firmware.py builds the test program (Cortex-M
firmware for a QEMU board of targets.py, or a host program) and runs it on test images,
verify.py compares its rows with the TFLM interpreter. Here the pieces are put together:
the output folder is built aside and swapped in whole (``core.rundir``), and
``compile.json`` records the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic, rundir
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.micro.aot import alltargets, codegen, firmware, harness, targets, wasm
from mnist_tflite.micro.aot.compiler import Program, load_program
from mnist_tflite.micro.aot.verify import compare, tflm_rows, verify_host
from mnist_tflite.micro.tflm.c_source import identifier_problem

FORMAT = "mnist-tflite-compile/1"
MARKER = "compile.json"
TARGETS = targets.COMPILE_NAMES
MAX_IMAGES = 10_000
NOT_MEASURED = f"not measured: {firmware.INSTALL_HINT}"


def method(t: targets.Target) -> str:
    """How the instructions of ``t`` were counted (compile.json and the reports say it)."""
    return (
        f"QEMU {t.board} with -icount shift=0 (1 ns of virtual time per instruction); the firmware "
        f"reads SysTick ({t.systick_hz / 1e6:g} MHz: one tick per {t.instructions_per_tick:g} instructions) "
        "before and after each invoke"
    )


METHOD = method(targets.get("cortex-m4"))
TFLM_REFERENCE = alltargets.TFLM_REFERENCE  # (its home is alltargets.py)


@dataclass(frozen=True)
class CompileOptions:
    """Options of ``compile``."""

    model: Path
    out: Path
    target: str = "cortex-m4"
    images: int = 100
    name: str = "mnist_model"
    verify: bool = False
    force: bool = False
    data: str = "embedded"
    allow_modified: bool = False
    ram_optimized: bool = False  # rows streamed through line buffers (stream.py)


def check_options(opts: CompileOptions) -> None:
    """Everything that can be refused before reading the model: one line each."""
    problem = identifier_problem(opts.name)
    if problem:
        raise MnistTfliteError(f"--name {opts.name!r} {problem}")
    if opts.name in firmware.SUPPORT_STEMS:
        raise MnistTfliteError(
            f"--name {opts.name!r} would overwrite {opts.name}.c, a support file of compile; choose another"
        )
    if opts.target not in TARGETS and opts.target != alltargets.ALL:
        raise MnistTfliteError(
            f"unknown --target {opts.target!r}; the targets: {', '.join(TARGETS)}, {alltargets.ALL}"
        )
    if not 1 <= opts.images <= MAX_IMAGES:
        raise MnistTfliteError(f"--images must be 1..{MAX_IMAGES}, received: {opts.images}")
    rundir.check_replaceable(Path(opts.out), opts.force, MARKER, "compile")
    if opts.target == wasm.TARGET:
        problem = wasm.toolchain_problem()
    else:
        every = targets.ARM_NAMES if opts.target == alltargets.ALL else (opts.target,)
        problem = next(filter(None, map(firmware.toolchain_problem, every)), None)
    if problem:
        raise MnistTfliteError(problem)


def check_fits(program: Program, t: targets.Target) -> None:
    """A model whose weights or activation buffer alone exceed the board: one line, before any file.

    (Code, harness and stack are checked by the linker, whose overflow firmware.build reports.)
    """
    if t.flash is None or t.ram is None:
        return
    weights = program.weight_bytes(t.kernel_isa)
    ram = program.plan.arena_bytes + t.stack_bytes
    if weights > t.flash.length:
        raise MnistTfliteError(
            f"the model does not fit --target {t.name}: its weights need {weights:,} bytes of flash, "
            f"the {t.board} board has {t.flash.length:,}"
        )
    if ram > t.ram.length:
        raise MnistTfliteError(
            f"the model does not fit --target {t.name}: its activation buffer and stack need {ram:,} bytes "
            f"of RAM, the {t.board} board has {t.ram.length:,}"
        )


def quantize_images(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8 (N, 28, 28) -> the int8 input tensors, as LiteRT's and the project's runners do."""
    from mnist_tflite.core.data import normalize
    from mnist_tflite.edge.infer import quantize

    return quantize(normalize(images).reshape(len(images), -1), np.int8, scale, zero_point)


def _layers(program: Program) -> list[dict[str, Any]]:
    return [
        {
            "ops": layer.label,
            "nodes": list(layer.nodes),
            "kernel": layer.kernel,
            "in": list(layer.in_shape),
            "out": list(layer.out_shape),
            "macs_model": layer.macs_model,
            "macs_computed": layer.macs_computed,
            "scratch_bytes": layer.scratch_bytes,
        }
        for layer in program.layers
    ]


def _plan(program: Program) -> list[dict[str, Any]]:
    rows = [{"what": what, "offset": off, "bytes": n} for what, off, n in program.regions()]
    return sorted(rows, key=lambda r: r["offset"])


def describe(program: Program, opts: CompileOptions, sha256: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": str(opts.model),
        "sha256": sha256,
        "model_bytes": program.model_bytes,
        "name": opts.name,
        "target": opts.target,
        "ram_optimized": program.stream is not None,
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


def write_sources(
    directory: Path, program: Program, opts: CompileOptions, sha256: str, inputs: np.ndarray
) -> list[str]:
    n = opts.name
    images = targets.get(opts.target).images
    kernels = codegen.kernel_sources(program.stream is not None)
    files = {
        f"{n}.h": codegen.header(program, n),
        f"{n}.c": codegen.source(program, n, Path(opts.model).name, sha256),
        **kernels,
        **firmware.board_sources(opts.target),
        "main.c": harness.harness_main(n, len(inputs), images),
        **({"test_images.S": harness.images_asm()} if images == "embedded" else {}),
        "Makefile": firmware.makefile(n, opts.target, tuple(kernels)),
    }
    for fname, text in files.items():
        _write(directory / fname, text)
    _write(directory / firmware.IMAGES_BIN, np.ascontiguousarray(inputs, dtype=np.int8).tobytes())
    return [*files, firmware.IMAGES_BIN]


def _write(path: Path, content: str | bytes) -> None:
    """Write a file of the output; an error (a full disk) names the file."""
    try:
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _run_cortex_m(
    directory: Path, opts: CompileOptions, program: Program, summary: dict[str, Any], count: int
):
    """Run firmware.elf in the target's QEMU board; sizes, stack and instruction counts into ``summary``."""
    t = targets.get(opts.target)
    result, sizes = run_measured(directory, t, program, count, opts.name)
    _add_firmware_figures(summary, t, result, sizes, count)
    return result, f"firmware.elf in QEMU {t.board}", ["firmware.elf", "firmware.map"]


def run_measured(
    directory: Path, t: targets.Target, program: Program, count: int, name: str
) -> tuple[firmware.RunResult, dict[str, Any]]:
    """Run the built firmware.elf of ``t`` in QEMU; its result and its sizes from the linker map."""
    sizes = firmware.map_sizes((directory / "firmware.map").read_text(encoding="utf-8"), name)
    return firmware.run_firmware(directory, count, program.output.size, t.name), sizes


def _add_firmware_figures(
    summary: dict[str, Any], t: targets.Target, result: firmware.RunResult, sizes: dict[str, Any], count: int
) -> None:
    """compile.json's flash, memory and ``<target>`` sections for a firmware run in QEMU."""
    ins = result.instructions()
    bound = t.bound(summary["macs"]["model"])
    summary["flash"] = {
        "code_bytes": sizes["code"] + sizes["libgcc"],
        "model_data_bytes": sizes["model_data"],
        "libgcc_bytes": sizes["libgcc"],
        "harness_bytes": sizes["harness"],
        "test_images_bytes": sizes["test_images"],
        "functions": sizes["functions"],
        "compiler": " ".join((firmware.ARM_GCC, *firmware.arm_cflags(t))),
    }
    summary["memory"].update(
        stack_bytes=result.stack_bytes,
        static_ram_bytes=sizes["ram_data"] + result.stack_bytes,
        static_data_bytes=sizes["ram_data"],
        stack_method="painted with a pattern before each invoke; the deepest word overwritten, after",
    )
    figures = {
        "core": t.core,
        "board": t.board,
        "kernels": t.kernel_isa,
        "test_images": t.images,
        "instructions_per_inference": round(ins["mean"]),
        "instructions_min": round(ins["min"]),
        "instructions_max": round(ins["max"]),
        "resolution_instructions": ins["resolution"],
        "bound_instructions": bound,
        "bound_rule": t.bound_rule,
        "times_bound": round(ins["mean"] / bound, 2),
        "method": method(t),
        "images": count,
        "qemu_seconds": round(result.seconds, 2),
    }
    if t.name == "cortex-m4":  # the name `run` and earlier compile.json files use
        figures["times_smlad_bound"] = figures["times_bound"]
    summary[t.key] = figures


def _run_host(directory: Path, opts: CompileOptions, program: Program, summary: dict[str, Any], count: int):
    """Run firmware_host on this computer; its code size into ``summary``."""
    result = firmware.run_host(directory, count, program.output.size)
    summary["flash"] = {"host_code_bytes": firmware.host_code_bytes(directory, opts.name)}
    summary["memory"].update(stack_bytes=None, static_ram_bytes=None, stack_method="not measured on the host")
    summary["cortex_m4"] = {"not_measured": "--target host"}
    return result, "firmware_host (this computer)", ["firmware_host"]


def _verification(
    directory: Path,
    opts: CompileOptions,
    program: Program,
    raw: bytes,
    rows: np.ndarray,
    inputs: np.ndarray,
    ds: Any,
    log: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """The target's rows against TFLM and, with --verify, a host build on every test image."""
    labels = np.asarray(ds.y_test)
    log(f"comparing {len(rows)} rows with the TFLM interpreter")
    verification = {"reference": "tflite-micro Python interpreter (TFLM reference kernels)"}
    reference = tflm_rows(raw, inputs)
    if opts.verify and isinstance(reference, str):
        raise fail(opts.model, f"--verify could not run TFLM: {reference}")
    verification["target"] = compare(rows, reference, labels, label)
    if opts.verify:
        all_inputs = quantize_images(ds.x_test, program.input.scale, program.input.zero_point)
        log(f"verifying the host build on all {len(all_inputs):,} test images against TFLM")
        host = verify_host(directory, opts.name, raw, all_inputs, labels, program.output.size)
        if "vs_tflm" in host:
            raise fail(opts.model, f"--verify could not run TFLM: {host['vs_tflm']}")
        verification["host_all"] = host
    return verification


def _build_into(directory: Path, opts: CompileOptions, program: Program, raw: bytes, ds: Any,
                log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Everything ``--out`` holds, written into ``directory``; returns compile.json's content."""
    from mnist_tflite.core.sidecar import sha256_bytes

    sha256 = sha256_bytes(raw)
    summary = describe(program, opts, sha256)
    count = min(opts.images, len(ds.x_test))
    inputs = quantize_images(ds.x_test[:count], program.input.scale, program.input.zero_point)
    files = write_sources(directory, program, opts, sha256, inputs)
    log(f"building the {opts.target} test program ({count} test images)")
    firmware.build(directory, opts.name, opts.target)
    t = targets.get(opts.target)
    if t.is_arm:
        log(f"running firmware.elf in {firmware.QEMU} ({t.board}, -icount shift=0)")
    run = _run_cortex_m if t.is_arm else _run_host
    result, label, built = run(directory, opts, program, summary, count)
    _write(directory / firmware.RUN_OUTPUT, result.text)
    summary["verification"] = _verification(
        directory, opts, program, raw, result.rows, inputs, ds, log, label
    )
    summary["files"] = sorted([*files, *built, firmware.RUN_OUTPUT, MARKER])
    summary["tools"] = firmware.which_versions()
    _write(directory / MARKER, json.dumps(summary, indent=2, default=atomic._jsonable) + "\n")
    return summary


def compile_to_dir(opts: CompileOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile ``opts.model`` into ``opts.out``; returns compile.json's content.

    Raises MnistTfliteError (one line, ``--out`` untouched) for a bad option, an existing
    ``--out`` (without ``force``, or not written by compile), a missing toolchain, a model
    that is not int8, has an op without a kernel, is corrupt or does not match its sidecar,
    a failed build, or a ``--verify`` that could not run TFLM. A kill at any moment leaves
    ``--out`` holding the previous output or the new one, whole. ``--target all``: every
    Cortex-M into ``--out/<target>/`` and the table in ``--out/compile.json`` (alltargets.py).

    Example:
        >>> compile_to_dir(CompileOptions(Path("runs/demo/int8.tflite"), Path("fw")))["cortex_m4"]
    """
    from mnist_tflite.core import data as data_mod

    check_options(opts)
    if opts.target == wasm.TARGET:
        return _compile_wasm(opts, log)
    every = opts.target == alltargets.ALL
    raw, program = load_program(
        opts.model, allow_modified=opts.allow_modified, ram_optimized=opts.ram_optimized
    )
    if not every:
        check_fits(program, targets.get(opts.target))
    if program.input.size != 28 * 28:
        raise fail(opts.model, f"the input has {program.input.size} values; the test images need 784 (28x28)")
    ds = data_mod.load(opts.data, log=log, test_only=True)
    out = Path(opts.out)

    def one(folder: Path, target_opts: CompileOptions) -> dict[str, Any]:
        check_fits(program, targets.get(target_opts.target))
        return _build_into(folder, target_opts, program, raw, ds, log)

    with rundir.transaction(out) as staging:
        rundir.check_replaceable(out, opts.force, MARKER, "compile")  # again, under the lock
        try:
            if every:
                summary = {"format": FORMAT, "ram_optimized": opts.ram_optimized,
                           **alltargets.compile_all(opts, staging, one, log)}  # fmt: skip
                _write(staging / MARKER, json.dumps(summary, indent=2, default=atomic._jsonable) + "\n")
            else:
                summary = _build_into(staging, opts, program, raw, ds, log)
        except OSError as exc:
            doing = f"cannot write {Path(exc.filename).name}" if exc.filename else "cannot write it"
            raise fail(out, f"{doing} ({exc.strerror or type(exc).__name__})") from None
    return summary


def _compile_wasm(opts: CompileOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """``compile_to_dir`` for ``--target wasm``: both modules built (wasm.py), run in Node, checked."""
    from mnist_tflite.core import data as data_mod
    from mnist_tflite.core.sidecar import sha256_bytes

    raw, program = load_program(
        opts.model, allow_modified=opts.allow_modified, ram_optimized=opts.ram_optimized
    )
    summary = describe(program, opts, sha256_bytes(raw))
    if program.input.size != 28 * 28:
        raise fail(opts.model, f"the input has {program.input.size} values; the test images need 784 (28x28)")
    ds = data_mod.load(opts.data, log=log, test_only=True)
    count = len(ds.x_test) if opts.verify else min(opts.images, len(ds.x_test))
    inputs = quantize_images(ds.x_test[:count], program.input.scale, program.input.zero_point)
    out = Path(opts.out)
    with rundir.transaction(out) as tmp:
        rundir.check_replaceable(out, opts.force, MARKER, "compile")  # again, under the lock
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
        _write(tmp / MARKER, json.dumps(summary, indent=2, default=atomic._jsonable) + "\n")
    return summary
