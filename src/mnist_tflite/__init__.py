"""mnist-tflite: from MNIST to a verified TensorFlow Lite model on an edge device.

The public surface is small; heavy modules (TensorFlow, LiteRT) load only when used.
"""

from __future__ import annotations

from typing import Any

from mnist_tflite.core.errors import MnistTfliteError

__version__ = "0.1.0"
__all__ = ["RECIPES", "Classifier", "MnistTfliteError", "TfliteModel", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `import mnist_tflite` must stay cheap for the inference path
    if name == "TfliteModel":
        from mnist_tflite.edge.infer import TfliteModel

        return TfliteModel
    if name == "Classifier":
        from mnist_tflite.edge.predict import Classifier

        return Classifier
    if name == "RECIPES":
        from mnist_tflite.core.recipes import RECIPES

        return RECIPES
    raise AttributeError(f"module 'mnist_tflite' has no attribute {name!r}")
