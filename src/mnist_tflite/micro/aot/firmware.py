"""Build the generated C into test programs and run them: Cortex-M firmware in QEMU, or the host.

The firmware is ours end to end: ``startup_cortex_m.c`` (vector table, reset handler,
semihosting console, file input and exit, SysTick, stack painting), a linker script written
from the target table (targets.py), and ``main.c``, which runs the test images through
``<name>_invoke`` and prints ``row <index> <o0> ... <oN>`` per image, then ``done``. The
images are embedded in the firmware, or, where the board cannot hold them (the micro:bit's
256 KB of flash), read one at a time from ``test_images.bin`` on the host over semihosting.
It links no C library.

Instructions are counted with QEMU's ``-icount shift=0``: the virtual clock advances exactly
1 ns per executed instruction, and SysTick, clocked at the board's processor clock (25 MHz on
the MPS2 boards: one tick per 40 instructions), ticks once every 1e9 / clock instructions. The
firmware reads SysTick just before and after each invoke, so each inference is counted to
within one tick; it first times a loop of a known 200,000 instructions, and a clock that does
not match the target table is an error, not a figure.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import procs
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.micro.aot import targets
from mnist_tflite.micro.aot.targets import Target

QEMU_ARGS = ("-nographic", "-monitor", "none", "-semihosting-config", "enable=on,target=native")
ICOUNT_SHIFT = 0
CALIBRATION_LOOPS = 100_000  # board_spin(n): 2 n instructions
INSTALL_HINT = "install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
APT_COMMAND = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
ARM_GCC, QEMU, HOST_GCC = "arm-none-eabi-gcc", "qemu-system-arm", "gcc"

ARM_COMMON_CFLAGS = (
    "-O2", "-std=c11", "-Wall", "-Wextra",
    "-ffunction-sections", "-fdata-sections", "-fno-tree-loop-distribute-patterns",
)  # fmt: skip
# (no libc is linked: gcc must not turn loops, such as startup's memset, into libc calls)
HOST_CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra")
BOARD_FILES = ("board.h", "startup_cortex_m.c", "board_host.c")  # every ARM target: `make host` works
IMAGES_BIN = "test_images.bin"
RUN_OUTPUT = "run.txt"  # what the test program printed, kept beside it
# file names (without suffix) compile writes besides <name>.c/.h: --name may not be one of them
SUPPORT_STEMS = frozenset(
    Path(f).stem
    for f in (
        *BOARD_FILES,
        *(t.linker_file for t in targets.TARGETS if t.is_arm),
        "int8_kernels.c",
        "main.c",
        "test_images.S",
    )
)


def arm_cflags(t: Target) -> tuple[str, ...]:
    return (*t.cpu_flags, *ARM_COMMON_CFLAGS)


def arm_ldflags(t: Target) -> tuple[str, ...]:
    return ("-nostdlib", "-nostartfiles", "-T", t.linker_file, "-Wl,--gc-sections", "-Wl,-Map=firmware.map")


def qemu_command(t: Target) -> tuple[str, ...]:
    icount = ("-icount", f"shift={ICOUNT_SHIFT}")
    return (QEMU, "-M", str(t.board), *QEMU_ARGS, *icount, "-kernel", "firmware.elf")


def board_sources(target: str) -> dict[str, str]:
    """The harness's board files for ``target`` (start-up code and linker script, or the host's)."""
    t = targets.get(target)
    root = resources.files("mnist_tflite.micro.aot") / "board"
    names = ("board.h", t.startup, "board_host.c") if t.is_arm else ("board.h", "board_host.c")  # make host
    out = {name: (root / name).read_text(encoding="utf-8") for name in names}
    if t.is_arm:
        out[t.linker_file] = targets.linker_script(t)
    return out


def toolchain_problem(target: str) -> str | None:
    """One line naming the missing tool and the apt command, or None if all are there."""
    arm = targets.get(target).is_arm
    need = (ARM_GCC, QEMU) if arm else (HOST_GCC,)
    missing = [t for t in need if shutil.which(t) is None]
    if not missing:
        return None
    if arm:
        return (
            f"--target {target} needs {' and '.join(missing)}, not found on PATH; "
            f"install with: {APT_COMMAND} (or use --target host)"
        )
    return (
        f"--target host needs {' and '.join(missing)} (a C compiler), not found on PATH; "
        "install with: apt-get install gcc"
    )


# ---- sources ---------------------------------------------------------------------------------


def _harness_sources(t: Target) -> tuple[str, ...]:
    """The harness's C/asm files for ``t`` (without the model's and the kernels')."""
    board = t.startup if t.is_arm else "board_host.c"
    return (board, "main.c") + (("test_images.S",) if t.images == "embedded" else ())


def arm_steps(name: str, target: str) -> list[tuple[str, ...]]:
    """The commands that build firmware.elf (also written into the Makefile)."""
    t = targets.get(target)
    objs = []
    steps = []
    for src in (f"{name}.c", "int8_kernels.c", *_harness_sources(t)):
        obj = f"build/{Path(src).stem}.o"
        objs.append(obj)
        steps.append((ARM_GCC, *arm_cflags(t), "-c", src, "-o", obj))
    steps.append((ARM_GCC, *arm_cflags(t), *arm_ldflags(t), "-o", "firmware.elf", *objs, "-lgcc"))
    return steps


def host_steps(name: str, images: str = "embedded") -> list[tuple[str, ...]]:
    srcs = (f"{name}.c", "int8_kernels.c", "board_host.c", "main.c")
    srcs += ("test_images.S",) if images == "embedded" else ()
    return [(HOST_GCC, *HOST_CFLAGS, "-o", "firmware_host", *srcs)]


def host_library_step(name: str, out: str) -> tuple[str, ...]:
    return (HOST_GCC, *HOST_CFLAGS, "-fPIC", "-shared", "-o", out, f"{name}.c", "int8_kernels.c")


def makefile(name: str, target: str, kernel_files: tuple[str, ...]) -> str:
    """The Makefile of a compiled model; ``kernel_files``: the kernel sources written beside it
    (with ``--ram-optimized``, ``int8_stream.h`` too), so an edit to any of them rebuilds."""

    def cmd(argv: tuple[str, ...]) -> str:
        return "\t" + " ".join(shlex.quote(a) for a in argv)

    t = targets.get(target)
    host = "\n".join(cmd(s) for s in host_steps(name, t.images))
    lib = cmd(host_library_step(name, f"lib{name}.so"))
    model_deps = " ".join((f"{name}.c", f"{name}.h", *kernel_files))
    text = [
        f"# Generated by `mnist-tflite compile` for {name} ({target}).",
        "#   make            the test program for the target",
        "#   make run        run it (prints one `row` line per test image, then `done`)",
        "#   make host       the same test program for this computer (system gcc)",
        f"#   make lib{name}.so   the model alone as a shared library (for ctypes)",
        "",
    ]
    if t.is_arm:
        arm = "\n".join(cmd(s) for s in arm_steps(name, target))
        deps = " ".join((model_deps, "board.h", *_harness_sources(t), t.linker_file))
        deps += f" {IMAGES_BIN}" if t.images == "embedded" else ""
        text += [
            "all: firmware.elf",
            "",
            f"firmware.elf: {deps}",
            "\tmkdir -p build",
            arm,
            "",
            f"run: firmware.elf{' ' + IMAGES_BIN if t.images == 'semihosting' else ''}",
            f"\t{' '.join(qemu_command(t))} 2>&1",  # the semihosting console is QEMU's stderr
            "",
        ]
    else:
        text += ["all: firmware_host", "", "run: firmware_host", "\t./firmware_host", ""]
    embedded = ("test_images.S",) if t.images == "embedded" else ()
    host_deps = " ".join((model_deps, "board_host.c board.h main.c", *embedded, IMAGES_BIN))
    text += [
        "host: firmware_host",
        "",
        f"firmware_host: {host_deps}",
        host,
        "",
        f"lib{name}.so: {model_deps}",
        lib,
        "",
        "clean:",
        f"\trm -rf build firmware_host lib{name}.so" + (" firmware.elf firmware.map" if t.is_arm else ""),
        "",
        ".PHONY: all run host clean",
        "",
    ]
    return "\n".join(text)


# ---- building and running --------------------------------------------------------------------


def _run(
    argv: tuple[str, ...] | list[str], cwd: Path, what: str, timeout: float = 300, merge: bool = False
) -> str:
    """Run a tool; its output (stdout, plus stderr with ``merge``), or a one-line error."""
    try:
        res = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            text=True,
            timeout=timeout,
            preexec_fn=functools.partial(procs.die_with_parent, os.getpid()),  # even if we are SIGKILLed
        )
    except subprocess.TimeoutExpired:
        raise MnistTfliteError(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise MnistTfliteError(f"{what}: cannot run {argv[0]} ({exc.strerror})") from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        detail = " / ".join(err[-3:]) if err else f"exit status {res.returncode}"
        raise MnistTfliteError(f"{what} failed: {detail}")
    return res.stdout


_OVERFLOW = re.compile(r"region `(\w+)' overflowed by (\d+) bytes")


def build(directory: Path, name: str, target: str) -> None:
    """Build the test program in ``directory`` (firmware.elf or firmware_host).

    A firmware that does not fit the board is one line naming the region, what it needs and
    what the board has (from the linker's "region overflowed" message).
    """
    t = targets.get(target)
    if not t.is_arm:
        for step in host_steps(name, t.images):
            _run(step, directory, "building the host test program")
        return
    (directory / "build").mkdir(exist_ok=True)
    for step in arm_steps(name, target):
        try:
            _run(step, directory, f"building the {t.core} firmware")
        except MnistTfliteError as exc:
            raise _overflow(exc, t) from None
    shutil.rmtree(directory / "build", ignore_errors=True)


def _overflow(exc: MnistTfliteError, t: Target) -> MnistTfliteError:
    found = _OVERFLOW.search(str(exc))
    if not found:
        return exc
    region = {"FLASH": t.flash, "RAM": t.ram, "IMAGES": t.image_region}.get(found[1])
    if region is None:
        return exc
    have = region.length
    need = have + int(found[2])
    what = "flash" if found[1] == "FLASH" else found[1].lower()
    return MnistTfliteError(
        f"the model does not fit --target {t.name}: the firmware needs {need:,} bytes of {what}, "
        f"the {t.board} board has {have:,}"
    )


def build_host_library(directory: Path, name: str, out: Path) -> Path:
    _run(host_library_step(name, str(out)), directory, "building the host library")
    return out


@dataclass
class RunResult:
    rows: np.ndarray  # (N, outputs) int8, in test-image order
    ticks_total: int
    ticks_min: int
    ticks_max: int
    stack_bytes: int
    seconds: float
    text: str = ""  # what the program printed
    calibration: tuple[int, int] | None = None  # (ticks, instructions) of the known loop
    instructions_per_tick: float = 0.0

    def instructions(self) -> dict[str, float]:
        n = max(len(self.rows), 1)
        k = self.instructions_per_tick
        return {
            "mean": self.ticks_total * k / n,
            "min": self.ticks_min * k,
            "max": self.ticks_max * k,
            "resolution": k,
        }


def parse_output(text: str, count: int, outputs: int, what: str) -> RunResult:
    """Parse the test program's lines; anything missing or malformed is an error."""
    rows = np.zeros((count, outputs), dtype=np.int8)
    seen = 0
    ticks = stack = calib = None
    done = False
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "row" and len(parts) == 2 + outputs:
            i = int(parts[1])
            if not 0 <= i < count:
                raise MnistTfliteError(f"{what}: row index {i} out of range")
            rows[i] = [int(v) for v in parts[2:]]
            seen += 1
        elif parts[0] == "ticks" and len(parts) == 4:
            ticks = tuple(int(v) for v in parts[1:])
        elif parts[0] == "calib" and len(parts) == 3:
            calib = (int(parts[1]), int(parts[2]))
        elif parts[0] == "stack" and len(parts) == 2:
            stack = int(parts[1])
        elif parts[0] == "done":
            done = True
        elif parts[0] == "fault":
            raise MnistTfliteError(f"{what}: the program faulted after {seen} rows ({line.strip()})")
    if not done or seen != count or ticks is None or stack is None:
        tail = " / ".join(text.strip().splitlines()[-2:])
        raise MnistTfliteError(f"{what}: incomplete output ({seen} of {count} rows; last lines: {tail!r})")
    return RunResult(rows, ticks[0], ticks[1], ticks[2], stack, 0.0, calibration=calib)


def check_clock(t: Target, calibration: tuple[int, int] | None) -> None:
    """The firmware's timed loop must take as many ticks as the table's SysTick clock says."""
    if calibration is None:
        raise MnistTfliteError(f"firmware in QEMU {t.board}: no clock calibration line")
    ticks, instructions = calibration
    expected = instructions / t.instructions_per_tick
    if not ticks or abs(ticks - expected) > 0.01 * expected:
        raise MnistTfliteError(
            f"firmware in QEMU {t.board}: {instructions:,} instructions took {ticks:,} SysTick ticks, "
            f"expected {expected:,.0f} ({t.systick_hz:,} Hz); the instruction counts would be wrong"
        )


def run_firmware(directory: Path, count: int, outputs: int, target: str = "cortex-m4") -> RunResult:
    """Run firmware.elf in QEMU (icount mode) and parse what it prints."""
    import time

    t = targets.get(target)
    start = time.perf_counter()
    # QEMU writes semihosting console output to its stderr; the micro:bit's M0 runs ~2x longer
    what = f"running the firmware in {QEMU}"
    text = _run(qemu_command(t), directory, what, timeout=120 + 0.5 * count, merge=True)
    result = parse_output(text, count, outputs, f"firmware in QEMU {t.board}")
    check_clock(t, result.calibration)
    result.instructions_per_tick = t.instructions_per_tick
    result.text = text
    result.seconds = time.perf_counter() - start
    return result


def run_host(directory: Path, count: int, outputs: int) -> RunResult:
    import time

    t = time.perf_counter()
    text = _run(["./firmware_host"], directory, "running the host test program")  # cwd: a relative --out too
    result = parse_output(text, count, outputs, "host test program")
    result.text = text
    result.seconds = time.perf_counter() - t
    return result


# ---- sizes from the linker map ---------------------------------------------------------------

_MAP_ENTRY = re.compile(r"^ (\.[^\s]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$", re.MULTILINE)


def map_sizes(map_text: str, model_object: str) -> dict[str, Any]:
    """Bytes of the linked firmware by origin, from the GNU ld map (after garbage collection).

    ``code``: instructions of the model's file and the kernels (what runs an inference);
    ``model_data``: their constants (weights, biases, requantization tables, layer
    descriptors); ``libgcc``: compiler helpers linked (none expected); ``harness``: start-up,
    test loop, console; ``test_images``: the embedded inputs.
    """
    start = map_text.find("Linker script and memory map")
    text = map_text[start:] if start >= 0 else map_text
    text = re.sub(r"^ (\.[^\s]+)\n\s+0x", r" \1 0x", text, flags=re.MULTILINE)  # long names wrap
    out = {"code": 0, "model_data": 0, "ram_data": 0, "libgcc": 0, "harness": 0, "test_images": 0}
    functions: dict[str, int] = {}
    for section, _addr, size_hex, origin in _MAP_ENTRY.findall(text):
        size = int(size_hex, 16)
        if size == 0 or section.startswith((".debug", ".comment", ".ARM.attributes")):
            continue
        obj = origin.strip().split("/")[-1]
        ours = obj in (f"{model_object}.o", "int8_kernels.o")
        if section.startswith(".test_images"):
            out["test_images"] += size
        elif "libgcc" in origin:
            out["libgcc"] += size
        elif ours and section.startswith(".text"):
            out["code"] += size
            functions[section.removeprefix(".text.") or obj] = size
        elif ours and section.startswith(".rodata"):
            out["model_data"] += size
        elif ours and section.startswith((".bss", ".data")):
            out["ram_data"] += size
        elif not ours and section.startswith((".text", ".rodata", ".vectors", ".data")):
            out["harness"] += size
    out["functions"] = dict(sorted(functions.items(), key=lambda kv: -kv[1]))
    return out


def host_code_bytes(directory: Path, name: str) -> int | None:
    """Text bytes of the model and kernels compiled for this computer (size of the .o files)."""
    try:
        total = 0
        for src in (f"{name}.c", "int8_kernels.c"):
            obj = directory / f".{Path(src).stem}.host.o"
            _run((HOST_GCC, *HOST_CFLAGS, "-c", src, "-o", obj.name), directory, "measuring host code")
            out = _run(("size", "-A", obj.name), directory, "size")
            total += sum(int(m) for m in re.findall(r"^\.text\S*\s+(\d+)", out, flags=re.MULTILINE))
            obj.unlink()
        return total
    except (MnistTfliteError, OSError):
        return None


def which_versions() -> dict[str, str | None]:
    """First line of ``--version`` of the tools used (for compile.json)."""
    out: dict[str, str | None] = {}
    for tool in (ARM_GCC, QEMU, HOST_GCC):
        path = shutil.which(tool)
        if path is None:
            out[tool] = None
            continue
        try:
            res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
            out[tool] = (res.stdout.strip().splitlines() or [""])[0]
        except (OSError, subprocess.TimeoutExpired):
            out[tool] = None
    return out
