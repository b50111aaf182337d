"""Checks of command-line values that run before any work starts: seeds, output paths, data specs.

Each raises :class:`MnistTfliteError` with one line naming the option or file, what was
received and what was expected, so that a bad value costs nothing (no training first, no
empty output folder left behind).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnist_tflite.core.errors import MnistTfliteError, fail

SEED_MAX = 2**32 - 1  # NumPy's and TF's seeding both take 32-bit values
DATA_NAMES = ("auto", "embedded", "sample", "keras")
MAX_IMAGES = 1_000_000  # --calibration-size, --micro-images: above any MNIST-like split


def check_seed(seed: int, option: str = "--seed") -> int:
    """A seed in 0..2**32-1, else a one-line error (NumPy would raise ValueError deep inside)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise MnistTfliteError(f"{option} must be an integer in 0..{SEED_MAX}, received: {seed!r}")
    return seed


def check_int_range(value: int, option: str, low: int, high: int) -> int:
    """``low <= value <= high`` for an integer option, else a one-line error."""
    if value < low:
        raise MnistTfliteError(f"{option} must be >= {low}, received: {value}")
    if value > high:
        raise MnistTfliteError(f"{option} must be <= {high:,}, received: {value}")
    return value


def check_data_spec(spec: str, option: str = "--data") -> None:
    """``auto``/``embedded``/``keras``, an IDX directory or an ``.npz`` file, checked before
    an output is created (the files themselves are read and checked by ``data.load``)."""
    if spec in DATA_NAMES:
        return
    expected = "expected auto, embedded, an IDX directory or .npz"
    if not spec:
        raise MnistTfliteError(f"{option} is empty; {expected}")
    if os.path.exists(spec) and not os.path.isdir(spec):
        if not os.path.isfile(spec):
            raise fail(spec, f"not a regular file or directory ({option}); {expected}")
        if os.path.getsize(spec) == 0:
            raise fail(spec, f"empty file ({option}); {expected}")
    if not os.path.exists(spec):
        raise fail(spec, f"no such file or directory ({option}); {expected}")


def check_out_file(
    path: Path,
    *,
    force: bool,
    suffixes: tuple[str, ...] = (),
    probe_bytes: int | Callable[[], int] = 0,
) -> None:
    """Check that a file can be written at ``path`` before the work that produces it.

    Args:
        path: the ``--out`` file.
        force: whether an existing file may be replaced.
        suffixes: accepted endings (e.g. ``(".tflite",)``); empty: any.
        probe_bytes: write (then delete) this many bytes beside ``path``, so that a full
            disk fails now rather than after minutes of training; a callable is called only
            once the cheap checks passed.
    """
    if path.is_dir():
        example = f" such as model{suffixes[0]}" if suffixes else ""
        raise fail(path, f"--out is a directory; expected a file path{example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise fail(path, f"--out must end in {' or '.join(suffixes)}, received suffix {path.suffix!r}")
    if path.exists() and not force:
        raise fail(path, "already exists (pass --force to overwrite)")
    if path.exists() and not path.is_file():
        raise fail(path, "--out exists and is not a regular file; expected a file path")
    check_out_dir(path.parent, probe_bytes=probe_bytes)


def check_out_dir(path: Path, *, probe_bytes: int | Callable[[], int] = 0) -> None:
    """Check that the output folder ``path`` (existing or not) can take ``probe_bytes``.

    Probes the nearest existing ancestor, creating nothing, so a read-only or full disk is
    reported before the work starts and no empty folder is left behind.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise fail(existing, f"is not a directory; cannot create {path}")
    check_writable(existing)  # read-only: say so before working out the size
    if probe_bytes:
        check_writable(existing, probe_bytes() if callable(probe_bytes) else probe_bytes)


def check_writable(directory: Path, probe_bytes: int = 0) -> None:
    """Create, fill and delete a temporary file in ``directory``; an ``OSError`` is a one-line error."""
    fd, tmp = -1, ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mnist-tflite-probe.", dir=directory)
        block = b"\0" * min(probe_bytes, 1 << 20)
        left = probe_bytes
        while left > 0:
            left -= os.write(fd, block[:left])
        if probe_bytes:
            os.fsync(fd)
    except OSError as exc:
        room = f" with {probe_bytes:,} bytes free" if probe_bytes else ""
        problem = f"cannot write here ({exc.strerror}); expected a writable location{room}"
        raise fail(directory, problem) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
