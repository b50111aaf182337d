"""Import TensorFlow quietly, once, only where training or conversion needs it."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from mnist_tflite.edge.quiet import stderr_silenced


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
    if "tensorflow" in sys.modules:
        yield
        return
    with stderr_silenced():
        yield


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The converter prints the exported signature to stdout; keep our output readable."""
    # the calibrator also logs its settings to fd 2 and warns about input statistics we don't need
    with contextlib.redirect_stdout(io.StringIO()), stderr_silenced(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield
