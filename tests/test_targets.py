"""`mnist-tflite compile --target`: every Cortex-M that QEMU emulates builds, runs and answers bit
for bit like the TFLM interpreter; the target table, the clock check and the refusals."""

from __future__ import annotations

from tests.conftest import one_error_line, require

require("tflite_micro")

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite import cli
from mnist_tflite.micro.aot import firmware, harness, targets
from mnist_tflite.micro.aot.targets import Region

ARM = [t for t in targets.TARGETS if t.is_arm]
HAVE_ARM = firmware.toolchain_problem("cortex-m4") is None
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason=firmware.INSTALL_HINT)
IMAGES = 100  # per target here; benchmarks/bench_targets.py runs 1,000


def _compile(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["compile", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_arm
@pytest.mark.parametrize("target", [t.name for t in ARM if t.name != "cortex-m4"])  # M4: test_compile
def test_every_cortex_m_runs_in_qemu_bit_exact_with_tflm(target, models_dir, tmp_path, capsys):
    t = targets.get(target)
    out = tmp_path / target
    code, stdout, _ = _compile(
        capsys, str(models_dir / "int8.tflite"), "--out", str(out), "--target", target,
        "--images", str(IMAGES), "--json",
    )  # fmt: skip
    assert code == 0
    s = json.loads(stdout)
    v = s["verification"]["target"]
    assert v["rows_identical"] == IMAGES and v["program"] == f"firmware.elf in QEMU {t.board}"
    core = s[t.key]
    assert core["board"] == t.board and core["images"] == IMAGES
    # never below what the multiply instruction allows, and steady from image to image
    assert core["bound_instructions"] < core["instructions_per_inference"]
    assert core["instructions_max"] - core["instructions_min"] < 0.01 * core["instructions_per_inference"]
    assert s["memory"]["static_ram_bytes"] <= t.ram.length
    assert (out / t.linker_file).is_file() and (out / t.startup).is_file()
    assert ((out / "test_images.S").exists()) == (t.images == "embedded")
    if t.images == "semihosting":  # the micro:bit: the images stay on the host
        assert s["flash"]["test_images_bytes"] == 0
        assert (out / firmware.IMAGES_BIN).stat().st_size == IMAGES * 784


@needs_arm
@pytest.mark.parametrize("target", ["cortex-m0", "cortex-m55"])  # the Thumb-1 and the MVE kernels
def test_the_tiny_model_without_pool_and_with_softmax_is_bit_exact(target, models_dir, tmp_path, capsys):
    """tiny_int8: a convolution without a pool (the MVE path's four outputs in a row), 8 and 16
    channels, SOFTMAX on the device."""
    code, stdout, _ = _compile(capsys, str(models_dir / "tiny_int8.tflite"), "--out", str(tmp_path / "t"),
                               "--target", target, "--images", str(IMAGES), "--json")  # fmt: skip
    s = json.loads(stdout)
    assert code == 0 and s["verification"]["target"]["rows_identical"] == IMAGES
    assert s[targets.get(target).key]["kernels"] == targets.get(target).kernel_isa


@needs_arm
def test_make_run_in_the_output_directory_runs_the_micro_bit_firmware(models_dir, tmp_path, capsys):
    """The Makefile's `make run` is the QEMU command compile used (semihosting input included)."""
    out = tmp_path / "m0"
    code, _, _ = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(out), "--target", "cortex-m0",
                          "--images", "3")  # fmt: skip
    assert code == 0
    res = subprocess.run(["make", "-s", "run"], cwd=out, capture_output=True, text=True, timeout=120)
    run = firmware.parse_output(res.stdout + res.stderr, 3, 10, "make run")
    assert (run.rows == firmware.parse_output((out / "run.txt").read_text(), 3, 10, "run.txt").rows).all()


def test_unknown_target_is_one_line_listing_the_targets(models_dir, tmp_path, capsys):
    code, _, err = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(tmp_path / "fw"),
                            "--target", "cortex-m7")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and all(name in line for name in (*targets.NAMES, "all"))
    assert not (tmp_path / "fw").exists()


@needs_arm
def test_target_all_builds_every_cortex_m_and_writes_one_table(models_dir, tmp_path, capsys, monkeypatch):
    # the micro:bit shrunk to 8 KB of RAM: its row says why, every other target is still built
    _shrunk(monkeypatch, "cortex-m0", ram=Region(0x2000_0000, 8 * 1024))
    out, images = tmp_path / "fw", 10
    code, stdout, _ = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(out),
                               "--targets", "all", "--images", str(images), "--json")  # fmt: skip
    assert code == 0
    doc = json.loads(stdout)
    assert doc == json.loads((out / "compile.json").read_text(encoding="utf-8"))
    assert [r["target"] for r in doc["rows"]] == [t.name for t in ARM]
    m0, *built = doc["rows"]
    assert "does not fit --target cortex-m0" in m0["not_built"] and not (out / "cortex-m0").exists()
    for row in built:  # each row is that target's own compile output, run in its board
        t = targets.get(row["target"])
        own = json.loads((out / t.name / "compile.json").read_text(encoding="utf-8"))
        assert own["target"] == t.name and (out / t.name / "firmware.elf").is_file()
        assert row["instructions_per_inference"] == own[t.key]["instructions_per_inference"]
        assert row["code_bytes"] == own["flash"]["code_bytes"] > 0
        assert row["static_ram_bytes"] == own["memory"]["static_ram_bytes"] <= t.ram.length
        assert row["bound_instructions"] == t.bound(own["macs"]["model"]) < row["instructions_per_inference"]
        assert row["rows_identical"] == row["images"] == images and row["board"] == t.board
    code, text, _ = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(out),
                             "--target", "all", "--images", "2", "--force")  # fmt: skip
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  cortex-m")}
    assert code == 0 and set(lines) == {t.name for t in ARM}
    assert "not built" in lines["cortex-m0"] and lines["cortex-m55"].endswith("2/2")


@needs_arm
def test_target_all_where_no_board_fits_is_one_line_and_writes_nothing(
    models_dir, tmp_path, capsys, monkeypatch
):
    for t in ARM:
        _shrunk(monkeypatch, t.name, ram=Region(t.ram.origin, 4 * 1024))
    out = tmp_path / "fw"
    code, _, err = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(out), "--target", "all")
    line = one_error_line(err)
    assert (
        code == 2
        and "no target could be built; cortex-m0:" in line
        and "the microbit board has 4,096" in line
    )
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


@pytest.mark.parametrize("target", [*(t.name for t in ARM), "all"])
def test_missing_toolchain_names_the_apt_command(target, models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(firmware.shutil, "which", lambda tool: None)
    code, _, err = _compile(capsys, str(models_dir / "int8.tflite"), "--out", str(tmp_path / "fw"),
                            "--target", target)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "--target cortex-m" in line and firmware.APT_COMMAND in line
    assert target == "all" or f"--target {target}" in line


def _shrunk(monkeypatch, name: str, **regions: Region) -> None:
    t = dataclasses.replace(targets.get(name), **regions)
    monkeypatch.setitem(targets.BY_NAME, name, t)


@needs_arm
@pytest.mark.parametrize(
    "regions, expected",
    [
        # the activation buffer (7,136 B) and the 2 KB stack do not fit: refused before building
        ({"ram": Region(0x2000_0000, 8 * 1024)}, "need 9,184 bytes of RAM, the microbit board has 8,192"),
        # the weights fit, weights + code do not: the linker's overflow, as one line
        ({"flash": Region(0, 37 * 1024)}, "bytes of flash, the microbit board has 37,888"),
    ],
)
def test_a_model_too_large_for_the_board_is_one_line_and_writes_nothing(
    regions, expected, models_dir, tmp_path, capsys, monkeypatch
):
    _shrunk(monkeypatch, "cortex-m0", **regions)
    out = tmp_path / "fw"
    model = str(models_dir / "int8.tflite")
    code, _, err = _compile(capsys, model, "--out", str(out), "--target", "cortex-m0", "--images", "2")
    line = one_error_line(err)
    assert code == 2 and "does not fit --target cortex-m0" in line and expected in line
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


def test_a_clock_other_than_the_table_says_is_an_error():
    t = targets.get("cortex-m4")  # 25 MHz: 40 instructions per tick
    firmware.check_clock(t, (5000, 200_000))
    with pytest.raises(firmware.MnistTfliteError, match="expected 5,000"):
        firmware.check_clock(t, (4000, 200_000))
    with pytest.raises(firmware.MnistTfliteError, match="no clock calibration"):
        firmware.check_clock(t, None)


def test_the_target_table():
    """Bounds follow each core's widest multiply; linker scripts carry the table's regions."""
    macs = 2_440_960  # the seed model's
    bounds = {t.name: t.bound(macs) for t in ARM}
    assert bounds == {
        "cortex-m0": 2 * macs, "cortex-m3": macs, "cortex-m4": macs // 2, "cortex-m33": macs // 2,
        "cortex-m55": macs // 16,
    }  # fmt: skip
    assert targets.get("cortex-m55").bound(17) == 2  # rounds up
    for t in ARM:
        script = targets.linker_script(t)
        assert f"ORIGIN = 0x{t.flash.origin:08X}, LENGTH = {t.flash.length}" in script
        assert f"ORIGIN = 0x{t.ram.origin:08X}, LENGTH = {t.ram.length}" in script
        assert ("IMAGES" in script) == (t.image_region is not None)
    m0 = targets.get("cortex-m0")
    assert m0.ram.length == 16 * 1024 and m0.images == "semihosting"
    assert len(set(targets.NAMES)) == len(targets.NAMES) and "host" in targets.NAMES


@needs_arm
def test_every_board_in_the_table_is_one_qemu_emulates():
    res = subprocess.run([firmware.QEMU, "-M", "help"], capture_output=True, text=True, timeout=60)
    boards = {line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip()}
    assert {t.board for t in ARM} <= boards


def test_generated_makefile_runs_the_board_of_the_target(tmp_path: Path):
    from mnist_tflite.micro.aot.codegen import KERNEL_FILES

    for t in ARM:
        text = firmware.makefile("m", t.name, KERNEL_FILES)
        assert f"-M {t.board} " in text and " ".join(t.cpu_flags) in text and f"-T {t.linker_file}" in text
        assert "int8_stream.h" not in text
    # the streamed build's header is a prerequisite of both programs: editing it rebuilds them
    text = firmware.makefile("m", "cortex-m4", (*KERNEL_FILES, "int8_stream.h"))
    rules = [line for line in text.splitlines() if line.startswith(("firmware.elf:", "firmware_host:"))]
    assert len(rules) == 2 and all("int8_stream.h" in line for line in rules)


def _odd_conv_sources(
    rng: np.random.Generator, weights: np.ndarray | None = None, wino: bool = False
) -> tuple[dict[str, str], int, int]:
    """A convolution the seed model does not have, as a test program's model: 3 input and 5
    output channels (a channel pair and an odd one), SAME padding, a 3x3 pool of stride 2 with
    padding (windows of 4, 6 and 9 positions, more than the MVE kernel's 4 slots).

    With ``wino``: ``weights`` [O, 3, 3, I] unpadded, a 2x2 pool of stride 2 on a 9x11 input
    (the conv's last row is never read), the Winograd layout for the DSP kernels."""
    from mnist_tflite.micro.aot import codegen, lower, winograd
    from mnist_tflite.micro.aot.params import ChannelQuant, Clamp, ConvParams, Dims, Filter, Window

    if weights is None:
        weights = rng.integers(-127, 128, (5, 3, 3, 3), dtype=np.int8)
    oc, kh, kw, ic = weights.shape
    h, w = (9, 11) if wino else (7, 9)
    kernel, pool = (
        (Window(3, 3), Window(2, 2, 2, 2)) if wino else (Window(3, 3, 1, 1, 1, 1), Window(3, 3, 2, 2, 1, 1))
    )
    conv = Dims(h - 2, w - 2, oc) if wino else Dims(h, w, oc)
    out = Dims(3, 4, oc) if wino else Dims(4, 5, oc)
    k_pad = lower._k_pad(kh * kw * ic)
    packed = lower._conv_weights(weights)
    params = ConvParams(
        input=Dims(h, w, ic), conv=conv, output=out, kernel=kernel, pool=pool,
        filter=Filter(packed, rng.integers(-5000, 5000, oc).astype(np.int32), k_pad),
        quant=ChannelQuant(rng.integers(1 << 30, (1 << 31) - 1, oc).astype(np.int32),
                           rng.integers(-18, -14, oc).astype(np.int8) if wino
                           else rng.integers(-9, 2, oc).astype(np.int8)),
        in_zp=-3, out_zp=7, act=Clamp(-128, 127),
        wino=winograd.kernel_weights(weights) if wino else None,
    )  # fmt: skip
    assert not wino or winograd.eligible(weights, kernel, pool, ic)
    arrays = codegen.conv_weights_code("m_weights", params)
    others = {"bias": params.filter.bias, "mult": params.quant.mult, "shift": params.quant.shift}
    if wino:
        arrays += codegen.wino_weights_code("m_wino", params)
    for key, arr in others.items():
        arrays += codegen._array(f"m_{key}", arr, 4)
    size_in, size_out = h * w * ic, out.h * out.w * oc
    wino_call = ["#if I8K_WINO", "    i8k_conv_wino(&m, input, output, scratch);", "#else"] if wino else []
    wino_call += ["    i8k_conv(&m, input, output, scratch);", *(["#endif"] if wino else [])]
    c = [
        '#include "m.h"', '#include "int8_kernels.h"', "#define I8K_ALIGNED(n) __attribute__((aligned(n)))",
        *arrays, f"static const i8k_conv_t m = {codegen.initializer(params, 'm')};",
        f"static int8_t scratch[I8K_CONV_SCRATCH_BYTES({k_pad}, {oc}, 1) + I8K_WINO_SCRATCH_BYTES({ic})] "
        "I8K_ALIGNED(8);",
        f"int m_invoke(const int8_t input[{size_in}], int8_t output[{size_out}])",
        "{", *wino_call, "    return 0;", "}",
    ]  # fmt: skip
    header = f"#include <stdint.h>\n#define M_INPUT_SIZE {size_in}\n#define M_OUTPUT_SIZE {size_out}\n"
    header += f"int m_invoke(const int8_t input[{size_in}], int8_t output[{size_out}]);\n"
    return {"m.c": "\n".join(c) + "\n", "m.h": header}, size_in, size_out


def _extreme_weights(oc: int, ic: int) -> np.ndarray:
    """Weights whose Winograd transform is as large as int8 allows: every 3x3 all +127 or all -128
    per channel pair (|U| = 9 * 128 at the centre), the rest random signs."""
    rng = np.random.default_rng(7)
    w = np.where(rng.random((oc, 3, 3, ic)) < 0.5, -128, 127).astype(np.int8)
    w[: oc // 2] = np.where(rng.random((oc // 2, 1, 1, ic)) < 0.5, -128, 127)
    return w


def test_winograd_sums_are_exactly_four_times_the_convolution():
    from mnist_tflite.micro.aot import winograd
    from mnist_tflite.micro.aot.params import Window

    rng = np.random.default_rng(3)
    for w in (_extreme_weights(8, 16), rng.integers(-128, 128, (4, 3, 3, 8))):
        x = np.where(rng.random((9, 11, w.shape[3])) < 0.5, -128, 127)
        direct = np.zeros((7, 9, w.shape[0]), dtype=np.int64)
        for y in range(7):
            for xx in range(9):
                direct[y, xx] = np.einsum("kli,okli->o", x[y : y + 3, xx : xx + 3], w.astype(np.int64))
        blocks = direct[:6, :8].reshape(3, 2, 4, 2, -1).transpose(0, 2, 4, 1, 3)
        assert (winograd.reference(x, w) == winograd.SCALE * blocks).all()
        assert winograd.eligible(w, Window(3, 3), Window(2, 2, 2, 2), w.shape[3])
        assert np.abs(winograd.kernel_weights(w)).max() <= 9 * 128
    w = rng.integers(-128, 128, (4, 3, 3, 8))
    # not for: a stride, padding, another pool, channel counts off the kernel's blocks, an overflow
    assert not winograd.eligible(w, Window(3, 3, 2, 2), Window(2, 2, 2, 2), 8)
    assert not winograd.eligible(w, Window(3, 3, 1, 1, 1, 1), Window(2, 2, 2, 2), 8)
    assert not winograd.eligible(w, Window(3, 3), Window(3, 3, 2, 2), 8)
    assert not winograd.eligible(w[:3], Window(3, 3), Window(2, 2, 2, 2), 8)
    assert not winograd.eligible(w[..., :4], Window(3, 3), Window(2, 2, 2, 2), 4)
    assert not winograd.eligible(_extreme_weights(4, 512), Window(3, 3), Window(2, 2, 2, 2), 512)


@needs_arm
@pytest.mark.parametrize("wino", [False, True], ids=["odd", "winograd"])
def test_every_instruction_set_gives_the_same_bits_on_an_odd_convolution(wino, tmp_path):
    """The plain C (host), Thumb-1 (M0), DSP (M4) and MVE (M55) kernels on odd channel counts,
    padding and a pool window larger than 4: the same output bytes everywhere. And the M4's and
    the M0's Winograd kernels on the largest sums int8 weights and inputs can make, against the
    direct kernels."""
    from mnist_tflite.micro.aot import codegen

    rng = np.random.default_rng(21)
    sources, size_in, size_out = (
        _odd_conv_sources(rng, _extreme_weights(8, 16), True) if wino else _odd_conv_sources(rng)
    )
    inputs = rng.integers(-128, 128, (8, size_in), dtype=np.int8)
    if wino:  # saturated inputs: the largest transformed tiles
        inputs[:4] = np.where(rng.random((4, size_in)) < 0.5, -128, 127)
    rows = {}
    for target in ("host", "cortex-m0", "cortex-m4", "cortex-m55"):
        d = tmp_path / target
        d.mkdir()
        files = {**sources, **codegen.kernel_sources(), **firmware.board_sources(target)}
        files["main.c"] = harness.harness_main("m", len(inputs), targets.get(target).images)
        files["test_images.S"] = harness.images_asm()
        for name, text in files.items():
            (d / name).write_text(text)
        (d / firmware.IMAGES_BIN).write_bytes(inputs.tobytes())
        firmware.build(d, "m", target)
        run = firmware.run_host if target == "host" else firmware.run_firmware
        args = (d, len(inputs), size_out) + (() if target == "host" else (target,))
        rows[target] = run(*args).rows
    assert len({r.tobytes() for r in rows.values()}) == 1, {t: r[0][:10] for t, r in rows.items()}
    assert len(np.unique(rows["host"])) > 20  # not a constant output that agrees trivially


def test_the_winograd_weights_count_only_where_the_kernels_link_them(models_dir, monkeypatch):
    """The DSP kernels (M4) link the Winograd weights, the Thumb-1 ones (M0) their own layout of
    them with the sums' start values, the plain C ones (M3) neither: the flash check counts that."""
    from mnist_tflite.core.errors import MnistTfliteError
    from mnist_tflite.micro.aot import lower, winograd
    from mnist_tflite.micro.aot.build import check_fits
    from mnist_tflite.micro.aot.compiler import load_program

    _, program = load_program(models_dir / "int8.tflite")
    (p,) = [layer.params for layer in program.layers if getattr(layer.params, "wino", None) is not None]
    wino = p.wino.nbytes
    assert wino == 64 * 32 * 16 * 2  # 64 out x 32 in channels x 16 positions, int16: 65,536 B
    m0 = winograd.kernel_weights_m0(lower.unpacked_weights(p)).nbytes
    assert m0 == wino + 64 * 16 * 4  # and an int32 start value per output channel and position
    direct = program.weight_bytes("plain C")
    assert program.weight_bytes("DSP") == direct + wino and program.weight_bytes("Thumb-1") == direct + m0
    flash = Region(0, 64 * 1024)  # holds the direct weights, not the Winograd ones too
    for name in ("cortex-m0", "cortex-m3", "cortex-m4"):
        _shrunk(monkeypatch, name, flash=flash)
    check_fits(program, targets.get("cortex-m3"))
    with pytest.raises(MnistTfliteError, match="its weights need 101,306 bytes of flash"):
        check_fits(program, targets.get("cortex-m4"))
    with pytest.raises(MnistTfliteError, match="its weights need 105,402 bytes of flash"):
        check_fits(program, targets.get("cortex-m0"))
