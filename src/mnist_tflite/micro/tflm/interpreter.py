"""Run a model in the TensorFlow Lite Micro interpreter, always in forked children.

TFLM does not verify the flatbuffer, so a corrupt model can take the process down with a
signal; and it reports problems by printing to stderr. A forked child pays the crash and
its stderr is captured to name the op or type that TFLM lacks. The 10,000-image check is
split over one child per core: TFLM's reference kernels run about 3 ms per seed-CNN image.
Children die with the parent (even on SIGKILL; ``procs.die_with_parent``), and report how
many rows they have done through a shared page, for the caller's progress lines.
"""

from __future__ import annotations

import contextlib
import faulthandler
import mmap
import os
import pickle
import re
import shutil
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_tflite.core import procs

CHILD_TIMEOUT_S = 300.0
ARENA_CAP = 64 << 20  # the bisection's upper bracket; a model that needs more is not for an MCU


@dataclass(frozen=True)
class ChildResult:
    """What a child returned, or why it did not: ``error`` (its exception) or ``signal``."""

    value: Any = None
    error: str | None = None
    signal: str | None = None
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.signal is None


def map_in_children(
    fn: Callable[..., Any],
    arg_lists: Sequence[tuple[Any, ...]],
    timeout_s: float = CHILD_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> list[ChildResult]:
    """Run ``fn(*args)`` for every ``args`` in its own forked child, all at once.

    Args:
        progress: called about twice a second with the rows done so far by all children
            (``fn`` reports them with ``tick``).

    Returns:
        One ChildResult per ``args``, in order; never raises for what happens in a child.
    """
    _preload()
    tmp = procs.make_temp("mnist-tflite-tflm")
    counters = mmap.mmap(-1, 8 * max(1, len(arg_lists)))  # shared with the forked children
    pids: dict[int, int] = {}
    status: dict[int, int | None] = {}
    parent = os.getpid()
    try:
        for i, args in enumerate(arg_lists):
            pid = os.fork()
            if pid == 0:  # child: never return into the caller's code
                _child(fn, args, tmp, i, parent, counters)
            pids[pid] = i
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic() + 0.5
        while len(status) < len(pids):
            for pid in pids.keys() - status.keys():
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[pid] = st
            if time.monotonic() > deadline:
                for pid in pids.keys() - status.keys():
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status[pid] = None
            if progress is not None and time.monotonic() >= next_report:
                progress(_rows_done(counters, len(pids)))
                next_report += 0.5
            time.sleep(0.005)
        return [
            _collect(status[pid], tmp, i, timeout_s) for pid, i in sorted(pids.items(), key=lambda p: p[1])
        ]
    finally:
        for pid in pids.keys() - status.keys():  # interrupted (Ctrl-C, SIGTERM): no child outlives us
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        counters.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _preload() -> None:
    """Import TFLM's runtime before forking: a child that first imports it after the TFLite
    converter ran in the parent (as in a ``tune`` trial) dies with SIGSEGV."""
    with contextlib.suppress(ImportError):  # without TFLM the child reports it, as before
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401


_counter: tuple[mmap.mmap, int] | None = None  # set in a child: where ``tick`` writes


def tick(rows_done: int) -> None:
    """Inside a child: publish how many rows this child has done (for the parent's progress)."""
    if _counter is not None:
        struct.pack_into("<q", _counter[0], 8 * _counter[1], rows_done)


def _rows_done(counters: mmap.mmap, n: int) -> int:
    return sum(struct.unpack_from("<q", counters, 8 * i)[0] for i in range(n))


def _child(
    fn: Callable[..., Any], args: tuple[Any, ...], tmp: str, i: int, parent: int, counters: mmap.mmap
) -> None:
    global _counter
    code = 0
    try:
        procs.die_with_parent(parent)
        _counter = (counters, i)
        fd = os.open(os.path.join(tmp, f"{i}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)  # TFLM's MicroPrintf writes here
        faulthandler.disable()  # a crash is reported by the parent, not dumped on the user's terminal
        try:
            result: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:
            result, code = ("error", str(exc).strip() or type(exc).__name__), 1
        with open(os.path.join(tmp, f"{i}.pkl"), "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        os._exit(code)


def _collect(status: int | None, tmp: str, i: int, timeout_s: float) -> ChildResult:
    err_path, out_path = os.path.join(tmp, f"{i}.err"), os.path.join(tmp, f"{i}.pkl")
    stderr = ""
    if os.path.exists(err_path):
        with open(err_path, encoding="utf-8", errors="replace") as f:
            stderr = f.read()
    if status is None:
        return ChildResult(error=f"TFLM did not finish within {timeout_s:.0f} s", stderr=stderr)
    if os.WIFSIGNALED(status):
        return ChildResult(signal=signal.Signals(os.WTERMSIG(status)).name, stderr=stderr)
    try:
        with open(out_path, "rb") as f:
            kind, value = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return ChildResult(error=f"TFLM child exited with status {os.WEXITSTATUS(status)}", stderr=stderr)
    return (
        ChildResult(value=value, stderr=stderr) if kind == "ok" else ChildResult(error=value, stderr=stderr)
    )


# -- work done inside the children -------------------------------------------------------


def _interpreter(data: bytes, arena_size: int) -> Any:
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(data, arena_size=arena_size)


def _runs(data: bytes, arena_size: int) -> bool:
    """Does the model allocate and invoke (on a zero input) in an arena of this size?"""
    try:
        interp = _interpreter(data, arena_size)
        det = interp.get_input_details(0)
        interp.set_input(np.zeros(det["shape"], dtype=det["dtype"]), 0)
        interp.invoke()
    except RuntimeError:
        return False
    return True


def search_arena(data: bytes) -> dict[str, Any]:
    """Bisect the smallest arena (bytes) in which TFLM allocates and invokes the model.

    Brackets are [0, ARENA_CAP]; each probe builds a fresh interpreter and invokes it, and
    the search stops when the bracket is one byte wide, so ``min_bytes`` is exact.
    Raises RuntimeError (with TFLM's stderr in the caller's ChildResult) if even the cap fails.
    """
    steps: list[tuple[int, bool]] = []
    if not _runs(data, ARENA_CAP):
        raise RuntimeError("TFLM failed to allocate tensors")
    steps.append((ARENA_CAP, True))
    lo, hi = 0, ARENA_CAP  # lo fails (nothing fits in 0 bytes), hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = _runs(data, mid)
        steps.append((mid, ok))
        lo, hi = (lo, mid) if ok else (mid, hi)
    interp = _interpreter(data, hi)
    interp.print_allocations()  # the RecordingMicroAllocator's own tally, as a cross-check
    return {"min_bytes": hi, "steps": steps}


def run_batch(data: bytes, arena_size: int, inputs: np.ndarray) -> np.ndarray:
    """Invoke TFLM once per input row; returns the stacked output tensors."""
    interp = _interpreter(data, arena_size)
    det = interp.get_input_details(0)
    shape, dtype = tuple(det["shape"]), det["dtype"]
    out = None
    for i, row in enumerate(inputs):
        interp.set_input(np.ascontiguousarray(row, dtype=dtype).reshape(shape), 0)
        interp.invoke()
        y = interp.get_output(0).reshape(-1)
        if out is None:
            out = np.empty((len(inputs), y.size), dtype=y.dtype)
        out[i] = y
        if i % 50 == 49:
            tick(i + 1)
    return out if out is not None else np.empty((0, 0), dtype=dtype)


def recorded_total(stderr: str) -> int | None:
    """The RecordingMicroAllocator's "Arena allocation total N bytes", if it printed one."""
    found = re.findall(r"Arena allocation total (\d+) bytes", stderr)
    return int(found[-1]) if found else None
