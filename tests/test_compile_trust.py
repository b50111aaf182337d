"""`compile` held to every command's standard (issue 19): it refuses what the others refuse, says
one line on a crafted model, leaves `--out` old or new (never half, never gone) whenever it is
killed, and leaves no process or temp folder behind."""

from __future__ import annotations

from tests.conftest import edited_model, one_error_line, require, run_cli

require("tflite_micro")  # before the imports that need them

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mnist_tflite import cli
from mnist_tflite.micro.aot import firmware
from tests.processes import assert_group_dies, live_group, wait_until

needs_m4 = pytest.mark.skipif(
    firmware.toolchain_problem("cortex-m4") is not None, reason=firmware.INSTALL_HINT
)
needs_gcc = pytest.mark.skipif(firmware.toolchain_problem("host") is not None, reason="needs gcc")


def _compile(*args: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["compile", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start(*args: str) -> subprocess.Popen:
    """``compile`` in its own process group (so that its children can be found)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_tflite", "compile", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# ---- models every command refuses ------------------------------------------------------------


def _op_edit(node: int, **options):
    def edit(model, schema):
        for key, value in options.items():
            setattr(model.subgraphs[0].operators[node].builtinOptions, key, value)

    return edit


def _tensor_edit(which, **quant_or_shape):
    """Edit the tensor ``which(graph)`` names: its quantization scale or its shape."""

    def edit(model, schema):
        g = model.subgraphs[0]
        t = g.tensors[which(g)]
        if "scale" in quant_or_shape:
            t.quantization.scale = [quant_or_shape["scale"]]
        if "shape" in quant_or_shape:
            t.shape = quant_or_shape["shape"]

    return edit


def _input_index(model, schema):
    op = model.subgraphs[0].operators[2]
    op.inputs = [int(i) for i in op.inputs[:1]] + [999] + [int(i) for i in op.inputs[2:]]


CRAFTED = {
    # case: (edit of the seed model, what the one line says)
    "conv-stride-0": (_op_edit(0, strideH=0), "CONV_2D (node 0): window 3x3 with stride 0x1"),
    "pool-stride-0": (_op_edit(1, strideW=0), "MAX_POOL_2D (node 1): window 2x2 with stride 2x0"),
    "input-index": (_input_index, "CONV_2D (node 2) names tensor 999"),
    "output-scale-0": (_tensor_edit(lambda g: g.operators[0].outputs[0], scale=0.0), "output: scale 0.0"),
    "input-scale-inf": (_tensor_edit(lambda g: g.inputs[0], scale=float("inf")), "input: scale inf"),
    "weights-shape": (
        _tensor_edit(lambda g: g.operators[0].inputs[1], shape=[32, 3, 3, 2]),
        "weights of shape [32, 3, 3, 2] but 288 values stored",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_models_are_one_line_never_a_traceback(case, models_dir, tmp_path, capsys):
    edit, expected = CRAFTED[case]
    model = tmp_path / f"{case}.tflite"
    model.write_bytes(edited_model((models_dir / "int8_softmax.tflite").read_bytes(), edit))
    out = tmp_path / "fw"
    code, _, err = _compile(str(model), "--out", str(out), "--target", "host", capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and expected in line, line
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


def _copy_with_sidecar(models_dir: Path, into: Path) -> Path:
    shutil.copy(models_dir / "int8.tflite", into / "int8.tflite")
    shutil.copy(models_dir / "int8.json", into / "int8.json")
    return into / "int8.tflite"


@needs_gcc
def test_a_model_its_sidecar_does_not_vouch_for_is_refused(models_dir, tmp_path, capsys):
    model = _copy_with_sidecar(models_dir, tmp_path)
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    out = tmp_path / "fw"
    code, _, err = _compile(str(model), "--out", str(out), "--target", "host", capsys=capsys)
    assert code == 2 and "does not match" in one_error_line(err) and not out.exists()
    args = ("--out", str(out), "--target", "host", "--images", "3", "--allow-modified")
    assert _compile(str(model), *args, capsys=capsys)[0] == 0


def test_incomplete_write_and_bad_identifier_are_refused(models_dir, tmp_path, capsys):
    model = _copy_with_sidecar(models_dir, tmp_path)
    marker = tmp_path / ".int8.tflite.writing"
    marker.touch()
    out = tmp_path / "fw"
    code, _, err = _compile(str(model), "--out", str(out), "--target", "host", capsys=capsys)
    assert code == 2 and "incomplete write" in one_error_line(err) and not out.exists()
    marker.unlink()
    odd = tmp_path / "odd.tflite"
    data = (models_dir / "int8.tflite").read_bytes()
    odd.write_bytes(data[:4] + b"XYZ3" + data[8:])
    code, _, err = _compile(str(odd), "--out", str(out), "--target", "host", capsys=capsys)
    assert code == 2 and "file identifier b'XYZ3'" in one_error_line(err) and not out.exists()


def test_verify_without_tflite_micro_fails_with_the_pip_command(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # as if it were not installed
    out = tmp_path / "fw"
    args = ("--out", str(out), "--target", "host", "--images", "3", "--verify")
    code, stdout, err = _compile(str(models_dir / "int8.tflite"), *args, capsys=capsys)
    assert code == 2 and "pip install 'mnist-tflite[micro]'" in one_error_line(err)
    assert "not run" not in stdout and not out.exists()


@pytest.mark.parametrize("name", sorted(firmware.SUPPORT_STEMS))
def test_a_name_that_would_overwrite_a_support_file_is_refused(name, models_dir, tmp_path, capsys):
    out = tmp_path / "fw"
    code, _, err = _compile(
        str(models_dir / "int8.tflite"), "--out", str(out), "--target", "host", "--name", name, capsys=capsys
    )
    line = one_error_line(err)
    assert code == 2 and ("support file" in line or "reserved" in line) and not out.exists()


# ---- first contact ---------------------------------------------------------------------------


@needs_gcc
def test_host_target_with_a_relative_out(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("--out", "fw_host/", "--target", "host", "--images", "3")
    code, _, err = _compile(str(models_dir / "int8.tflite"), *args, capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "fw_host" / "firmware_host").is_file()


@needs_m4
def test_make_host_and_make_run_in_a_cortex_m4_output(models_dir, tmp_path, capsys):
    out = tmp_path / "fw"
    assert (
        _compile(str(models_dir / "int8.tflite"), "--out", str(out), "--images", "3", capsys=capsys)[0] == 0
    )
    host = subprocess.run(["make", "host"], cwd=out, capture_output=True, text=True, timeout=300)
    assert host.returncode == 0, host.stderr
    assert (out / "firmware_host").is_file()
    run = subprocess.run(["make", "run"], cwd=out, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [ln for ln in run.stdout.splitlines() if ln.startswith("row ")]
    assert len(rows) == 3 and "done" in run.stdout.splitlines()
    assert "row " not in run.stderr
    # the rows `make run` prints are the ones compile recorded
    assert rows == [ln for ln in (out / "run.txt").read_text().splitlines() if ln.startswith("row ")]


@needs_gcc
def test_a_full_disk_says_what_could_not_be_written(models_dir, tmp_path):
    def small_files() -> None:  # in the child: files over 64 KB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    out = tmp_path / "fw"
    r = subprocess.run(
        [sys.executable, "-m", "mnist_tflite", "compile", str(models_dir / "int8.tflite"), "--out", str(out),
         "--target", "host", "--images", "3"],
        capture_output=True, text=True, timeout=300, preexec_fn=small_files,
    )  # fmt: skip
    line = one_error_line(r.stderr)
    assert r.returncode != 0 and "cannot write mnist_model.c (File too large)" in line, line
    assert line.startswith(f"mnist-tflite: error: {out}: ")
    assert not out.exists() and not list(tmp_path.glob(".fw*"))


# ---- kills -----------------------------------------------------------------------------------


def _state(out: Path) -> int | None:
    """None if ``out`` is absent; else assert it is one complete compile output: its image count."""
    if not out.exists():
        return None
    doc = json.loads((out / "compile.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == doc["files"]
    rows = [ln for ln in (out / "run.txt").read_text().splitlines() if ln.startswith("row ")]
    assert (
        len(rows)
        == doc["verification"]["target"]["images"]
        == (out / "test_images.bin").stat().st_size // 784
    )
    return len(rows)


def _temp_of(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"mnist-tflite-*-{pid}-*"))


@pytest.mark.slow
@needs_gcc
def test_sigkill_of_compile_force_at_20_random_moments(models_dir, tmp_path):
    """After each kill `--out` holds the previous or the new output, whole; nothing of it lives on."""
    out = tmp_path / "fw"
    model = str(models_dir / "tiny_int8.tflite")
    args = ("--out", str(out), "--target", "host", "--force")
    t = time.monotonic()
    assert run_cli("compile", model, *args, "--images", "1").returncode == 0
    seconds = time.monotonic() - t
    current, killed, rnd = 1, [], random.Random(19)
    for images in range(2, 22):
        p = _start(model, *args, "--images", str(images))
        time.sleep(rnd.uniform(0.0, seconds))
        p.kill()
        p.wait()
        killed.append(p.pid)
        assert_group_dies(p.pid, within=5.0)
        state = _state(out)
        assert state in (current, images), (state, current, images)
        current = state
    r = run_cli("compile", model, *args, "--images", "30")
    assert r.returncode == 0, r.stderr
    assert _state(out) == 30
    assert not [p.name for p in tmp_path.iterdir() if p.name != "fw"], "staging or lock left behind"
    assert not [d for pid in killed for d in _temp_of(pid) if "tflm" in d.name], "TFLM temp folders not swept"


@needs_m4
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_qemu_dies_with_a_killed_compile(sig, models_dir, tmp_path):
    p = _start(str(models_dir / "int8.tflite"), "--out", str(tmp_path / "fw"), "--images", "3000")
    try:
        qemu = wait_until(lambda: "qemu-system-arm" in map(_comm, live_group(p.pid)), 300)
    finally:
        p.send_signal(sig)
        code = p.wait(timeout=30)
    assert qemu, "QEMU was not started"
    assert_group_dies(p.pid, within=5.0)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    left = [f.name for f in tmp_path.iterdir()]
    # SIGTERM cleans up; after SIGKILL the next run sweeps (test_sigkill_of_compile_force_...)
    assert "fw" not in left and (sig == signal.SIGKILL or not left), left


@needs_m4
def test_temp_folders_carry_the_pid_and_are_swept(models_dir, mnist, monkeypatch):
    from mnist_tflite.micro.aot import columns

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"mnist-tflite-compile-{dead.pid}-"))
    seen: list[list[Path]] = []
    real = firmware.build

    def spy(directory: Path, name: str, target: str) -> None:
        seen.append(_temp_of(os.getpid()))
        real(directory, name, target)

    monkeypatch.setattr(firmware, "build", spy)
    columns.compiled_columns({"int8": models_dir / "int8.tflite"}, mnist.x_test, count=2, log=lambda m: None)
    assert not left.exists(), "a dead owner's folder is swept"
    assert [p.name.startswith(f"mnist-tflite-compile-{os.getpid()}-") for p in seen[0]] == [True]
    assert not [p for p in _temp_of(os.getpid()) if "compile" in p.name], "removed after use"
