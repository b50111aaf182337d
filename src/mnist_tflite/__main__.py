"""``python -m mnist_tflite``: the same as the ``mnist-tflite`` command."""

from mnist_tflite.cli import entry

entry()
