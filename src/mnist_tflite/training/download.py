"""Fetch MNIST into the Keras cache, when the network allows: ``--data keras`` only.

The package embeds the complete official set, so ``auto`` never downloads; this lives on
the TensorFlow side and ``data.load`` takes it as its ``downloader``.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from mnist_tflite.core.data import keras_cache_path

DOWNLOAD_TIMEOUT_S = 2.0  # offline, give up fast: --data embedded needs no network


def keras_mnist(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path | None:
    """Let Keras download ``mnist.npz`` into its cache; ``None`` if that fails or takes too long.

    Keras prints its progress to stdout, which ``--json`` reserves for the document, so the
    download thread turns Keras's interactive logging off (a thread-local setting: its
    messages go to absl logging on stderr). An attempt still running at ``timeout_s`` is
    abandoned (a daemon thread: DNS look-ups ignore socket timeouts), and ``keras`` fails with
    one line.
    """
    try:
        from mnist_tflite.training.tfimport import import_tf

        import_tf()
        import keras
    except ImportError:
        return None

    def fetch() -> None:
        keras.config.disable_interactive_logging()
        with contextlib.suppress(Exception):  # offline, DNS, timeout, bad hash: "not available"
            keras.datasets.mnist.load_data()

    worker = threading.Thread(target=fetch, name="mnist-download", daemon=True)
    worker.start()
    worker.join(timeout_s)
    path = keras_cache_path()
    return path if not worker.is_alive() and path.exists() else None
