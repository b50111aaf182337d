"""Silence C++ libraries that write to file descriptor 2 (TF's absl banner, LiteRT's INFO lines)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for the block; Python exceptions still propagate as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
