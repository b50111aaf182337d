"""Hostile files through the CLI: corrupted models, sidecars of every wrong type, broken
arrays and images, run reports that are not what ``run`` wrote.

The cases run in child processes (one per group, ``cli.main`` called once per case), so a
decoder or LiteRT crash would show as a signal instead of taking pytest down. Each case must
end with an allowed exit code, one ``mnist-tflite: error:`` line naming the file (and the
sidecar key), no traceback, and nothing at its output path.
"""

from __future__ import annotations

from tests.conftest import require

# these cases drive every command, the training and serving ones included
require("tensorflow", "tflite_micro", "fastapi", "uvicorn")

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile_cases import build_workspace, check_outcome, leftovers
from tests.hostile_files import (
    data_cases,
    input_cases,
    model_cases,
    report_cases,
    sidecar_cases,
    write_files,
)

GROUPS = {
    "models": model_cases(),
    "sidecars": sidecar_cases(),
    "inputs": input_cases(),
    "reports": report_cases(),
    "data": data_cases(),
}

CHILD = """
import contextlib, io, json, sys, traceback
from mnist_tflite.cli import main
for case in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(case["argv"])
    except BaseException:
        code = "escaped"
        err.write(traceback.format_exc())
    print(json.dumps({"id": case["id"], "code": code, "stderr": err.getvalue()[-4000:]}), flush=True)
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory, test_images) -> Path:
    w = build_workspace(tmp_path_factory.mktemp("hostile-files"), test_images[0])
    for cases in GROUPS.values():
        for _, make in cases:
            write_files(w, make(test_images[0]))
    return w


@pytest.fixture(scope="module")
def results(ws) -> dict[str, dict]:
    """Every group's cases, each group in one child process."""
    out: dict[str, dict] = {}
    for group, cases in GROUPS.items():
        payload = [{"id": c.id, "argv": c.resolve(ws)[0]} for c, _ in cases]
        proc = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=600,
        )
        for line in proc.stdout.splitlines():
            r = json.loads(line)
            out[r["id"]] = r
        out[f"__{group}__"] = {"returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
    return out


PARAMS = [pytest.param(group, case, id=case.id) for group, cases in GROUPS.items() for case, _ in cases]


@pytest.mark.parametrize("group,case", PARAMS)
def test_hostile_file(group, case, results, ws):
    r = results.get(case.id)
    if r is None:
        child = results[f"__{group}__"]
        pytest.fail(f"no result: the {group} child exited {child['returncode']}: {child['stderr']}")
    check_outcome(case, ws, r["code"], r["stderr"])


def test_children_exited_cleanly_and_left_nothing(results, ws):
    for group in GROUPS:
        child = results[f"__{group}__"]
        assert child["returncode"] == 0, f"{group}: {child}"
    assert not leftovers(ws)
