"""Import TensorFlow quietly, once, only where training or conversion needs it."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any


def import_tf() -> Any:
    # TF's C++ banner (CUDA probing, oneDNN notices) is noise for a CPU-only tool
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    with _stderr_silenced():
        # TF 2.21 logs through absl before logging is initialized, ignoring the level above
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    import sys

    if "tensorflow" in sys.modules:
        yield
        return
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


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The converter prints the exported signature to stdout; keep our output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
