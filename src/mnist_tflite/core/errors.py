"""The one exception type for user mistakes; the CLI prints it as one line and exits 2."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Protocol, TypeVar

PROG = "mnist-tflite"  # the command name, in every one-line error


class MnistTfliteError(Exception):
    """A problem with the user's input: a file, an option or a model.

    The message names the file (when there is one), what was found and what was expected.
    Anything else that escapes is a bug in mnist-tflite and keeps its traceback.
    """

    exit_code = 2


def printable(text: object) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``): one honest line.

    A file name with a newline or a class name with an ANSI escape must not forge or hide
    output lines; every name the CLI prints goes through this.
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def plural(n: float, noun: str, nouns: str | None = None) -> str:
    """``1 step``, ``2 steps``, ``1,000 rows``: a count with its noun in the right number."""
    word = noun if n == 1 else (nouns or noun + "s")
    return f"{n:,g} {word}" if isinstance(n, float) else f"{n:,} {word}"


def fail(path: object, problem: str) -> MnistTfliteError:
    """Build an error whose message starts with the offending path (control characters escaped)."""
    return MnistTfliteError(f"{printable(path)}: {problem}")


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-blank line of an exception's message, stripped and cut to ``limit`` characters.

    Libraries (Keras, the converter, LiteRT, Pillow, JSON) put the reason on the first line
    and details below it. A message with no text gives the exception's type name.

    Example:
        >>> first_line(ValueError("Expecting value: line 1 column 1\\n  details"))
        'Expecting value: line 1 column 1'
    """
    text = str(exc)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        line = type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    return line[:limit]


def last_line(text: str | None, limit: int = 200) -> str:
    """The last non-blank line of ``text``: the message of an exception Ray wrapped in its traceback."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:limit]


MAX_USER_FILE = 1 << 30  # models, images, IDX files: far above any real one, below exhausting memory


def read_user_file(
    path: str | os.PathLike[str], expected: str, *, label: object = None, max_bytes: int = MAX_USER_FILE
) -> bytes:
    """Read a file the user named; missing, unreadable, empty or not a file is a one-line error.

    Args:
        path: the file.
        expected: what the file should be, for the message (e.g. "a TFLite flatbuffer").
        label: what to call the file in messages (default: the path).
        max_bytes: refuse larger files (a device such as /dev/zero never ends).
    """
    label = path if label is None else label
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise fail(label, f"is a directory; expected {expected}")
        if not stat.S_ISREG(mode):  # a FIFO would block, /dev/zero would never end
            raise fail(label, f"is a {_file_kind(mode)}, not a regular file; expected {expected}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise fail(label, "no such file") from None
    except OSError as exc:
        raise fail(label, f"cannot read ({exc.strerror})") from None
    if not data:
        raise fail(label, f"empty file (0 bytes); expected {expected}")
    if len(data) > max_bytes:
        raise fail(label, f"larger than {max_bytes:,} bytes; expected {expected}")
    return data


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISFIFO: "named pipe",
        stat.S_ISSOCK: "socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "special file")


class SystemRefused(MnistTfliteError):
    """The system refused a read or write (disk full, read-only folder, I/O error): exit 1.

    Not a usage mistake (exit 2), and not our bug (a traceback): one line naming the file.
    """

    exit_code = 1


def os_error(exc: OSError, path: object = None, doing: str = "cannot write") -> SystemRefused:
    """One line for an ``OSError``: the file, the action and the system's reason."""
    name = path if path is not None else (exc.filename or "?")
    reason = exc.strerror or type(exc).__name__
    return SystemRefused(f"{name}: {doing} ({reason})")


class ConversionError(MnistTfliteError):
    """The TFLite converter refused a recipe; ``run`` records it as a failed row."""


class _Named(Protocol):
    name: str


_T = TypeVar("_T", bound=_Named)


def find_named(table: Iterable[_T], name: str, what: str) -> _T:
    """The entry of a table (recipes, architectures) called ``name``; else list the known names."""
    entries = list(table)
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    raise MnistTfliteError(f"unknown {what} {name!r}; expected one of: {known}")
