"""The watcher that outlives ``kill -9``: what the owner started ends, orphans included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mnist_tflite.core.reaper import TAG_VAR, is_running, reaping

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the watcher reads /proc (Linux)")

# The owner starts a child that starts a grandchild and exits at once: the grandchild is
# re-parented to init before any poll of the watcher can see it as the owner's descendant.
OWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    from mnist_tflite.core.reaper import reaping
    orphan = (
        "import os, time; from pathlib import Path; "
        "stat = Path(f'/proc/{os.getpid()}/stat').read_text().rsplit(')', 1)[1].split(); "
        "print(os.getpid(), stat[19], flush=True); time.sleep(300)"
    )
    with reaping():
        time.sleep(0.6)  # the watcher is polling
        middle = (
            "import subprocess, sys; "
            f"subprocess.Popen([sys.executable, '-c', {orphan!r}], stdout=sys.stdout, start_new_session=True)"
        )
        subprocess.run([sys.executable, "-c", middle], check=True)
        time.sleep(300)
    """
)


def _wait_gone(pid: int, start: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while is_running(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not is_running(pid, start)


def test_an_orphan_born_just_before_kill_9_is_ended_within_5_s():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        pid, start = map(int, owner.stdout.readline().split())  # type: ignore[union-attr]
        assert is_running(pid, start)
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        assert parent != str(owner.pid)  # not a child: the watcher cannot find it as a descendant
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _wait_gone(pid, start, 5.0), f"orphan {pid} still runs 5 s after the owner's kill -9"
    finally:
        owner.kill()


def test_the_mark_is_only_inside_the_block_and_nests():
    before = os.environ.get(TAG_VAR)
    with reaping():
        outer = os.environ[TAG_VAR]
        with reaping():
            assert os.environ[TAG_VAR].startswith(outer + ",")
        assert os.environ[TAG_VAR] == outer
    assert os.environ.get(TAG_VAR) == before
