"""Output folders as transactions: one writer at a time, built aside, swapped in whole.

``run`` and ``export-micro`` write a folder of files that only make sense together (models,
sidecars, a report that describes them). A kill, a crash or a second writer must never leave
a mix of two runs. So a writer:

1. takes ``.<name>.lock`` beside the folder (``flock``; a second writer is refused at once);
2. sweeps what a killed writer of this folder left (staging folders, a half-done swap);
3. builds everything in ``.<name>.staging-<pid>`` in the same parent folder;
4. swaps it in: ``renameat2(RENAME_EXCHANGE)`` exchanges the two folders in one step, then
   the previous contents (now under the staging name) are deleted. Where the kernel or file
   system lacks the exchange, the old folder is renamed to ``.<name>.old-<pid>`` and the new
   one renamed in; a kill between those two renames is finished by the next writer's sweep
   (the staging folder is complete by then, so it is rolled forward).

At every instant the folder holds the previous complete contents or the new complete ones
(or, only in the two-rename fallback, nothing until the next sweep). ``run_problem``,
``finished_report`` and ``resumable`` say what an existing run folder holds. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mnist_tflite.core.errors import fail

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def staging_path(out: Path, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.staging-{os.getpid() if pid is None else pid}"


def _leftovers(out: Path) -> list[tuple[Path, str, int]]:
    """(path, "staging" | "old", pid) of every aside folder of ``out`` in its parent."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(staging|old)-(\d+)$")
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in out.parent.iterdir():
            m = pattern.match(entry.name)
            if m:
                found.append((entry, m.group(1), int(m.group(2))))
    return sorted(found)


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out``; another holder means a one-line error (exit 2)."""
    if fcntl is None:
        yield
        return
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise fail(out, f"cannot create the lock file {path.name} beside it ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise fail(
                out,
                f"another mnist-tflite process (pid {holder}) is writing into this folder "
                f"(lock {path.name}); wait for it to finish or choose another --out",
            ) from None
        # the previous holder may have unlinked the file between our open and flock: retry
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(
            OSError
        ):  # the pid is only for the message; a full disk is not our concern here
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked: anyone who opened it retries on the inode check
        os.close(fd)


def sweep(out: Path, log: Callable[[str], None] | None = None) -> list[str]:
    """Finish or undo what a killed writer of ``out`` left; call with the lock held.

    With the lock held, every aside folder belongs to a writer that is gone. If ``out`` is
    missing and an ``old`` folder exists, the writer died inside the two-rename swap: its
    staging folder was complete, so it becomes ``out`` (else the old one is put back).
    Returns what was done, one line each.
    """
    done: list[str] = []
    aside = _leftovers(out)  # with the lock held, even one with our pid (reused) is a dead writer's
    if not out.exists():
        for old, kind, pid in aside:
            if kind != "old":
                continue
            staging = staging_path(out, pid)
            source = staging if staging.is_dir() else old
            os.rename(source, out)
            done.append(f"{out}: finished the swap that process {pid} was killed in ({source.name})")
            break
    for path, _, _ in aside:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"{out}: removed {path.name}, left by a killed run")
    for line in done:
        if log:
            log(line)
    return done


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(staging: Path, out: Path, *, exchange: bool = True) -> None:
    """Make the complete folder ``staging`` become ``out``; the previous ``out`` is deleted."""
    if not out.exists():
        os.rename(staging, out)
        return
    if exchange and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous contents
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(staging, out)  # killed between these two: the next sweep() rolls forward
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def transaction(out: Path, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Lock ``out``, sweep, and yield a fresh staging folder; publish it if the block succeeds.

    On any exception (Ctrl-C and SIGTERM included) the staging folder is deleted and ``out``
    is left as it was. Check what ``out`` holds inside the block: the lock is held there.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(out.parent, f"cannot create the folder ({exc.strerror})") from None
    with lock(out):
        sweep(out, log)
        staging = staging_path(out)
        try:
            staging.mkdir()
        except OSError as exc:
            raise fail(out, f"output directory is not writable ({exc.strerror})") from None
        try:
            yield staging
            try:
                publish(staging, out)
            except OSError as exc:
                raise fail(out, f"cannot move the new folder into place ({exc.strerror})") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def run_problem(out: Path) -> str | None:
    """Why ``out`` is not one complete, consistent run folder (None if it is).

    Complete: ``report.json`` readable; every variant it lists as ok has its ``.tflite`` whose
    SHA-256 matches its sidecar and whose sidecar seed is the report's; no other ``.tflite``.
    """
    from mnist_tflite.core import sidecar

    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        ok = {r["name"] for r in report["variants"] if r.get("status") == "ok"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no readable report.json ({exc})"
    present = {p.stem for p in out.glob("*.tflite")}
    if present != ok:
        return f"report.json lists {sorted(ok)} but the folder holds {sorted(present)}"
    for name in sorted(ok):
        model = out / f"{name}.tflite"
        try:
            meta = sidecar.read(model)
            data = model.read_bytes()
        except Exception as exc:  # any unreadable or malformed sidecar: not complete
            return f"{model.name}: {exc}"
        if not meta or meta.get("sha256") != sidecar.sha256_bytes(data):
            return f"{model.name}: its sidecar does not vouch for it"
        if meta.get("seed") != report.get("seed"):
            return f"{model.name}: seed {meta.get('seed')} but report.json says {report.get('seed')}"
    return None


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty ``--out`` unless forced (nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        problem = run_problem(out)
        what = "holds a run with another configuration" if problem is None else "is not empty"
        raise fail(out, f"output directory {what} (pass --force to replace the whole folder)")


def check_replaceable(out: Path, force: bool, marker: str, command: str) -> None:
    """Refuse an ``out`` that is a file, exists without ``force``, or holds files not written by ``command``.

    ``command`` marks its folders with the file ``marker`` (``micro.json``, ``compile.json``);
    a non-empty folder without it is the user's and is never replaced. Call it before the
    work and again inside ``transaction`` (under the lock).
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise fail(out, f"exists and is not a directory; expected a new directory for {command}'s output")
    if not force:
        raise fail(out, f"already exists (pass --force to replace an earlier {command} output)")
    if any(out.iterdir()) and not (out / marker).is_file():
        raise fail(out, f"exists and was not written by {command} (no {marker}); not replacing it")


def finished_report(out: Path, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The report of ``out`` if it is a complete run with this configuration, else None."""
    if not (out / "report.json").is_file() or run_problem(out) is not None:
        return None
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report if report.get("run_config") == fp else None


def resumable(out: Path, fp: dict[str, Any], ds: Any = None) -> dict[str, Any]:
    """The report of the run in ``out`` whose ``model.keras`` ``--resume`` reuses; else a one-line error."""
    try:
        old = json.loads((out / "report.json").read_text(encoding="utf-8"))
        before = old["run_config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise fail(out, "--resume: no run to resume here (expected report.json written by a run)") from None
    if not (out / "model.keras").is_file():
        raise fail(out, "--resume: no model.keras to reuse; pass --force to train again")
    differ = [k for k in ("data", "train") if before.get(k) != fp[k]]
    if ds is not None and old.get("data", {}).get("source") != ds.source:
        differ.append(f"data source ({old.get('data', {}).get('source')!r} then)")
    if differ:
        raise fail(
            out,
            f"--resume: its model was trained with other {' and '.join(differ)} options; "
            "expected the same --data, --arch, --epochs, --batch-size and --seed (or pass --force)",
        )
    return old
