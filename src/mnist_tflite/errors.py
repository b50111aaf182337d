"""The one exception type for user mistakes; the CLI prints it as one line and exits 2."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, TypeVar

PROG = "mnist-tflite"  # the command name, in every one-line error


class MnistTfliteError(Exception):
    """A problem with the user's input: a file, an option or a model.

    The message names the file (when there is one), what was found and what was expected.
    Anything else that escapes is a bug in mnist-tflite and keeps its traceback.
    """

    exit_code = 2


def fail(path: object, problem: str) -> MnistTfliteError:
    """Build an error whose message starts with the offending path."""
    return MnistTfliteError(f"{path}: {problem}")


def read_user_file(path: str | os.PathLike[str], expected: str, *, label: object = None) -> bytes:
    """Read a file the user named; missing, unreadable or empty is a one-line error.

    Args:
        path: the file.
        expected: what the file should be, for the message (e.g. "a TFLite flatbuffer").
        label: what to call the file in messages (default: the path).
    """
    label = path if label is None else label
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise fail(label, "no such file") from None
    except IsADirectoryError:
        raise fail(label, f"is a directory; expected {expected}") from None
    except OSError as exc:
        raise fail(label, f"cannot read ({exc.strerror})") from None
    if not data:
        raise fail(label, f"empty file (0 bytes); expected {expected}")
    return data


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
