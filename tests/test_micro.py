"""export-micro and the TFLM check: real models in the real TFLM interpreter, real test digits."""

from __future__ import annotations

from tests.conftest import edited_model, one_error_line, require

require("tflite_micro")  # before the imports that need them

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite import cli
from mnist_tflite.edge.evaluate import VariantResult
from mnist_tflite.edge.flatbuffer import parse
from mnist_tflite.micro.tflm import export as micro
from mnist_tflite.micro.tflm.c_source import identifier_problem, resolver_method
from mnist_tflite.micro.tflm.check import disagreement
from mnist_tflite.micro.tflm.interpreter import _runs, map_in_children
from tests.conftest import run_cli

STUB = Path(__file__).parent / "micro_stub" / "tflm_stub.h"


def _copy(models_dir: Path, name: str, dest: Path, sidecar: bool = True) -> Path:
    shutil.copy(models_dir / f"{name}.tflite", dest / f"{name}.tflite")
    if sidecar:
        shutil.copy(models_dir / f"{name}.json", dest / f"{name}.json")
    return dest / f"{name}.tflite"


def _export(*args: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["export-micro", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_parse_finds_ops_io_and_macs_of_the_seed_cnn(models_dir):
    info = parse((models_dir / "int8.tflite").read_bytes())
    assert info.ops[0] == "CONV_2D" and {"FULLY_CONNECTED", "MAX_POOL_2D"} <= set(info.ops)
    assert info.nodes[-1].op == "FULLY_CONNECTED" and "SOFTMAX" not in info.ops  # int8 logits
    assert info.op_counts()["CONV_2D"] == 2
    assert (info.input.dtype, info.output.dtype) == ("INT8", "INT8")
    assert info.input.shape == (1, 28, 28, 1) and info.output.shape[-1] == 10
    assert info.input.scale == pytest.approx(1 / 255) and info.input.zero_point == -128
    # Conv(32,3) on 28x28x1 -> 26x26x32; Conv(64,3) on 13x13x32 -> 11x11x64; Dense 5*5*64 -> 10
    conv = 26 * 26 * 32 * 3 * 3 * 1 + 11 * 11 * 64 * 3 * 3 * 32
    assert info.macs_by_op() == {"CONV_2D": conv, "FULLY_CONNECTED": 5 * 5 * 64 * 10}
    assert micro.int8_problem(info) is None
    assert "--allow-float" in micro.int8_problem(parse((models_dir / "float32.tflite").read_bytes()))


def test_arena_search_finds_the_exact_minimum(models_dir):
    data, info = micro.load(models_dir / "int8.tflite")
    arena = micro.measure_arena(data, info, "int8.tflite")
    low = arena["min_bytes"]
    works, fails = (r.value for r in map_in_children(_runs, [(data, low), (data, low - 1)]))
    assert works and not fails
    assert arena["search"]["last_failing_bytes"] == low - 1
    assert arena["recommended_bytes"] >= low * 1.10 and arena["recommended_bytes"] % 1024 == 0
    # TFLM's own recording allocator agrees with the bisection
    assert abs(arena["search"]["recorded_total_bytes"] - low) < 1024
    steps = arena["search"]["steps"]
    assert steps[0]["ok"] and len(steps) <= 30


def test_export_writes_c_sources_that_compile(models_dir, tmp_path, capsys):
    out = tmp_path / "fw"
    code, stdout, _ = _export(
        str(models_dir / "int8.tflite"), "--out", str(out), "--name", "digits", capsys=capsys
    )
    assert code == 0, stdout
    data = (models_dir / "int8.tflite").read_bytes()
    cc = (out / "digits_data.cc").read_text()
    assert "alignas(16) const unsigned char digits[]" in cc
    assert f"const unsigned int digits_len = {len(data)};" in cc
    array = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", cc))
    assert array == data
    ops_h = (out / "digits_ops.h").read_text()
    n_ops = len(parse(data).ops)  # 7 for the seed CNN with int8 logits (no SOFTMAX)
    assert f"tflite::MicroMutableOpResolver<{n_ops}>" in ops_h
    assert ops_h.count("resolver.Add") == n_ops and "AddConv2D()" in ops_h and "AddFullyConnected()" in ops_h
    summary = json.loads((out / "micro.json").read_text())
    assert summary["flash_bytes"] == len(data) and summary["ops"] == parse(data).ops
    assert (
        f"digits_arena_size = {summary['arena']['recommended_bytes']};" in (out / "digits_data.h").read_text()
    )
    assert "flash" in stdout and "MACs" in stdout
    obj = tmp_path / "digits_data.o"
    res = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "-c", str(out / "digits_data.cc"), "-o", str(obj)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert obj.stat().st_size > len(data)


def test_main_cc_and_resolver_are_valid_cpp(models_dir, tmp_path, capsys):
    """Syntax-check main.cc + the ops header against stand-ins for the four TFLM headers it includes."""
    for model in ("int8", "float32"):
        out = tmp_path / model
        assert (
            _export(str(models_dir / f"{model}.tflite"), "--out", str(out), "--allow-float", capsys=capsys)[0]
            == 0
        )
        for header in (
            "tensorflow/lite/micro/micro_interpreter.h",
            "tensorflow/lite/micro/micro_log.h",
            "tensorflow/lite/micro/micro_mutable_op_resolver.h",
            "tensorflow/lite/schema/schema_generated.h",
        ):
            (tmp_path / "inc" / header).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "inc" / header).write_text(f'#include "{STUB}"\n')
        cmd = [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-fsyntax-only",
            f"-I{tmp_path / 'inc'}",
            str(out / "main.cc"),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_tflm_agrees_with_litert_builtin_kernels_within_one_step(models_dir, test_images):
    """int8 logits: a few rows differ by one step (see test_tflm_rounding.py for why)."""
    images, labels = test_images
    v = micro.verify(models_dir / "int8.tflite", images[:600], labels[:600], arena_bytes=33 * 1024)
    b = v["vs_litert_builtin"]
    assert b["max_abs_diff"] <= 1 and b["rows_differing"] <= 0.01 * 600
    assert disagreement(v) is None
    assert v["accuracy"] > 0.95 and v["images"] == 600 and v["output_dtype"] == "int8"
    assert abs(v["accuracy"] - v["litert_accuracy"]) <= 2 / 600


def test_deployer_columns_for_every_variant(models_dir, test_images):
    images, labels = test_images
    rows = [
        VariantResult(name=n, path=str(models_dir / f"{n}.tflite")) for n in ("float32", "float16", "int8")
    ]
    rows.append(VariantResult(name="dynamic", status="failed", error="conversion failed"))
    rep = micro.deployer_columns(rows, images[:300], labels[:300], log=lambda m: None)
    f32, f16, i8, _ = rows
    assert i8.extra["arena_bytes"] < f32.extra["arena_bytes"]
    assert "arena_bytes" not in f16.extra and "float16" in rep["variants"]["float16"]["problem"]
    assert all(r.extra["macs"] == i8.extra["macs"] > 2_000_000 for r in (f32, f16))
    assert i8.extra["flash_bytes"] == (models_dir / "int8.tflite").stat().st_size
    assert list(rep["verification"]) == ["int8"]
    v = rep["verification"]["int8"]
    assert v["vs_litert_builtin"]["max_abs_diff"] <= 1 and v["of_images"] == 300
    same = 300 - v["vs_litert_builtin"]["rows_differing"]
    assert any(f"{same:,}/300 output rows identical" in n for n in rep["notes"])
    assert not any("bit-exact" in n for n in rep["notes"])  # a count, never a blanket word


def test_a_crash_in_tflm_is_reported_not_suffered():
    (res,) = map_in_children(signal.raise_signal, [(signal.SIGSEGV,)])
    assert res.signal == "SIGSEGV" and not res.ok


# -- bad input: one line, exit 2, nothing written ----------------------------------------


def test_float_model_needs_allow_float(models_dir, tmp_path, capsys):
    out = tmp_path / "fw"
    code, _, err = _export(str(models_dir / "float32.tflite"), "--out", str(out), capsys=capsys)
    assert code == 2 and "not a fully int8 model" in one_error_line(err) and "--allow-float" in err
    assert not out.exists()
    code, stdout, _ = _export(
        str(models_dir / "float32.tflite"), "--out", str(out), "--allow-float", capsys=capsys
    )
    assert code == 0 and "float32 [1, 28, 28, 1]" in stdout
    assert "input->data.f[i]" in (out / "main.cc").read_text()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("float16", "TFLM lacks float16 support: DEQUANTIZE"),
        ("dynamic", "TFLM does not run hybrid (dynamic-range) models"),
        ("topk", "TFLM has no kernel for op TOPK_V2"),
        ("crash", "corrupt model: the TFLM interpreter crashed (SIGFPE)"),
        ("garbage", "corrupt model: cannot parse the flatbuffer"),
        ("tampered", "does not match"),
    ],
)
def test_models_tflm_cannot_run_get_one_line(model, expected, models_dir, tmp_path, capsys):
    int8 = (models_dir / "int8.tflite").read_bytes()

    def topk(m, schema):  # an op LiteRT knows and TFLM lacks
        for oc in m.operatorCodes:
            if oc.builtinCode == schema.BuiltinOperator.MAX_POOL_2D:
                oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.TOPK_V2

    def crash(m, schema):  # conv weights with zero-width dimensions: TFLM divides by zero
        m.subgraphs[0].tensors[9].shape = np.array([32, 0, 30, 0], dtype=np.int32)

    if model in ("float16", "dynamic"):
        path = _copy(models_dir, model, tmp_path)
    elif model == "tampered":  # sidecar hash no longer matches
        path = _copy(models_dir, "int8", tmp_path)
        path.write_bytes(int8[:-1] + bytes([int8[-1] ^ 1]))
    else:
        path = tmp_path / f"{model}.tflite"
        if model == "garbage":
            path.write_bytes(int8[:8] + np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
        else:
            path.write_bytes(edited_model(int8, topk if model == "topk" else crash))
    out = tmp_path / "fw"
    code, _, err = _export(str(path), "--out", str(out), "--allow-float", capsys=capsys)
    assert code == 2 and expected in one_error_line(err)
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


@pytest.mark.parametrize("name", ["9lives", "my-model", "int", "__x", ""])
def test_name_must_be_a_c_identifier(name, models_dir, tmp_path, capsys):
    code, _, err = _export(
        str(models_dir / "int8.tflite"), "--out", str(tmp_path / "fw"), "--name", name, capsys=capsys
    )
    assert code == 2 and "--name" in one_error_line(err)
    assert not (tmp_path / "fw").exists()


def test_existing_out_is_refused_unless_forced(models_dir, tmp_path, capsys):
    model, out = str(models_dir / "int8.tflite"), tmp_path / "fw"
    assert _export(model, "--out", str(out), capsys=capsys)[0] == 0
    (out / "mnist_model_data.cc").write_text("stale")
    code, _, err = _export(model, "--out", str(out), capsys=capsys)
    assert code == 2 and "already exists (pass --force" in one_error_line(err)
    assert (out / "mnist_model_data.cc").read_text() == "stale"
    assert _export(model, "--out", str(out), "--force", "--name", "m2", capsys=capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        json.loads((out / "micro.json").read_text())["files"]
    )
    foreign = tmp_path / "src"
    foreign.mkdir()
    (foreign / "keep.c").write_text("int x;")
    code, _, err = _export(model, "--out", str(foreign), "--force", capsys=capsys)
    assert code == 2 and "not written by export-micro" in one_error_line(err)
    assert (foreign / "keep.c").exists()


def test_resolver_methods_and_identifiers():
    assert [resolver_method(o) for o in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "PADV2")] == [
        "AddConv2D",
        "AddDepthwiseConv2D",
        "AddMaxPool2D",
        "AddPadV2",
    ]
    assert identifier_problem("mnist_model") is None and identifier_problem("class") is not None


@pytest.mark.slow
def test_cli_verify_in_a_fresh_process_without_tensorflow(models_dir, mnist, tmp_path):
    """The user's command, end to end on 1,000 real test digits; it must not import TensorFlow."""
    npz = tmp_path / "digits.npz"
    np.savez(
        npz,
        x_train=mnist.x_train[:10],
        y_train=mnist.y_train[:10],
        x_test=mnist.x_test[:1000],
        y_test=mnist.y_test[:1000],
    )
    code = (
        "import sys; from mnist_tflite import cli; rc = cli.main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules, 'TF imported'; sys.exit(rc)"
    )
    out = tmp_path / "fw"
    args = [str(models_dir / "int8.tflite"), "--out", str(out), "--verify", "--data", str(npz), "--json"]
    res = subprocess.run(
        [sys.executable, "-c", code, "export-micro", *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    v = json.loads(res.stdout)["verification"]
    assert v["images"] == 1000 and v["vs_litert_builtin"]["max_abs_diff"] <= 1
    assert json.loads((out / "micro.json").read_text())["verification"] == v
    same = 1000 - v["vs_litert_builtin"]["rows_differing"]
    summary = (out / "summary.txt").read_text()
    assert f"{same:,}/1,000 output rows identical" in summary and "bit-exact" not in summary
    help_text = run_cli("export-micro", "--help").stdout
    assert "--allow-float" in help_text and "example:" in help_text


def test_one_exit_rule_for_run_and_export_micro():
    """More than one quantization step between TFLM and LiteRT's builtin kernels fails both."""

    def v(dtype: str, rows: int, steps: float) -> dict:
        builtin = {"rows_differing": rows, "predictions_differing": 0, "max_abs_diff": steps}
        return {"output_dtype": dtype, "images": 10_000, "vs_litert_builtin": builtin}

    assert disagreement(v("int8", 0, 0.0)) is None
    assert disagreement(v("int8", 37, 1.0)) is None
    problem = disagreement(v("int8", 3, 2.0))
    assert problem and "3 of 10,000 int8 output rows differ" in problem and "at most 1 step" in problem
    assert disagreement(v("float32", 500, 1e-6)) is None
    assert disagreement(None) is None
