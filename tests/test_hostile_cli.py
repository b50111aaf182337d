"""Hostile command lines: every command with bad option values and bad paths, a full disk,
a read-only folder, missing optional modules and a closed stdout pipe.

Each case must end with an allowed exit code (1 or 2 for an error), a last stderr line
``mnist-tflite: error: ...`` naming the option or file, no traceback, and nothing written at
the output path. Most cases call ``cli.main`` in this process (fast); a sample runs as real
processes, where a signal or an interpreter-level traceback would show.
"""

from __future__ import annotations

from tests.conftest import cli_argv, require, run_cli

# these cases drive every command, the training and serving ones included
require("tensorflow", "tflite_micro", "fastapi", "uvicorn")

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite.cli import main
from tests.hostile_cases import (
    ERROR_LINE,
    MODELS,
    Case,
    build_workspace,
    check_outcome,
    leftovers,
    option_cases,
    path_cases,
)

OPTION_CASES = option_cases()
PATH_CASES = path_cases()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, test_images) -> Path:
    return build_workspace(tmp_path_factory.mktemp("hostile"), test_images[0])


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", OPTION_CASES + PATH_CASES, ids=lambda c: c.id)
def test_bad_command_line(case: Case, ws: Path):
    argv, _, _ = case.resolve(ws)
    code, _, err = run_in_process(argv)
    check_outcome(case, ws, code, err)
    assert not leftovers(ws), leftovers(ws)


# -- the same cases as real processes: exit codes, signals, interpreter-level tracebacks ---

SAMPLE = [c for c in (OPTION_CASES + PATH_CASES)[::16] if not any("\0" in a for a in c.argv)]


@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: f"process-{c.id}")
def test_bad_command_line_in_a_process(case: Case, ws: Path):
    argv, _, _ = case.resolve(ws)
    proc = run_cli(*argv, timeout=120)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}"
    check_outcome(case, ws, proc.returncode, proc.stderr)


# -- a full disk and a read-only folder --------------------------------------------------


@pytest.fixture
def full_and_ro(tmp_path) -> dict[str, Path]:
    """A 64 KB tmpfs filled to the last byte (a full disk) and a read-only bind mount."""
    full, ro, src = tmp_path / "full", tmp_path / "ro", tmp_path / "ro-src"
    for d in (full, ro, src):
        d.mkdir()
    mounted = []
    try:
        for cmd in (
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
            ["mount", "--bind", "-o", "ro", str(src), str(ro)],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a test file system here (needs root): {proc.stderr.strip()}")
            mounted.append(Path(cmd[-1]))
        with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield {"full": full, "ro": ro}
    finally:
        for d in reversed(mounted):
            subprocess.run(["umount", str(d)], check=False)


DISK_CASES = [
    ("train", ("train", "--data", "sample", "--epochs", "1", "--out", "{D}/m.keras")),
    ("run", ("run", "--data", "sample", "--epochs", "1", "--out", "{D}/run")),
    ("convert", ("convert", "{M}/model.keras", "--recipe", "float32", "--out", "{D}/f.tflite")),
    ("pareto", ("pareto", "{W}/goodrun", "--out", "{D}/pareto")),
    ("export-micro", ("export-micro", "{M}/int8.tflite", "--out", "{D}/micro")),
    ("show-input", ("predict", "{M}/int8.tflite", "{W}/digit.png", "--show-input", "{D}/inputs")),
]
# convert on a full disk gets past the checks to the TensorFlow converter: the slow test below
DISK_PARAMS = [(c, k, a) for c, a in DISK_CASES for k in ("full", "ro") if (c, k) != ("convert", "full")]


@pytest.mark.parametrize("command,kind,argv", DISK_PARAMS, ids=[f"{c}-{k}" for c, k, _ in DISK_PARAMS])
def test_full_disk_and_read_only_folder(command, kind, argv, full_and_ro, ws, monkeypatch):
    d = full_and_ro[kind]
    import mnist_tflite.training.train as train_mod

    def no_training(*a, **k):
        raise AssertionError("trained before checking that --out can be written")

    monkeypatch.setattr(train_mod, "train", no_training)
    args = [a.replace("{D}", str(d)).replace("{W}", str(ws)).replace("{M}", str(MODELS)) for a in argv]
    before = sorted(p.name for p in d.iterdir())
    code, _, err = run_in_process(args)
    assert "Traceback" not in err
    assert code in (1, 2), err
    last = err.strip().splitlines()[-1]
    assert ERROR_LINE.match(last) and str(d) in last, last
    assert sorted(p.name for p in d.iterdir()) == before, "something was left on the disk"


def test_write_on_a_full_disk(full_and_ro):
    """The write path convert and run use (model + sidecar) on a full disk: one error, no temp."""
    from mnist_tflite.core.errors import SystemRefused
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.training.convert import write_tflite

    target = full_and_ro["full"] / "float32.tflite"
    with pytest.raises(SystemRefused, match="No space left on device") as info:
        write_tflite(target, (MODELS / "float32.tflite").read_bytes(), get_recipe("float32"))
    assert str(target) in str(info.value)
    assert [p.name for p in full_and_ro["full"].iterdir()] == ["filler"]


@pytest.mark.slow
def test_convert_on_a_full_disk(full_and_ro):
    target = full_and_ro["full"] / "f.tflite"
    proc = run_cli(
        "convert", str(MODELS / "model.keras"), "--recipe", "float32", "--out", str(target), timeout=120
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mnist-tflite: error: {target}: cannot write")
    assert [p.name for p in full_and_ro["full"].iterdir()] == ["filler"]


# -- missing optional modules ------------------------------------------------------------

EXTRA_CASES = [
    ("tensorflow", "train", ["train", "--out", "{W}/out/x.keras"]),
    ("tensorflow", "train", ["convert", "{M}/model.keras", "--out", "{W}/out/x.tflite"]),
    ("tensorflow", "train", ["run", "--out", "{W}/out/extra-run"]),
    ("tflite_micro", "micro", ["run", "--out", "{W}/out/extra-run2"]),
    ("fastapi", "serve", ["serve", "{M}/int8.tflite"]),
    ("uvicorn", "serve", ["serve", "{M}/int8.tflite"]),
    ("pydantic", "serve", ["serve", "{M}/int8.tflite"]),
    ("tflite_micro", "micro", ["export-micro", "{M}/int8.tflite", "--out", "{W}/out/em", "--verify"]),
    ("tflite_micro", "micro", ["export-micro", "{M}/int8.tflite", "--out", "{W}/out/em"]),  # the arena: TFLM
]
# one process for all: hide a module, run the command, put the module back
EXTRA_CHILD = """
import contextlib, io, json, sys
from mnist_tflite.cli import main
for module, argv in json.load(sys.stdin):
    saved = sys.modules.get(module)
    sys.modules[module] = None  # what `import module` sees when it is not installed
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if saved is None:
        del sys.modules[module]
    else:
        sys.modules[module] = saved
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


@pytest.fixture(scope="module")
def extra_results(ws) -> list:
    import json

    cases = [
        [m, [a.replace("{W}", str(ws)).replace("{M}", str(MODELS)) for a in argv]]
        for m, _, argv in EXTRA_CASES
    ]
    proc = subprocess.run(
        [sys.executable, "-c", EXTRA_CHILD],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("i", range(len(EXTRA_CASES)), ids=[f"{m}-{a[0]}" for m, _, a in EXTRA_CASES])
def test_missing_extra_prints_the_pip_command(i, extra_results, ws):
    module, extra, _ = EXTRA_CASES[i]
    code, err = extra_results[i]
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mnist-tflite: error:") and module in last
    assert f"pip install 'mnist-tflite[{extra}]'" in last
    assert not leftovers(ws) and not any((ws / "out").iterdir()), "an output was created"


# -- stdout closed early (`| head`) -------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_json_into_head_exits_quietly(command, ws, mnist):
    """A real shell pipe into `head -c 10`: 10,000 predictions (far more than a pipe holds),
    or an evaluation (small: the pipe may or may not still be open when it is written)."""
    batch = ws / "many.npy"
    np.save(batch, mnist.x_test)
    args = {
        "predict": f'predict "{MODELS}/int8.tflite" "{batch}" --json',
        "evaluate": f'evaluate "{MODELS}/int8.tflite" --data embedded --latency-samples 0 --json',
    }[command]
    cmd = f'"{sys.executable}" -m mnist_tflite {args} | head -c 10'
    proc = subprocess.run(
        ["bash", "-c", cmd + '; echo "status=${PIPESTATUS[0]}" >&2'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(proc.stdout) == 10
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    status = int(proc.stderr.strip().splitlines()[-1].split("=")[1])
    assert status in (0, 141), proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", f"{MODELS}/int8.tflite", "--data", "embedded", "--latency-samples", "0", "--json"],
        ["recipes", "--json"],
        ["recipes"],
    ],
    ids=["evaluate-json", "recipes-json", "recipes"],
)
def test_stdout_closed_before_the_output(argv):
    """The reader is gone before anything is written: exit 141 (as for SIGPIPE), one quiet end."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            cli_argv(*argv),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode in (141, 2), proc.stderr


@pytest.mark.slow
def test_keras_save_on_a_full_disk(full_and_ro):
    """`train`'s last step, if the disk fills during training: one error, no temp files."""
    from mnist_tflite.core.errors import SystemRefused
    from mnist_tflite.training.model import build
    from mnist_tflite.training.train import save_model

    target = full_and_ro["full"] / "model.keras"
    with pytest.raises(SystemRefused, match="No space left on device") as info:
        save_model(build("tiny"), target)
    assert str(target) in str(info.value)
    assert [p.name for p in full_and_ro["full"].iterdir()] == ["filler"]
