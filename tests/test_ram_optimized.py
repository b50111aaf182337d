"""`mnist-tflite compile --ram-optimized`: rows streamed through line buffers must answer bit for
bit like the TFLM interpreter, in at most 3.5 KB of static RAM on the Cortex-M4; graphs the
streaming driver does not run are refused in one line."""

from __future__ import annotations

from tests.conftest import edited_model, one_error_line, require

require("tflite_micro")  # before the imports that need them

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite.micro.aot import build, verify
from mnist_tflite.micro.aot.compiler import compile_model
from mnist_tflite.micro.aot.plan import align
from tests.test_compile import _compile, _tflm, _truncate_ops, needs_gcc, needs_m4

RAM_LIMIT = 3_584  # issue 21: static RAM (activation buffer + stack) of the seed model, Cortex-M4


def _same_padded_tiny(data: bytes) -> bytes:
    """tiny_int8 with both convolutions SAME-padded (zero rows above and left of the streamed
    bands) and its fully connected layer widened to the 7x7x16 it then reads, random weights."""

    def edit(model, schema):
        g = model.subgraphs[0]
        conv1, _, conv2 = g.operators[:3]
        conv1.builtinOptions.padding = conv2.builtinOptions.padding = schema.Padding.SAME
        shapes = {10: [1, 14, 14, 8], 11: [1, 7, 7, 8], 12: [1, 7, 7, 16], 16: [1, 784], 5: [10, 784]}
        for t, shape in shapes.items():
            g.tensors[t].shape = np.array(shape, dtype=np.int32)
        weights = np.random.default_rng(0).integers(-60, 61, size=(10, 784), dtype=np.int8)
        model.buffers[g.tensors[5].buffer].data = np.frombuffer(weights.tobytes(), dtype=np.uint8)
        model.buffers[g.tensors[3].buffer].data = np.frombuffer(np.int32(784).tobytes(), dtype=np.uint8)

    return edited_model(data, edit)


def _one_conv_tiny(data: bytes) -> bytes:
    """tiny_int8 without its second convolution: one streamed convolution (read from the caller's
    input, no line buffer) into a fully connected layer of 6x6x8 inputs, random weights."""

    def edit(model, schema):
        g = model.subgraphs[0]
        del g.operators[2]
        for op in g.operators[2:]:
            op.inputs = np.where(op.inputs == 12, 11, op.inputs).astype(np.int32)
        g.tensors[16].shape = np.array([1, 288], dtype=np.int32)
        g.tensors[5].shape = np.array([10, 288], dtype=np.int32)
        weights = np.random.default_rng(1).integers(-60, 61, size=(10, 288), dtype=np.int8)
        model.buffers[g.tensors[5].buffer].data = np.frombuffer(weights.tobytes(), dtype=np.uint8)
        model.buffers[g.tensors[3].buffer].data = np.frombuffer(np.int32(288).tobytes(), dtype=np.uint8)

    return edited_model(data, edit)


def _three_conv_tiny(data: bytes) -> bytes:
    """tiny_int8 with a third convolution (3x3, 16 -> 16, random weights) after its second: rows
    pulled through two line buffers, the second pull inside the first."""

    def edit(model, schema):
        g = model.subgraphs[0]
        rng = np.random.default_rng(2)

        def tensor(like: int, shape: list[int], values: np.ndarray | None) -> int:
            t = copy.deepcopy(g.tensors[like])
            t.shape = np.array(shape, dtype=np.int32)
            t.name = f"{t.name.decode()}_third".encode()
            buf = schema.BufferT()
            if values is not None:
                buf.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
            g.tensors.append(t)
            return len(g.tensors) - 1

        w = tensor(7, [16, 3, 3, 16], rng.integers(-30, 31, size=(16, 3, 3, 16), dtype=np.int8))
        b = tensor(6, [16], rng.integers(-2000, 2001, size=16).astype(np.int32))
        y = tensor(12, [1, 2, 2, 16], None)
        conv = copy.deepcopy(g.operators[2])
        conv.inputs, conv.outputs = np.array([12, w, b], dtype=np.int32), np.array([y], dtype=np.int32)
        g.operators.insert(3, conv)
        for op in g.operators[4:]:
            op.inputs = np.where(op.inputs == 12, y, op.inputs).astype(np.int32)
        g.tensors[16].shape = np.array([1, 64], dtype=np.int32)
        g.tensors[5].shape = np.array([10, 64], dtype=np.int32)
        weights = rng.integers(-60, 61, size=(10, 64), dtype=np.int8)
        model.buffers[g.tensors[5].buffer].data = np.frombuffer(weights.tobytes(), dtype=np.uint8)
        model.buffers[g.tensors[3].buffer].data = np.frombuffer(np.int32(64).tobytes(), dtype=np.uint8)

    return edited_model(data, edit)


@pytest.fixture(scope="module")
def models(models_dir) -> dict[str, bytes]:
    tiny = (models_dir / "tiny_int8.tflite").read_bytes()
    return {
        "int8": (models_dir / "int8.tflite").read_bytes(),
        "int8_softmax": (models_dir / "int8_softmax.tflite").read_bytes(),
        "tiny_int8": tiny,
        "tiny_same": _same_padded_tiny(tiny),
        "tiny_one_conv": _one_conv_tiny(tiny),
        "tiny_three_conv": _three_conv_tiny(tiny),
    }


@pytest.fixture(scope="module")
def quantized(mnist, models):
    program = compile_model(models["int8"])
    return build.quantize_images(mnist.x_test, program.input.scale, program.input.zero_point)


def _streamed_rows(data: bytes, tmp_path: Path, inputs: np.ndarray) -> np.ndarray:
    program, lib = verify.host_model(data, tmp_path / "host", ram_optimized=True)
    assert program.stream is not None
    return verify.run_library(lib, "mnist_model", inputs, program.output.size)


# ---- the plan -----------------------------------------------------------------------------


def test_seed_model_streams_rows_through_one_line_buffer(models):
    default, p = compile_model(models["int8"]), compile_model(models["int8"], ram_optimized=True)
    st = p.stream
    assert st is not None and default.stream is None
    # conv 2 reads 4 rows of pooled map 1 per output row, and only its first 12 rows and columns
    assert st.capacity == (4,) and p.layers[0].out_shape == (12, 12, 32)
    assert p.layers[0].macs_computed == 12 * 12 * 4 * 32 * 12 < default.layers[0].macs_computed
    assert p.layers[1].macs_computed == default.layers[1].macs_computed
    # its 5x64 row goes over the first row of the line buffer, which it has finished reading
    assert st.row_in_place and st.row == st.rings[0]
    regions = sorted((off, off + n) for _, off, n in st.regions)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(regions)), regions
    assert p.plan.arena_bytes == regions[-1][1] == 40 + 4 * 12 * 32 + align(p.layers[1].scratch_bytes)
    assert p.plan.arena_bytes < default.plan.arena_bytes / 2


def test_a_fully_connected_row_that_does_not_fit_gets_its_own_buffer(models):
    st = compile_model(models["tiny_int8"], ram_optimized=True).stream
    assert st is not None and not st.row_in_place  # 4x16 outputs per row, 6x8 inputs per row
    assert st.capacity == (3,)


# ---- bit-exactness ------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize(
    "which", ["int8", "int8_softmax", "tiny_int8", "tiny_same", "tiny_one_conv", "tiny_three_conv"]
)
def test_streamed_host_build_is_bit_exact_with_tflm(which, models, quantized, tmp_path):
    inputs = quantized[:300]
    ours = _streamed_rows(models[which], tmp_path, inputs)
    ref = _tflm(models[which], inputs)
    assert ours.shape == ref.shape == (300, 10)
    assert int((ours == ref).all(axis=1).sum()) == 300
    assert len(np.unique(ours)) > 10  # the rows say something


@needs_gcc
@pytest.mark.slow
def test_streamed_host_build_is_bit_exact_on_all_10000_test_images(models, quantized, tmp_path):
    ours = _streamed_rows(models["int8"], tmp_path, quantized)
    assert len(ours) == 10_000
    assert int((ours == _tflm(models["int8"], quantized)).all(axis=1).sum()) == 10_000


@needs_m4
@pytest.mark.slow
def test_cortex_m4_firmware_is_bit_exact_in_3_5_kb_at_most_1_5x_the_instructions(
    models_dir, tmp_path, capsys
):
    """1,000 test images in QEMU's Cortex-M4, against the default build of the same model."""
    model = str(models_dir / "int8.tflite")
    figures = {}
    for kind, extra, images in (("default", [], "100"), ("streamed", ["--ram-optimized"], "1000")):
        out = tmp_path / kind
        code, stdout, _ = _compile(
            model, "--out", str(out), "--images", images, "--json", *extra, capsys=capsys
        )
        assert code == 0
        figures[kind] = json.loads(stdout)
    s, default = figures["streamed"], figures["default"]
    assert s["ram_optimized"] and not default["ram_optimized"]
    v = s["verification"]["target"]
    assert v["images"] == v["rows_identical"] == 1000 and v["accuracy"] > 0.97
    mem = s["memory"]
    assert mem["static_ram_bytes"] == mem["arena_bytes"] + mem["stack_bytes"] <= RAM_LIMIT
    assert mem["static_ram_bytes"] < default["memory"]["static_ram_bytes"] / 2
    ins, base = (
        s["cortex_m4"]["instructions_per_inference"],
        default["cortex_m4"]["instructions_per_inference"],
    )
    assert ins <= 1.5 * base
    assert '#include "int8_stream.h"' in (tmp_path / "streamed" / "mnist_model.c").read_text()
    assert "int8_stream.h" not in (tmp_path / "default" / "mnist_model.c").read_text()
    assert not (tmp_path / "default" / "int8_stream.h").exists()


@needs_m4
@pytest.mark.slow
def test_cortex_m0_streams_through_its_thumb1_winograd_kernel(models_dir, tmp_path, capsys):
    """The M0's streamed build runs its own kernels (the Thumb-1 Winograd for the seed's second
    convolution, as its default build does): same rows, no more instructions than the default."""
    model = str(models_dir / "int8.tflite")
    figures = {}
    for kind, extra in (("default", []), ("streamed", ["--ram-optimized"])):
        out = tmp_path / kind
        args = ("--out", str(out), "--target", "cortex-m0", "--images", "200", "--json", *extra)
        code, stdout, _ = _compile(model, *args, capsys=capsys)
        assert code == 0
        figures[kind] = json.loads(stdout)
    s, default = figures["streamed"], figures["default"]
    v = s["verification"]["target"]
    assert v["images"] == v["rows_identical"] == 200
    # the plain C convolution would take about 3x the default's instructions here
    assert s["cortex_m0"]["instructions_per_inference"] <= default["cortex_m0"]["instructions_per_inference"]
    assert s["memory"]["static_ram_bytes"] < default["memory"]["static_ram_bytes"] / 2


@needs_m4
@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny_same", "tiny_three_conv"])
@pytest.mark.parametrize("target", ["cortex-m0", "cortex-m4", "cortex-m55"])
def test_every_instruction_set_streams_the_same_bits(which, target, models, tmp_path, capsys):
    """The Thumb-1 (M0), DSP (M4) and MVE (M55) kernels on streamed bands: padding at the top, two
    line buffers."""
    model = tmp_path / f"{which}.tflite"
    model.write_bytes(models[which])
    out = tmp_path / "fw"
    args = ("--out", str(out), "--target", target, "--images", "200", "--ram-optimized", "--json")
    code, stdout, _ = _compile(str(model), *args, capsys=capsys)
    v = json.loads(stdout)["verification"]["target"]
    assert code == 0 and v["images"] == v["rows_identical"] == 200


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep, expected",
    [
        (slice(0, 2), "layer 1 is the output"),  # conv + pool: nothing to sum the rows into
        (slice(0, 3), "layer 2 is the output"),  # conv + pool, conv
    ],
)
def test_graphs_the_stream_does_not_run_are_one_line_and_write_nothing(
    keep, expected, models, tmp_path, capsys
):
    model = tmp_path / "cut.tflite"
    model.write_bytes(_truncate_ops(models["int8"], keep))
    compile_model(model.read_bytes())  # the default build takes it
    out = tmp_path / "fw"
    code, _, err = _compile(
        str(model), "--out", str(out), "--target", "host", "--ram-optimized", capsys=capsys
    )
    line = one_error_line(err)
    assert code == 2 and "--ram-optimized" in line and expected in line and "cut.tflite" in line, line
    assert not out.exists() and not list(tmp_path.glob(".fw*"))
