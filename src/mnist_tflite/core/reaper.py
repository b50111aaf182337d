"""A watcher that outlives us: after ``kill -9``, it ends what we started and sweeps our temp folders.

Ray's daemons share our fate through the kernel (``PR_SET_PDEATHSIG``), but the processes
they start in turn do not: after a ``kill -9`` of ``tune``, Ray's dashboard and runtime-env
agents were alive 40 s later. A SIGKILL runs no cleanup code, so the cleanup runs elsewhere:
:func:`reaping` starts this module as a small process in its own session. It notes our
descendants every :data:`POLL_S` (pid and start time, so a reused pid is never hit) and,
once we are gone (or the block ends), kills those still alive and removes the temp folders
``<prefix>-<pid>-*`` whose owners are gone. No TensorFlow, no Ray: the standard library only.

A process born in the last poll interval before the ``kill -9`` is never seen as a descendant:
once we are dead it belongs to init. So the block also marks the environment every process
it starts inherits (:data:`TAG_VAR`), and after our death the watcher also kills every process
whose environment carries our mark (CI caught two such orphans of a Ray worker once).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

POLL_S = 0.25
_MODULE = "mnist_tflite.core.reaper"
_DONE = b"done\n"
TAG_VAR = "MNIST_TFLITE_REAPER_TAGS"


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                tree.setdefault(stat[0], []).append(int(entry.name))
    return tree


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process; None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``root`` but watchers (this one, nested ones:
    each finishes its own sweep)."""
    tree, found, todo = _children(), set(), [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child == os.getpid() or _is_watcher(child):
                continue
            stat = _stat(child)
            if stat:
                found.add((child, stat[1]))
                todo.append(child)
    return found


def _is_watcher(pid: int) -> bool:
    try:
        return _MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_running(pid: int, start: int) -> bool:
    """Whether the process ``pid`` that started at ``start`` (clock ticks after boot) still runs."""
    stat = _stat(pid)
    return bool(stat and stat[1] == start)


def tagged(tag: str) -> set[tuple[int, int]]:
    """(pid, start time) of every live process but watchers whose environment at start carried
    ``tag`` in :data:`TAG_VAR`."""
    needle = f"{TAG_VAR}=".encode()
    found: set[tuple[int, int]] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle) and tag.encode() in var[len(needle) :].split(b","):
                stat = _stat(int(entry.name))
                if stat and not _is_watcher(int(entry.name)):
                    found.add((int(entry.name), stat[1]))
                break
    return found


def _kill(seen: set[tuple[int, int]]) -> None:
    for pid, start in seen:
        if is_running(pid, start):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def watch(owner: int, prefixes: Sequence[str], paths: Sequence[str] = (), tag: str = "") -> None:
    """Note ``owner``'s descendants until it exits or says it is done on stdin; then kill them
    and the processes marked with ``tag``, sweep the temp folders of ``prefixes`` and remove
    ``paths`` (folders named with the owner's pid, such as a half-built output). The body of
    the watcher process."""
    import select

    from mnist_tflite.core.procs import pid_alive, sweep_temp

    seen: set[tuple[int, int]] = set()
    while pid_alive(owner) and _stat(owner) is not None:
        seen |= descendants(owner)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and sys.stdin.buffer.readline() in (_DONE, b""):
            break
    for _ in range(3):  # what a dying daemon started a moment ago is caught on the next pass
        seen |= {d for pid, _ in seen for d in descendants(pid)}
        if tag:
            seen |= tagged(tag)
        _kill(seen)
        time.sleep(POLL_S)
    deadline = time.monotonic() + 5
    while any(is_running(*p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    for prefix in prefixes:
        sweep_temp(prefix)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def reaping(prefixes: Sequence[str] = (), paths: Sequence[str | os.PathLike[str]] = ()) -> Iterator[None]:
    """While the block runs, a watcher notes our descendants; when it ends, or when we are
    killed, the watcher kills those left, sweeps the temp folders ``<prefix>-<pid>-*`` of dead
    owners and removes ``paths`` if they exist. Linux only (it reads /proc); elsewhere it does
    nothing."""
    if not os.path.isdir("/proc/self"):
        yield
        return
    owner = os.getpid()
    tag = f"{owner}.{(_stat(owner) or (0, 0))[1]}"
    job = {"owner": owner, "prefixes": list(prefixes), "paths": [str(p) for p in paths], "tag": tag}
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    before = os.environ.get(TAG_VAR)
    os.environ[TAG_VAR] = ",".join(filter(None, [before, tag]))
    watcher = subprocess.Popen(
        [sys.executable, "-m", _MODULE, json.dumps(job)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to our process group must not reach it
        env=env,
    )
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TAG_VAR, None)
        else:
            os.environ[TAG_VAR] = before
        with contextlib.suppress(OSError):
            watcher.stdin.write(_DONE)  # type: ignore[union-attr]
            watcher.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            watcher.wait(timeout=10)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the owner
    job = json.loads(sys.argv[1])
    watch(job["owner"], job["prefixes"], job["paths"], job.get("tag", ""))
