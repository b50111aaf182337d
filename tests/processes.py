"""Helpers for tests that kill processes: who is still alive in a process group, and waiting."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def live_group(pgid: int) -> list[int]:
    """Pids of processes in group ``pgid`` that are still running (zombies are dead)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in "ZX":
            alive.append(int(entry.name))
    return alive


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def assert_group_dies(pgid: int, within: float = 2.0) -> None:
    try:
        assert wait_until(lambda: not live_group(pgid), within), f"still running: {live_group(pgid)}"
    finally:
        for pid in live_group(pgid):  # never leave a spinning child behind, even when failing
            os.kill(pid, signal.SIGKILL)
