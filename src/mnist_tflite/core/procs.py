"""Child processes that die with their parent, and temp folders that a killed run leaves swept.

A ``SIGKILL`` runs no cleanup code, so two things are arranged up front: every child asks
the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG`` on Linux; a thread that
watches the parent's pid elsewhere), and every temp folder carries its owner's pid in its
name, so the next run removes the folders of owners that are gone. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARENT_PID_ENV = "MNIST_TFLITE_PARENT_PID"  # set for a `python -m` child: whom to die with
_PR_SET_PDEATHSIG = 1
_TEMP_RE = re.compile(r"^(mnist-tflite-[a-z]+)-(\d+)-")


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make the calling process die (SIGKILL) when ``parent_pid`` (default: its parent) exits.

    Call it first thing in a child. The kernel signals on Linux (when the parent *thread*
    that forked or spawned us exits: do that from the main thread); elsewhere a daemon
    thread polls the parent pid. If the parent is already gone, exit at once.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    # the parent may have died before prctl: then we were re-parented and nobody will signal
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def die_with_parent_from_env() -> None:
    """``die_with_parent`` for a ``python -m`` child started with ``child_env()``."""
    pid = os.environ.get(PARENT_PID_ENV, "")
    if pid.isdigit():
        die_with_parent(int(pid))


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should call ``die_with_parent_from_env``."""
    return {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def sweep_temp(prefix: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove ``<prefix>-<pid>-*`` folders in the temp dir whose pid is no longer running.

    Returns the folders removed. A pid that was reused by an unrelated process keeps its
    folder (a leak, never a loss).
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            m = _TEMP_RE.match(entry.name)
            if not m or m.group(1) != prefix or not entry.is_dir():
                continue
            pid = int(m.group(2))
            if pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def make_temp(prefix: str) -> str:
    """A new temp folder ``<prefix>-<pid>-XXXX``, after sweeping those of dead owners."""
    sweep_temp(prefix)
    return tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-")


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """``make_temp`` as a context manager: removed on exit, swept by the next run after a kill."""
    path = make_temp(prefix)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


_terminated: list[int] = []


def terminated() -> bool:
    """True once SIGTERM arrived in ``sigterm_as_interrupt``.

    The KeyboardInterrupt it raises can surface as another exception (a C extension being
    imported reports "ImportError: initialization failed"); the CLI checks this instead.
    """
    return bool(_terminated)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C (KeyboardInterrupt) while the block runs: cleanup code runs.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _terminated.append(signum)
        raise KeyboardInterrupt

    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While the block runs, SIGTERM does what Ctrl-C does: whatever handles SIGINT now handles it.

    For a library with its own graceful Ctrl-C (Ray Tune stops its trials and saves its state),
    ``kill PID`` then stops as gently as Ctrl-C does; where nothing else handles SIGINT, Python
    raises KeyboardInterrupt. Unlike :func:`sigterm_as_interrupt`, :func:`terminated` stays
    False: the command ends as after Ctrl-C, with its own message.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):
            on_sigint(signal.SIGINT, frame)
        else:  # SIGINT ignored (started in the background by a shell): stop all the same
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
