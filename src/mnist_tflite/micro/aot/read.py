"""Pass 1 of the compiler: read the flatbuffer into tensors (with their constants) and ops.

Refuses here, one line each, what no later pass should have to doubt: a corrupt file, more
than one subgraph, an op index or a tensor index out of range, a model that is not int8
end to end, an op without a kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_tflite.core import recipes
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.edge.flatbuffer import FLOAT_TYPES, ModelInfo, parse

# Ops that become kernels, and ops folded away at compile time.
KERNEL_OPS = ("CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE")
FOLDED_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")
INT8_NAMES = "recipes " + ", ".join(recipes.INT8_RECIPES)
_NP_TYPES = {"INT8": np.int8, "INT32": np.int32, "UINT8": np.uint8, "INT16": np.int16, "INT64": np.int64}


@dataclass
class Tensor:
    """A tensor of the one subgraph, with its quantization and (if constant) its contents."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int
    data: np.ndarray | None  # constant contents, flat unless their size matches the shape

    @property
    def scale(self) -> float:
        return float(self.scales[0]) if self.scales.size else 0.0

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0]) if self.zero_points.size else 0


@dataclass(frozen=True)
class Op:
    """One node: its op name, the tensor indices it reads (-1: absent) and writes, its options."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Any

    @property
    def where(self) -> str:
        return f"{self.name} (node {self.index})"


@dataclass
class Graph:
    """What the later passes read: the parsed summary, every tensor and every op, in order."""

    info: ModelInfo
    tensors: list[Tensor]
    ops: list[Op]

    @property
    def input_tensor(self) -> int:
        return self.info.inputs[0]

    @property
    def output_tensor(self) -> int:
        return self.info.outputs[0]


def read_graph(data: bytes, path: object) -> Graph:
    """Parse and check ``data``; every problem is a one-line MnistTfliteError naming ``path``."""
    from ai_edge_litert import schema_py_generated as schema

    info = parse(data, path)
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        if len(model.subgraphs or []) != 1:
            raise fail(path, f"expected one subgraph, found {len(model.subgraphs or [])}")
        g = model.subgraphs[0]
        tensors = [_tensor(i, t, model.buffers or [], data) for i, t in enumerate(g.tensors or [])]
        ops = [
            Op(i, node.op, node.inputs, node.outputs, op.builtinOptions)
            for i, (node, op) in enumerate(zip(info.nodes, g.operators or [], strict=True))
        ]
    except MnistTfliteError:
        raise
    except Exception as exc:
        raise fail(path, f"corrupt model: cannot read it ({type(exc).__name__}: {exc})") from None
    graph = Graph(info, tensors, ops)
    _check_indices(graph, path)
    problem = int8_problem(info)
    if problem:
        raise fail(path, problem)
    supported = ", ".join((*KERNEL_OPS, *FOLDED_OPS))
    for op in ops:
        if op.name not in KERNEL_OPS and op.name not in FOLDED_OPS:
            raise fail(path, f"unsupported op {op.name} (node {op.index}); compile supports {supported}")
    return graph


def _tensor(index: int, t: Any, buffers: list[Any], data: bytes) -> Tensor:
    from ai_edge_litert import schema_py_generated as schema

    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    dtype = types.get(t.type, str(t.type))
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    buf = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
    raw = None
    if buf is not None and buf.data is not None and len(buf.data):
        raw = bytes(np.asarray(buf.data, dtype=np.uint8))
    elif buf is not None and getattr(buf, "offset", 0) > 1 and buf.size:
        raw = data[buf.offset : buf.offset + buf.size]
    arr = None
    if raw is not None:
        if dtype not in _NP_TYPES:
            arr = np.frombuffer(raw, dtype=np.uint8)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP_TYPES[dtype]).newbyteorder("<"))
            arr = arr.reshape(shape) if math.prod(shape) == arr.size else arr
    q = t.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], dtype=np.float64)
    zps = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], dtype=np.int64)
    qdim = int(q.quantizedDimension) if q is not None else 0
    name = t.name.decode(errors="replace") if t.name else f"tensor {index}"
    return Tensor(index, name, dtype, shape, scales, zps, qdim, arr)


def _check_indices(graph: Graph, path: object) -> None:
    """Every tensor an op or the graph names exists (-1 marks an absent optional input)."""
    n = len(graph.tensors)
    for t in (*graph.info.inputs, *graph.info.outputs):
        if not 0 <= t < n:
            raise fail(path, f"corrupt model: the graph names tensor {t}, but there are {n}")
    for op in graph.ops:
        bad = [i for i in op.inputs if not -1 <= i < n] + [i for i in op.outputs if not 0 <= i < n]
        if bad or not op.outputs or not op.inputs or op.inputs[0] < 0:
            found = f"tensor {bad[0]}" if bad else "no data input or output"
            raise fail(path, f"corrupt model: {op.where} names {found} (the model has {n} tensors)")
        if any(d < 0 for d in graph.tensors[op.outputs[0]].shape) and op.name not in FOLDED_OPS:
            raise fail(
                path, f"{op.where}: output shape {list(graph.tensors[op.outputs[0]].shape)} is not static"
            )


def int8_problem(info: ModelInfo) -> str | None:
    """Why the model is not int8 end to end, naming the first op that is not (None if it is)."""
    bad_io = info.input.dtype != "INT8" or info.output.dtype != "INT8"
    for index, node in enumerate(info.nodes):
        kinds = [info.tensors[i].dtype for i in (*node.inputs, *node.outputs) if 0 <= i < len(info.tensors)]
        odd = [k for k in kinds if k in FLOAT_TYPES or k in ("INT16", "UINT8", "INT4")]
        if odd:
            return (
                f"not an int8 model (input {info.input.dtype.lower()}, output {info.output.dtype.lower()}): "
                f"{node.op} (node {index}) has {'/'.join(sorted({k.lower() for k in odd}))} tensors; compile "
                f"needs int8 input, output, activations and weights ({INT8_NAMES})"
            )
    if bad_io:
        return (
            f"not an int8 model: input {info.input.dtype.lower()}, output {info.output.dtype.lower()}; "
            f"compile needs int8 input and output ({INT8_NAMES})"
        )
    return None
