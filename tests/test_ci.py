"""CI's own rules: ``--strict-skips`` (set by ``.ci/run``) turns a skip into a failed session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIP_IN_TEST = """
import pytest

def test_x():
    pytest.skip("no QEMU here")
"""
SKIPIF = """
import pytest

@pytest.mark.skipif(True, reason="needs root")
def test_x():
    pass
"""
SKIP_AT_COLLECTION = """
import pytest

pytest.importorskip("no_such_module_here")

def test_x():
    pass
"""
SKIP_BESIDE_A_PASS = """
import pytest

def test_a():
    pass

def test_b():
    pytest.skip("x")
"""
CASES = {
    "a test that skips itself": SKIP_IN_TEST,
    "a skipif mark": SKIPIF,
    "a module that skips at collection": SKIP_AT_COLLECTION,
    "a skip beside a passing test": SKIP_BESIDE_A_PASS,
}


def _pytest(tmp_path: Path, body: str, *options: str) -> subprocess.CompletedProcess:
    """A session of one small test file, with this suite's conftest loaded as a plugin."""
    (tmp_path / "test_tiny.py").write_text(body)
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir", tmp_path]
    return subprocess.run(
        [sys.executable, *map(str, argv), *options, str(tmp_path / "test_tiny.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_a_skip_fails_the_session_under_strict_skips(tmp_path, body):
    relaxed = _pytest(tmp_path, body)
    # a developer's machine: a skip is fine (5: every test of the session skipped at collection)
    assert relaxed.returncode in (0, 5), relaxed.stdout + relaxed.stderr
    strict = _pytest(tmp_path, body, "--strict-skips")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "skipped, but CI must run them (--strict-skips)" in strict.stdout
    assert "test_tiny.py" in strict.stdout.split("--strict-skips")[-1]


def test_passing_and_xfail_tests_pass_under_strict_skips(tmp_path):
    body = "import pytest\n\n@pytest.mark.xfail(strict=True)\ndef test_b():\n    raise ValueError\n"
    strict = _pytest(tmp_path, body, "--strict-skips")
    assert strict.returncode == 0, strict.stdout + strict.stderr


def test_a_failure_keeps_its_exit_status_under_strict_skips(tmp_path):
    body = SKIP_BESIDE_A_PASS.replace("pass", "assert False")
    assert _pytest(tmp_path, body, "--strict-skips").returncode == 1


def test_ci_runs_the_suite_with_strict_skips():
    script = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pytest -q -p no:cacheprovider --strict-skips "$@"' in script
