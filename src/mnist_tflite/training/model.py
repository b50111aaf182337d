"""Model architectures, as data: each entry builds a Keras 3 model for 28x28x1 inputs in [0, 1].

Adding an architecture is adding an entry to ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_tflite.core.errors import find_named


@dataclass(frozen=True)
class Architecture:
    """A named model: ``layers`` lists (Keras layer class name, keyword arguments)."""

    name: str
    description: str
    layers: tuple[tuple[str, dict[str, Any]], ...]
    # TrainConfig fields this architecture trains best with (see TrainConfig.for_arch)
    train_defaults: tuple[tuple[str, Any], ...] = ()
    # 1: a fixed batch of one image, as TFLM runs it; Flatten then needs no SHAPE,
    # STRIDED_SLICE and PACK ops for a dynamic batch (-250 B flash, -450 B arena on tiny).
    # LiteRT still runs such a model, one image per invoke().
    batch_size: int | None = None
    # the Keras model's name, which prefixes every tensor name stored in the .tflite
    model_name: str | None = None

    def build(self, num_classes: int = 10, keras: Any = None, dtype: str | None = None) -> Any:
        """Build the untrained model; ``keras`` is the Keras module to use (default: Keras 3).

        optimize.py's child process passes ``tf_keras`` so the same table builds the same
        layers, in the same order, in the Keras 2 world of tensorflow-model-optimization.
        ``dtype``: a Keras dtype policy for the table's layers (e.g. ``"mixed_bfloat16"``);
        the classifier and its softmax stay float32.
        """
        if keras is None:
            from mnist_tflite.training.tfimport import import_tf

            import_tf()
            import keras

        inputs = keras.Input(shape=(28, 28, 1), batch_size=self.batch_size, name="image")
        x = inputs
        policy = {} if dtype is None else {"dtype": dtype}
        for kind, kwargs in self.layers:
            x = getattr(keras.layers, kind)(**kwargs, **policy)(x)
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
        return keras.Model(inputs, outputs, name=self.model_name or f"mnist_{self.name}")

    def param_count(self, num_classes: int = 10) -> int | None:
        """Trainable parameters, from the table alone (no TensorFlow); None for unknown layers."""
        h, w, c, flat, total = 28, 28, 1, 0, 0
        for kind, kw in self.layers:
            if kind == "Conv2D":
                k, s = _pair(kw.get("kernel_size", 1)), _pair(kw.get("strides", 1))
                same = kw.get("padding", "valid") == "same"
                h, w = _out_len(h, k[0], s[0], same), _out_len(w, k[1], s[1], same)
                total += k[0] * k[1] * c * kw["filters"] + kw["filters"]
                c = kw["filters"]
            elif kind == "MaxPooling2D":
                k = _pair(kw.get("pool_size", 2))
                s = _pair(kw.get("strides") or k)
                same = kw.get("padding", "valid") == "same"
                h, w = _out_len(h, k[0], s[0], same), _out_len(w, k[1], s[1], same)
            elif kind == "Flatten":
                flat = h * w * c
            elif kind == "Dense":
                total += (flat or c) * kw["units"] + kw["units"]
                flat, c = 0, kw["units"]
            elif kind not in ("Dropout", "ReLU"):
                return None
        return total + (flat or c) * num_classes + num_classes


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_len(n: int, k: int, s: int, same: bool) -> int:
    return -(-n // s) if same else (n - k) // s + 1


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="seed",
        description="the seed's CNN: Conv(32,3)-Pool-Conv(64,3)-Pool-Dense(10), 34,826 parameters",
        layers=(
            ("Conv2D", {"filters": 32, "kernel_size": 3, "activation": "relu"}),
            ("MaxPooling2D", {"pool_size": 2}),
            ("Conv2D", {"filters": 64, "kernel_size": 3, "activation": "relu"}),
            ("MaxPooling2D", {"pool_size": 2}),
            ("Flatten", {}),
        ),
        # on the 60,000 training images (benchmarks/sweep_training.py, training_sweep.json):
        # batch 256 from 4e-3 in mixed bfloat16 (only where the CPU has it natively: auto) costs
        # a fifth less CPU per epoch than float32 at 128; 12 epochs handing out the weights'
        # moving average reach 99.28 % float32 / 99.27 % int8, and a default run 147 s alone
        train_defaults=(
            ("epochs", 12),
            ("batch_size", 256),
            ("learning_rate", 4e-3),
            ("precision", "auto"),
            ("ema_momentum", 0.999),
        ),
    ),
    Architecture(
        name="tiny",
        description="for the smallest microcontrollers: Conv(8,5,/2)-Pool-Conv(16,3)-Dense(10), "
        "3,946 parameters; int8 file under 10 KB, TFLM arena under 8 KB",
        # a strided 5x5 first layer keeps the largest activation (12x12x8 int8) small, which
        # is what bounds the arena; Flatten keeps the spatial layout that global pooling lost
        # (92 % with GAP vs 97.8 % here at about the same size)
        layers=(
            ("Conv2D", {"filters": 8, "kernel_size": 5, "strides": 2, "activation": "relu"}),
            ("MaxPooling2D", {"pool_size": 2}),
            ("Conv2D", {"filters": 16, "kernel_size": 3, "activation": "relu"}),
            ("Flatten", {}),
        ),
        # on the 60,000 training images (benchmarks/results/training_sweep_tiny.json): 10 epochs
        # from 3e-3 without augmentation, int8 98.83 %; 4k parameters gain nothing from jitter
        train_defaults=(("epochs", 10), ("learning_rate", 3e-3), ("augment", False)),
    ),
)


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``; an unknown name lists the known ones."""
    return find_named(ARCHITECTURES, name, "architecture")


def build(name: str = "seed", num_classes: int = 10) -> Any:
    """Build an untrained Keras model by architecture name."""
    return get_architecture(name).build(num_classes)


def logits_copy(model: Any, keras: Any = None) -> Any:
    """``model`` without its final softmax (same layers, same weights), or ``model`` itself.

    An 8-bit softmax output saturates at 255/256 and rounds every runner-up below 1/512 to
    zero, so the int8 recipes convert this copy: int8 logits, softmax on the host
    (``edge.infer``), recorded as ``"output_kind": "logits"`` in the sidecar. Handles a
    Dense with ``activation="softmax"`` and a trailing Softmax / Activation layer; any other
    model is returned unchanged.
    """
    if keras is None:
        from mnist_tflite.training.tfimport import import_tf

        import_tf()
        import keras
    last = model.layers[-1]
    config = last.get_config()
    if type(last).__name__ in ("Softmax", "Activation") and (
        type(last).__name__ == "Softmax" or config.get("activation") == "softmax"
    ):
        return keras.Model(model.inputs, last.input, name=f"{model.name}_logits")
    if not (isinstance(last, keras.layers.Dense) and config.get("activation") == "softmax"):
        return model

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer is last:
            cfg["activation"] = "linear"
        return type(layer).from_config(cfg)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
