"""``python -m mnist_tflite.cli``: the same as the ``mnist-tflite`` command."""

from mnist_tflite.cli import entry

entry()
