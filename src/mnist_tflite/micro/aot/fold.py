"""Shape-only ops evaluated at compile time (batch 1): the chain a dynamic batch puts before Flatten.

SHAPE -> STRIDED_SLICE -> PACK computes Flatten's target shape from the input's shape at run
time; with the batch fixed at 1 its value is known now, so the ops become constants and no
code. Anything that depends on a runtime value is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnist_tflite.core.errors import fail
from mnist_tflite.micro.aot.read import FOLDED_OPS, Graph, Op, Tensor


def _strided_slice(
    x: np.ndarray, begin: np.ndarray, end: np.ndarray, strides: np.ndarray, opts: Any
) -> np.ndarray:
    if opts is not None and (opts.ellipsisMask or opts.newAxisMask):
        raise ValueError("ellipsis/new-axis masks")
    index: list[Any] = []
    for d in range(len(begin)):
        b, e, s = int(begin[d]), int(end[d]), int(strides[d])
        if s == 0:
            raise ValueError("stride 0")
        if opts is not None and opts.beginMask >> d & 1:
            b = None
        if opts is not None and opts.endMask >> d & 1:
            e = None
        if opts is not None and opts.shrinkAxisMask >> d & 1:
            index.append(b if b is not None else 0)
        else:
            index.append(slice(b, e, s))
    return np.asarray(x[tuple(index)])


def _fold(op: Op, tensors: list[Tensor], values: dict[int, np.ndarray]) -> np.ndarray | None:
    """The constant output of a shape-only op, or None if it is not one."""
    if op.name == "SHAPE":
        return np.asarray(tensors[op.inputs[0]].shape, dtype=np.int32)
    if not all(i >= 0 and i in values for i in op.inputs):
        return None
    args = [values[i] for i in op.inputs]
    if op.name == "STRIDED_SLICE":
        return _strided_slice(args[0], args[1], args[2], args[3], op.options)
    if op.name == "PACK":
        axis = op.options.axis if op.options is not None else 0
        return np.stack([np.asarray(a) for a in args], axis=axis)
    return None


def fold_shape_ops(graph: Graph, path: object) -> tuple[list[tuple[int, str]], list[int]]:
    """Fold what depends only on shapes (batch 1): (folded nodes, the nodes left to run)."""
    values = {t.index: t.data for t in graph.tensors if t.data is not None}
    folded: list[tuple[int, str]] = []
    kept: list[int] = []
    for op in graph.ops:
        if op.name not in FOLDED_OPS:
            kept.append(op.index)
            continue
        try:
            result = _fold(op, graph.tensors, values)
        except (ValueError, IndexError, TypeError) as exc:
            raise fail(path, f"{op.where} cannot be folded at compile time: {exc}") from None
        if result is None:
            raise fail(path, f"{op.where} depends on runtime values; only shape chains are folded")
        values[op.outputs[0]] = np.asarray(result)
        folded.append((op.index, op.name))
    return folded, kept
