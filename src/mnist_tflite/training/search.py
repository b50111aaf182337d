"""The TensorFlow side of a ``tune`` trial: thread limits and the size of an untrained model.

``mnist_tflite.scale`` never imports TensorFlow; its trials call these, ``train.train`` and
``convert.convert``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnist_tflite.training.tfimport import import_tf, quiet_stdout


def limit_threads(threads: int) -> None:
    """Make TensorFlow use ``threads`` CPU threads (call before it runs anything).

    A trial holds one CPU of the Ray cluster; TensorFlow would otherwise start a thread per
    core in every trial and the trials would fight over the cores.
    """
    tf = import_tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialized in this process: its pools are fixed
        pass


def untrained_flatbuffer(architecture: Any, recipe: Any, representative: np.ndarray, seed: int = 0) -> bytes:
    """Convert an untrained ``architecture`` with ``recipe``: the trained model's exact file size.

    The converter shares identical constant buffers, and fresh biases are all zero; random
    biases make every buffer distinct, as after training, so the size is the trained one.
    """
    from mnist_tflite.training.convert import convert

    import_tf()
    import keras

    keras.utils.set_random_seed(seed)
    with quiet_stdout():
        model = architecture.build(10)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("bias") or "moving" in w.path or w.path.endswith(("beta", "gamma")):
            w.assign(rng.normal(0.0, 0.1, w.shape).astype("float32") + (1.0 if "variance" in w.path else 0.0))
    return convert(model, recipe, representative)
