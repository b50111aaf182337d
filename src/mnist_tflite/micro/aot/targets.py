"""What ``compile --target`` can build for: one frozen entry per target, as data.

A Cortex-M target names its compiler flags, the QEMU board that runs it, the board's
memory (flash, RAM, and where the test images go), the start-up file, the kernels' instruction
set and the SysTick clock that counts its instructions. The linker script is written from the
memory regions here (``linker_script``), so adding a board is adding an entry.

The *bound* of a core is the fewest instructions the model's multiply-accumulates could take
with its best multiply instruction, counting nothing else (no loads, no requantization):
``ceil(macs / macs_per_instruction)``. M0: ``MULS`` then ``ADDS`` (2 instructions per MAC);
M3: ``MLA`` (1); M4 and M33: ``SMLAD`` (2 MACs); M55: ``VMLADAVA.S8`` (16 MACs).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

KB = 1024
MB = 1024 * KB


@dataclass(frozen=True)
class Region:
    """A block of the board's memory: where the linker may put something."""

    origin: int
    length: int


@dataclass(frozen=True)
class Target:
    """One thing ``compile --target`` builds for.

    ``board`` is None for the host (a program for this computer, built with gcc).
    ``images`` is "embedded" (an ``.incbin`` section in ``image_region``) or
    "semihosting" (read from ``test_images.bin`` on the host, one image at a time, when the
    board cannot hold the test set).
    """

    name: str
    core: str  # "Cortex-M4", for people
    cpu_flags: tuple[str, ...] = ()
    board: str | None = None  # qemu-system-arm -M <board>
    kernel_isa: str = "plain C"  # "plain C" | "Thumb-1" | "DSP" | "MVE": the kernels' path the flags select
    flash: Region | None = None
    ram: Region | None = None
    image_region: Region | None = None  # None: images over semihosting
    stack_bytes: int = 16 * KB  # reserved by the linker script
    systick_hz: int = 0  # SysTick's clock (processor clock) on the QEMU board
    macs_per_instruction: Fraction = Fraction(1)
    bound_rule: str = ""
    startup: str = "startup_cortex_m.c"

    @property
    def is_arm(self) -> bool:
        return self.board is not None

    @property
    def key(self) -> str:
        """The target's section in compile.json: ``cortex_m4``."""
        return self.name.replace("-", "_")

    @property
    def images(self) -> str:
        return "embedded" if self.image_region is not None else "semihosting"

    @property
    def linker_file(self) -> str:
        return f"{self.board.replace('-', '_')}.ld" if self.board else ""

    @property
    def instructions_per_tick(self) -> float:
        return 1e9 / self.systick_hz  # icount shift=0: 1 ns of virtual time per instruction

    def bound(self, macs: int) -> int:
        """Instructions the multiply-accumulates alone need on this core."""
        return int(-(-Fraction(macs) // self.macs_per_instruction))


# AN385 and AN386: code SSRAM at 0, data SSRAM at 0x20000000, PSRAM at 0x21000000
_MPS2 = dict(flash=Region(0x0000_0000, 4 * MB), ram=Region(0x2000_0000, 4 * MB),
             image_region=Region(0x2100_0000, 16 * MB))  # fmt: skip

TARGETS: tuple[Target, ...] = (
    Target(
        "cortex-m0", "Cortex-M0", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"), "microbit", "Thumb-1",
        flash=Region(0x0000_0000, 256 * KB), ram=Region(0x2000_0000, 16 * KB), image_region=None,
        stack_bytes=2 * KB, systick_hz=16_000_000, macs_per_instruction=Fraction(1, 2),
        bound_rule="MULS + ADDS per MAC",
    ),
    Target(
        "cortex-m3", "Cortex-M3", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", "plain C",
        **_MPS2, systick_hz=25_000_000, macs_per_instruction=Fraction(1), bound_rule="one MLA per MAC",
    ),
    Target(
        "cortex-m4", "Cortex-M4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"), "mps2-an386", "DSP",
        **_MPS2, systick_hz=25_000_000, macs_per_instruction=Fraction(2), bound_rule="SMLAD: 2 MACs",
    ),
    Target(
        "cortex-m33", "Cortex-M33", ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=soft"), "mps2-an505", "DSP",
        # secure aliases: the core boots secure (SSRAM1 at 0x10000000, SSRAM2 at 0x38000000)
        flash=Region(0x1000_0000, 4 * MB), ram=Region(0x3800_0000, 2 * MB),
        image_region=Region(0x8000_0000, 16 * MB),
        systick_hz=20_000_000, macs_per_instruction=Fraction(2), bound_rule="SMLAD: 2 MACs",
    ),
    Target(
        "cortex-m55", "Cortex-M55", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=softfp"), "mps3-an547",
        "MVE",
        # secure aliases of the ITCM, the DTCM and the DDR
        flash=Region(0x1000_0000, 512 * KB), ram=Region(0x3000_0000, 512 * KB),
        image_region=Region(0x7000_0000, 16 * MB), systick_hz=32_000_000,
        macs_per_instruction=Fraction(16), bound_rule="VMLADAVA.S8: 16 MACs",
    ),
    Target("host", "this computer"),
)  # fmt: skip

BY_NAME = {t.name: t for t in TARGETS}
NAMES = tuple(BY_NAME)
ARM_NAMES = tuple(t.name for t in TARGETS if t.is_arm)
WASM = "wasm"  # not a board: clang's wasm32 target, run in Node and browsers (wasm.py)
COMPILE_NAMES = (*NAMES, WASM)  # every --target of compile


def get(name: str) -> Target:
    """The target called ``name``; KeyError for an unknown one (callers check ``NAMES`` first)."""
    return BY_NAME[name]


# the sections every board shares: code and constants in flash, then data, bss and the stack
_SECTIONS = """  .text :
  {
    KEEP(*(.vectors))
    *(.text*)
    *(.rodata*)
    . = ALIGN(4);
  } > FLASH

  .data :
  {
    __data_start = .;
    *(.data*)
    . = ALIGN(4);
    __data_end = .;
  } > RAM AT > FLASH
  __data_load = LOADADDR(.data);

  .bss (NOLOAD) :
  {
    __bss_start = .;
    *(.bss*)
    *(COMMON)
    . = ALIGN(4);
    __bss_end = .;
  } > RAM

  .stack (NOLOAD) :
  {
    . = ALIGN(8);
    __stack_limit = .;
    . += STACK_SIZE;
    __stack_top = .;
  } > RAM
"""


def linker_script(t: Target) -> str:
    """The GNU ld script for ``t``'s board: code and constants in flash, data, buffer and stack in
    RAM, the embedded test images (if any) in their own region."""
    if t.flash is None or t.ram is None:
        raise ValueError(f"{t.name} has no board memory")
    regions = [
        f"  FLASH (rx)  : ORIGIN = 0x{t.flash.origin:08X}, LENGTH = {t.flash.length}",
        f"  RAM   (rwx) : ORIGIN = 0x{t.ram.origin:08X}, LENGTH = {t.ram.length}",
    ]
    images = ""
    if t.image_region is not None:
        r = t.image_region
        regions.append(f"  IMAGES (rw) : ORIGIN = 0x{r.origin:08X}, LENGTH = {r.length}")
        images = "\n  .test_images :\n  {\n    *(.test_images*)\n  } > IMAGES\n"
    where = (
        "the test images are read over semihosting"
        if t.image_region is None
        else "the test images in a region of their own"
    )
    return f"""/* Memory map of QEMU's {t.board} ({t.core}) for the test firmware of `mnist-tflite compile`:
 * {t.flash.length // KB} KB for code and constants, {t.ram.length // KB} KB for data, buffer and stack;
 * {where}. Written from the target table (micro/aot/targets.py). */
MEMORY
{{
{chr(10).join(regions)}
}}

STACK_SIZE = {t.stack_bytes};
ENTRY(Reset_Handler)

SECTIONS
{{
{_SECTIONS}{images}}}
"""
