"""Read a ``.tflite`` flatbuffer without TensorFlow: ops, tensors, I/O quantization, MACs.

Uses the schema module that ships with ai-edge-litert (``schema_py_generated``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnist_tflite.core.errors import fail

FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def tensor_summary(dtype: str, shape: Any, scale: float, zero_point: int) -> dict[str, Any]:
    """The one description of a tensor that sidecars, reports and ``--json`` share."""
    return {
        "dtype": str(dtype).lower(),
        "shape": [int(s) for s in shape],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # TFLite TensorType name: INT8, FLOAT32, ...
    shape: tuple[int, ...]
    constant: bool
    scale: float  # first (or only) scale; 0.0 when not quantized
    zero_point: int

    def describe(self) -> dict[str, Any]:
        return tensor_summary(self.dtype, self.shape, self.scale, self.zero_point)


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


# ops that move or retype the classifier's answer without changing its kind (data = input 0)
_PASS_THROUGH = (
    "QUANTIZE",
    "DEQUANTIZE",
    "CAST",
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "STRIDED_SLICE",
    "SLICE",
    "GATHER",
    "TRANSPOSE",
    "IDENTITY",
)


def output_kind(nodes: Any, output: int) -> str:
    """``"probabilities"`` if the tensor ``output`` comes from a SOFTMAX, else ``"logits"``.

    Walks back from the output through quantize/dequantize/reshape ops. ``nodes`` are
    :class:`Node` s (or anything with ``op``, ``inputs``, ``outputs``), so LiteRT's own op
    list serves as well as the parsed flatbuffer. Our int8 recipes end in FULLY_CONNECTED
    (logits, softmax on the host); float recipes and models from elsewhere may end in SOFTMAX.

    Example:
        >>> output_kind(parse(data).nodes, parse(data).outputs[0])
        'logits'
    """
    producer = {int(o): n for n in nodes for o in n.outputs}
    tensor = int(output)
    for _ in range(len(producer) + 1):
        node = producer.get(tensor)
        if node is None:
            return "logits"
        if node.op == "SOFTMAX":
            return "probabilities"
        if node.op not in _PASS_THROUGH or not len(node.inputs):
            return "logits"
        tensor = int(node.inputs[0])
    return "logits"


@dataclass(frozen=True)
class ModelInfo:
    """What a deployer needs from the flatbuffer of the first subgraph."""

    size_bytes: int
    tensors: tuple[Tensor, ...]
    nodes: tuple[Node, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def output_kind(self) -> str:
        """``"probabilities"`` (ends in SOFTMAX) or ``"logits"`` (softmax belongs on the host)."""
        return output_kind(self.nodes, self.outputs[0])

    @property
    def ops(self) -> list[str]:
        """Distinct op names in order of first use."""
        return list(dict.fromkeys(n.op for n in self.nodes))

    @property
    def input(self) -> Tensor:
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> Tensor:
        return self.tensors[self.outputs[0]]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def macs_by_op(self) -> dict[str, int]:
        """Multiply-accumulates per inference of Conv2D, DepthwiseConv2D, FullyConnected, TransposeConv."""
        out: dict[str, int] = {}
        for n in self.nodes:
            m = _node_macs(n, self.tensors)
            if m:
                out[n.op] = out.get(n.op, 0) + m
        return out

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op().values())

    def float_tensors(self) -> list[Tensor]:
        return [t for t in self.tensors if t.dtype in FLOAT_TYPES]

    def node_input_types(self, index: int) -> list[str]:
        if not 0 <= index < len(self.nodes):
            return []
        return [self.tensors[i].dtype for i in self.nodes[index].inputs if 0 <= i < len(self.tensors)]


def _node_macs(node: Node, tensors: tuple[Tensor, ...]) -> int:
    def shape(i: int) -> tuple[int, ...]:
        return tuple(abs(d) for d in tensors[node.inputs[i] if i >= 0 else node.outputs[0]].shape)

    try:
        if node.op == "CONV_2D":  # weights [Cout, kh, kw, Cin/groups]
            _, kh, kw, cin = shape(1)
            return math.prod(shape(-1)) * kh * kw * cin
        if node.op == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, Cout]
            _, kh, kw, _ = shape(1)
            return math.prod(shape(-1)) * kh * kw
        if node.op == "FULLY_CONNECTED":  # weights [units, in]
            _, inner = shape(1)
            return math.prod(shape(-1)) * inner
        if node.op == "TRANSPOSE_CONV":  # inputs: output shape, weights [Cout, kh, kw, Cin], x
            cout, kh, kw, _ = shape(1)
            return math.prod(shape(2)) * kh * kw * cout
    except (ValueError, IndexError):  # unexpected ranks: count nothing rather than guess
        return 0
    return 0


def _enum_names(enum: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def parse(data: bytes, path: object = "model") -> ModelInfo:
    """Parse a flatbuffer into ModelInfo; a malformed file raises MnistTfliteError naming ``path``."""
    from ai_edge_litert import schema_py_generated as schema

    ops, types = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        codes = []
        for oc in model.operatorCodes or []:
            code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
            name = ops.get(code, f"BUILTIN_{code}")
            codes.append(f"CUSTOM:{oc.customCode.decode(errors='replace')}" if name == "CUSTOM" else name)
        g = model.subgraphs[0]
        buffers = model.buffers or []
        tensors = []
        for t in g.tensors or []:
            buf = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
            constant = buf is not None and ((buf.data is not None and len(buf.data) > 0) or buf.size > 0)
            q = t.quantization
            scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
            zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
            name = t.name.decode(errors="replace") if t.name else ""
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
            tensors.append(Tensor(name, types.get(t.type, str(t.type)), shape, constant, scale, zp))
        nodes = tuple(
            Node(codes[op.opcodeIndex], tuple(int(i) for i in op.inputs), tuple(int(i) for i in op.outputs))
            for op in g.operators or []
        )
        info = ModelInfo(
            len(data),
            tuple(tensors),
            nodes,
            tuple(int(i) for i in g.inputs),
            tuple(int(i) for i in g.outputs),
        )
        info.input, info.output  # noqa: B018 - index check: raises on a broken subgraph
    except Exception as exc:  # any exception from a malformed flatbuffer is the file's fault
        raise fail(
            path, f"corrupt model: cannot parse the flatbuffer ({type(exc).__name__}: {exc})"
        ) from None
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise fail(
            path, f"expected 1 input and 1 output tensor, found {len(info.inputs)} and {len(info.outputs)}"
        )
    return info
