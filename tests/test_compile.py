"""`mnist-tflite compile`: the generated C, built for this computer and as Cortex-M4 firmware in
QEMU, must answer bit for bit like the TFLM interpreter on real test digits."""

from __future__ import annotations

from tests.conftest import edited_model, one_error_line, require

require("tflite_micro")  # before the imports that need them

import json
import random
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest

from mnist_tflite import cli
from mnist_tflite.micro.aot import build, codegen, columns, firmware, params, verify
from mnist_tflite.micro.aot.compiler import compile_model, quantize_multiplier, softmax_params

HAVE_M4 = firmware.toolchain_problem("cortex-m4") is None
needs_m4 = pytest.mark.skipif(not HAVE_M4, reason=firmware.INSTALL_HINT)
needs_gcc = pytest.mark.skipif(firmware.toolchain_problem("host") is not None, reason="needs gcc")


def _truncate_ops(data: bytes, keep: slice, new_input: int | None = None) -> bytes:
    """Keep some operators; the graph output becomes the last kept op's output."""

    def edit(model, schema):
        g = model.subgraphs[0]
        g.operators = g.operators[keep]
        out = int(g.operators[-1].outputs[0])
        g.outputs = [out]
        if new_input is not None:
            g.inputs = [new_input]
        for sig in model.signatureDefs or []:
            sig.outputs[0].tensorIndex = out
            if new_input is not None:
                sig.inputs[0].tensorIndex = new_input

    return edited_model(data, edit)


@pytest.fixture(scope="module")
def seed_bytes(models_dir) -> bytes:
    """The seed int8 model as it was before the int8 recipes dropped the SOFTMAX (int8_softmax.tflite)."""
    return (models_dir / "int8_softmax.tflite").read_bytes()


@pytest.fixture(scope="module")
def logits_model(seed_bytes, tmp_path_factory) -> Path:
    """The seed int8 model without its SOFTMAX: int8 logits out, as the int8 recipes will write."""
    path = tmp_path_factory.mktemp("logits") / "logits_int8.tflite"
    path.write_bytes(_truncate_ops(seed_bytes, slice(0, -1)))
    return path


@pytest.fixture(scope="module")
def quantized(mnist, seed_bytes):
    program = compile_model(seed_bytes)
    return build.quantize_images(mnist.x_test, program.input.scale, program.input.zero_point)


def _host_rows(model, tmp_path: Path, inputs: np.ndarray) -> np.ndarray:
    program, lib = verify.host_model(model, tmp_path / "host")
    return verify.run_library(lib, "mnist_model", inputs, program.output.size)


def _tflm(model, inputs: np.ndarray) -> np.ndarray:
    raw = model if isinstance(model, bytes) else Path(model).read_bytes()
    rows = verify.tflm_rows(raw, inputs)
    assert not isinstance(rows, str), rows
    return rows


# ---- bit-exactness ------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("which", ["softmax", "logits", "tiny"])
def test_host_build_is_bit_exact_with_tflm(which, models_dir, logits_model, quantized, tmp_path):
    model = {
        "softmax": models_dir / "int8_softmax.tflite",
        "logits": logits_model,
        "tiny": models_dir / "tiny_int8.tflite",
    }[which]
    inputs = quantized[:300]
    ours = _host_rows(model, tmp_path, inputs)
    ref = _tflm(model, inputs)
    assert ours.shape == ref.shape == (300, 10)
    assert (ours == ref).all(axis=1).sum() == 300
    if which == "logits":
        assert len(np.unique(ours)) > 20  # raw logits, not saturated probabilities


@needs_gcc
@pytest.mark.slow
@pytest.mark.parametrize("which", ["softmax", "logits"])
def test_host_build_is_bit_exact_on_all_10000_test_images(
    which, models_dir, logits_model, quantized, tmp_path
):
    model = models_dir / "int8_softmax.tflite" if which == "softmax" else logits_model
    ours = _host_rows(model, tmp_path, quantized)
    ref = _tflm(model, quantized)
    assert len(ours) == 10_000
    assert int((ours == ref).all(axis=1).sum()) == 10_000


@needs_gcc
def test_softmax_is_bit_exact_on_random_logits(seed_bytes, tmp_path):
    """The int8 SOFTMAX alone (input = the seed's logits tensor) on 6,000 random rows."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(seed_bytes, 0)
    logits = int(model.subgraphs[0].operators[-1].inputs[0])
    data = _truncate_ops(seed_bytes, slice(-1, None), new_input=logits)
    rng = np.random.default_rng(0)
    rows = [rng.integers(-128, 128, size=(2000, 10))]
    for spread in (3, 12, 40):  # close logits: the sums and reciprocals matter
        centre = rng.integers(-100, 100, size=(1000, 1))
        rows.append(np.clip(centre + rng.integers(-spread, spread + 1, size=(1000, 10)), -128, 127))
    rows.append(np.array([[-128] * 10, [127] * 10, [127] + [-128] * 9, [0] * 9 + [127]]))
    inputs = np.concatenate(rows).astype(np.int8)
    ours = _host_rows(data, tmp_path, inputs)
    assert (ours == _tflm(data, inputs)).all()


def _kernels_library(directory: Path, *defines: str):
    """The kernels alone as a shared library for this computer, built with ``defines``."""
    import ctypes
    import subprocess

    directory.mkdir()
    for name, text in codegen.kernel_sources().items():
        (directory / name).write_text(text)
    out = directory / "libkernels.so"
    cmd = [firmware.HOST_GCC, *firmware.HOST_CFLAGS, *defines, "-fPIC", "-shared", "-o", str(out)]
    subprocess.run([*cmd, "int8_kernels.c"], cwd=directory, check=True, capture_output=True)
    return ctypes.CDLL(str(out))


@needs_gcc
@pytest.mark.parametrize("mul_high", ["int64", "16x16"])
def test_requantization_matches_the_reference_rounding(mul_high, tmp_path, seed_bytes):
    """i8k_requantize against a Python transcription of the spec's two roundings; "16x16": with
    the M0's multiply-high made of four 16x16-bit products (I8K_MUL_HIGH_16), built here."""
    import ctypes

    def srdhm(a: int, b: int) -> int:
        if a == b == -(2**31):
            return 2**31 - 1
        ab = a * b
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        q = abs(ab + nudge) // (1 << 31)
        return q if ab + nudge >= 0 else -q  # division truncating toward zero

    def rdpot(x: int, e: int) -> int:
        mask = (1 << e) - 1
        return (x >> e) + ((x & mask) > (mask >> 1) + (1 if x < 0 else 0))

    def reference(acc: int, mult: int, shift: int) -> int:
        left, right = max(shift, 0), max(-shift, 0)
        return rdpot(srdhm(acc * (1 << left), mult), right)

    if mul_high == "int64":
        _, lib = verify.host_model(seed_bytes, tmp_path / "host")
    else:
        lib = _kernels_library(tmp_path / "kernels", "-DI8K_MUL_HIGH_16")
    fn = lib.i8k_requantize
    fn.argtypes = (ctypes.c_int32, ctypes.c_int32, ctypes.c_int32)
    fn.restype = ctypes.c_int32
    rnd = random.Random(0)
    cases = [
        (acc, m, s) for acc in (0, 1, -1, 2**20, -(2**20)) for m in (1 << 30, 2**31 - 1) for s in (-10, 0, 1)
    ]
    for _ in range(20_000):
        shift = rnd.randint(-31, 4)
        acc = rnd.randint(-(2**24), 2**24) >> max(shift, 0)
        mult = rnd.randint(1 << 30, 2**31 - 1)
        cases.append((acc, mult, shift))
    for _ in range(5_000):  # any int32 sum (the 16x16 products' carries)
        cases.append((rnd.randint(-(2**31), 2**31 - 1), rnd.randint(1 << 30, 2**31 - 1), rnd.randint(-31, 0)))
    for e in range(1, 12):  # exact ties of the final rounding, both signs
        cases += [((2 * k + 1) << (e - 1), 1 << 30, -e - 1) for k in (-3, -1, 0, 2)]
    for acc, mult, shift in cases:
        assert fn(acc, mult, shift) == reference(acc, mult, shift), (acc, mult, shift)


def test_quantize_multiplier_and_softmax_parameters():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    m, s = quantize_multiplier(0.0028360234573483467 * 0.003921568859368563 / 0.00527376402169466)
    assert (1 << 30) <= m < (1 << 31) and s < 0
    assert quantize_multiplier(0.0) == (0, 0)
    mult, shift, diff_min = softmax_params(1.0, 0.2563990354537964)
    assert (1 << 30) <= mult < (1 << 31) and shift >= 0 and diff_min < 0


def _c_members(header: str) -> dict[str, list[tuple[str, str]]]:
    """Each ``typedef struct {...} name;`` of the header: its (type, member) pairs, in order."""
    structs = {}
    for body, name in re.findall(r"typedef struct \{(.*?)\} (\w+);", header, flags=re.DOTALL):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.DOTALL)
        members = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            ctype, names = re.match(r"((?:const )?\w+ \*?)(.*)", decl).groups()
            members += [(ctype.strip(" *"), n.strip()) for n in names.split(",")]
        structs[name] = members
    return structs


def test_the_generator_names_every_member_of_every_kernel_struct():
    """Designated initializers leave a member the generator forgets at 0, silently: the Python
    dataclasses must name exactly the members int8_kernels.h declares, nested ones too."""
    header = codegen.kernel_sources()["int8_kernels.h"]
    structs = _c_members(header)

    def check(cls, c_type: str) -> None:
        members = structs[c_type]
        assert [f.name for f in fields(cls)] == [m for _, m in members], c_type
        hints = get_type_hints(cls)
        for ctype, member in members:
            if ctype in structs:  # a nested struct: its dataclass must match it too
                check(hints[member], ctype)

    for cls in (params.ConvParams, params.FcParams, params.PoolParams, params.SoftmaxParams):
        check(cls, cls.C_TYPE)
    # (the scratch each i8k_conv call gets is checked against I8K_CONV_SCRATCH_BYTES by the
    # _Static_assert the generator writes beside it, on every build)


# ---- what the compiler plans --------------------------------------------------------------


def test_seed_model_is_folded_fused_and_planned(seed_bytes):
    p = compile_model(seed_bytes, "int8.tflite")
    assert [layer.label for layer in p.layers] == [
        "CONV_2D+MAX_POOL_2D",
        "CONV_2D+MAX_POOL_2D",
        "FULLY_CONNECTED",
        "SOFTMAX",
    ]
    assert [op for _, op in p.folded] == ["SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"]
    assert p.output_kind == "softmax" and p.macs_model == 2_440_960
    # the 26x26x32 convolution output (21,632 bytes) never exists: pooled rows are computed directly
    assert p.plan.arena_bytes < 26 * 26 * 32 / 2
    assert p.plan.arena_bytes <= 7_200
    # the pooled 13x13x32 input of layer 1 and its 5x5x64 output overlap: the output is written
    # over input rows already consumed
    off = p.plan.offsets
    a, b = p.storage[p.layers[1].src], p.storage[p.layers[1].dst]
    assert off[b] < off[a] < off[b] + p.plan.sizes[b]
    # conv rows and columns the pool never reads (the 11th of 11) are not computed
    assert p.layers[1].macs_computed == 10 * 10 * 64 * 288


def test_logits_model_ends_in_fully_connected(logits_model):
    p = compile_model(logits_model.read_bytes(), logits_model)
    assert p.output_kind == "logits" and p.layers[-1].label == "FULLY_CONNECTED"


# ---- the command --------------------------------------------------------------------------


def _compile(*args: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["compile", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_m4
def test_firmware_in_qemu_is_bit_exact_and_meets_the_figures(models_dir, quantized, tmp_path, capsys):
    """1,000 test images in QEMU's Cortex-M4: every row as TFLM's; RAM, code and speed targets."""
    out = tmp_path / "fw"
    model = str(models_dir / "int8.tflite")
    code, stdout, _ = _compile(model, "--out", str(out), "--images", "1000", "--json", capsys=capsys)
    assert code == 0
    s = json.loads(stdout)
    assert s == json.loads((out / "compile.json").read_text())
    v = s["verification"]["target"]
    assert v["images"] == 1000 and v["rows_identical"] == 1000 and v["accuracy"] > 0.97
    assert s["flash"]["code_bytes"] <= 12 * 1024 and s["flash"]["libgcc_bytes"] == 0
    assert 0 < s["memory"]["stack_bytes"] < 1024
    assert s["memory"]["static_ram_bytes"] <= 9 * 1024
    assert s["memory"]["static_ram_bytes"] == s["memory"]["arena_bytes"] + s["memory"]["stack_bytes"]
    m4 = s["cortex_m4"]
    assert 1_220_480 < m4["instructions_per_inference"] <= 6_100_000
    assert m4["instructions_max"] - m4["instructions_min"] < 0.01 * m4["instructions_per_inference"]
    for f in ("mnist_model.c", "mnist_model.h", "Makefile", "firmware.elf", "startup_cortex_m.c"):
        assert (out / f).is_file(), f
    assert (out / "mps2_an386.ld").is_file()
    assert (
        "int mnist_model_invoke(const int8_t input[784], int8_t output[10]);"
        in (out / "mnist_model.h").read_text()
    )
    assert not list(tmp_path.glob(".fw*")), "no temporary directory left behind"
    # the Cortex-M4 kernels (SMLAD) and the plain C ones give the same bits
    run = firmware.parse_output((out / "run.txt").read_text(), 1000, 10, "run.txt")
    assert (run.rows == _host_rows(models_dir / "int8.tflite", tmp_path, quantized[:1000])).all()


@needs_gcc
def test_host_target_needs_only_gcc(models_dir, tmp_path, capsys, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        firmware.shutil, "which", lambda t: None if t in (firmware.ARM_GCC, firmware.QEMU) else real_which(t)
    )
    out = tmp_path / "host"
    code, stdout, _ = _compile(str(models_dir / "tiny_int8.tflite"), "--out", str(out), "--target", "host",
                               "--images", "50", "--name", "tiny", "--json", capsys=capsys)  # fmt: skip
    assert code == 0
    s = json.loads(stdout)
    assert s["cortex_m4"] == {"not_measured": "--target host"}
    assert s["verification"]["target"]["rows_identical"] == 50
    assert (out / "firmware_host").is_file() and not (out / "firmware.elf").exists()
    assert "tiny_invoke" in (out / "tiny.h").read_text()


def test_missing_cross_toolchain_is_one_line(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(firmware.shutil, "which", lambda t: None)
    out = tmp_path / "fw"
    code, _, err = _compile(str(models_dir / "int8.tflite"), "--out", str(out), capsys=capsys)
    line = one_error_line(err)
    assert (
        code == 2 and "arm-none-eabi-gcc" in line and "qemu-system-arm" in line and "apt-get install" in line
    )
    assert not out.exists()


def _int16_model(data: bytes) -> bytes:
    def edit(model, schema):
        g = model.subgraphs[0]
        g.tensors[int(g.operators[0].outputs[0])].type = schema.TensorType.INT16

    return edited_model(data, edit)


def _unknown_op(data: bytes) -> bytes:
    def edit(model, schema):
        g = model.subgraphs[0]
        code = model.operatorCodes[g.operators[-1].opcodeIndex]
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.TANH

    return edited_model(data, edit)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("float32", "not an int8 model"),
        ("float16", "not an int8 model"),
        ("dynamic", "not an int8 model"),
        ("int16", "int16"),
        ("unknown-op", "unsupported op TANH (node 9)"),
        ("truncated", "corrupt model"),
        ("garbage", "not a TFLite flatbuffer"),
        ("empty", "empty file"),
    ],
)
def test_bad_models_are_one_line_and_write_nothing(case, expected, models_dir, seed_bytes, tmp_path, capsys):
    if case in ("float32", "float16", "dynamic"):
        model = models_dir / f"{case}.tflite"
    else:
        model = tmp_path / f"{case}.tflite"
        model.write_bytes(
            {
                "int16": lambda: _int16_model(seed_bytes),
                "unknown-op": lambda: _unknown_op(seed_bytes),
                "truncated": lambda: seed_bytes[:5000],
                "garbage": lambda: bytes(random.Random(1).randrange(256) for _ in range(4000)),
                "empty": lambda: b"",
            }[case]()
        )
    out = tmp_path / "fw"
    code, _, err = _compile(str(model), "--out", str(out), "--target", "host", capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and expected in line, line
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


def test_bad_options_are_one_line(models_dir, tmp_path, capsys):
    model = str(models_dir / "int8.tflite")
    for args, expected in [
        (["--name", "9lives"], "not a valid C identifier"),
        (["--name", "int"], "reserved"),
        (["--images", "0"], "--images must be"),
    ]:
        code, _, err = _compile(
            model, "--out", str(tmp_path / "fw"), "--target", "host", *args, capsys=capsys
        )
        assert code == 2 and expected in one_error_line(err)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, _, err = _compile(model, "--out", str(other), "--target", "host", capsys=capsys)
    assert code == 2 and "already exists" in one_error_line(err)
    code, _, err = _compile(model, "--out", str(other), "--target", "host", "--force", capsys=capsys)
    assert code == 2 and "not written by compile" in one_error_line(err)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".mine*"))


@needs_gcc
def test_force_replaces_an_earlier_compile_output(models_dir, tmp_path, capsys):
    out = tmp_path / "fw"
    model = str(models_dir / "tiny_int8.tflite")
    assert _compile(model, "--out", str(out), "--target", "host", "--images", "5", capsys=capsys)[0] == 0
    (out / "stale.txt").write_text("old")
    code, _, err = _compile(model, "--out", str(out), "--target", "host", "--images", "5", capsys=capsys)
    assert code == 2 and "--force" in err
    code, stdout, _ = _compile(model, "--out", str(out), "--target", "host", "--images", "7", "--force",
                               capsys=capsys)  # fmt: skip
    assert code == 0 and "wrote" in stdout
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "compile.json").read_text())["verification"]["target"]["images"] == 7


def test_help_has_an_example(capsys):
    assert cli.main(["compile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and "mnist-tflite compile" in out and "--target" in out


@needs_m4
def test_compiled_columns_for_the_run_report(models_dir, mnist):
    report = columns.compiled_columns(
        {"int8": models_dir / "int8.tflite", "float32": models_dir / "float32.tflite"},
        mnist.x_test,
        count=3,
        log=lambda m: None,
    )
    cols = report["columns"]["int8"]
    assert cols["compiled_code_bytes"] <= 12 * 1024
    assert cols["compiled_static_ram_bytes"] <= 9 * 1024
    assert 0 < cols["compiled_instructions"] <= 6_100_000
    assert "float32" not in report["columns"] and any("float32" in n for n in report["notes"])
