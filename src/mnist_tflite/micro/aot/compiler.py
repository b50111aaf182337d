"""Read an int8 ``.tflite`` into a small layer graph for the C code generator.

What the compiler does before any C is written:

- checks the model is int8 end to end (input, output, activations, weights) and that every
  op is one it has a kernel for, naming the op and node otherwise;
- folds at compile time what depends only on shapes: the SHAPE -> STRIDED_SLICE -> PACK
  chain a dynamic batch puts in front of Flatten's RESHAPE (the batch is 1), and RESHAPE
  itself, which moves no byte in NHWC order;
- fuses each CONV_2D with the MAX_POOL_2D that follows it, so the full-resolution
  convolution output never exists (and convolution outputs no pool window reads, such
  as the last row and column of an odd-sized map, are never computed);
- turns quantization parameters into what the kernels use: per-channel fixed-point
  multipliers and shifts, activation clamps, biases with the input zero point folded in,
  weights reordered for the kernels' dot products;
- plans the activation memory: one static buffer, with each tensor at an offset chosen
  so that tensors alive at the same time never overlap, where a layer that reads its
  input row by row may write its output over the rows it has finished with.

The quantization arithmetic follows the TFLite int8 specification (and TFLM's reference
kernels, which the generated code must match bit for bit).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_tflite.core import recipes
from mnist_tflite.core.errors import MnistTfliteError, fail, read_user_file
from mnist_tflite.edge.flatbuffer import FLOAT_TYPES, ModelInfo, parse

# Ops that become kernels, and ops folded away at compile time.
KERNEL_OPS = ("CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE")
FOLDED_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")
INT8_NAMES = "recipes " + ", ".join(recipes.INT8_RECIPES)
ALIGN = 4  # every buffer offset: word loads (LDR/LDRD) need it on a Cortex-M


@dataclass(frozen=True)
class Quant:
    """An activation tensor as the caller sees it."""

    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": "int8",
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


@dataclass
class Layer:
    """One kernel call of the generated ``invoke``."""

    kind: str  # conv | fc | maxpool | softmax | copy
    nodes: tuple[int, ...]  # the flatbuffer nodes it implements
    ops: tuple[str, ...]
    src: int  # activation tensor read (flatbuffer tensor index)
    dst: int  # activation tensor written
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    fields: dict[str, Any] = field(default_factory=dict)  # the kernel's parameter struct
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # its constant arrays
    scratch_bytes: int = 0
    stream_distance: int | None = None  # see _stream_distance; None: output may not overlap input
    macs_model: int = 0  # multiply-accumulates the model describes
    macs_computed: int = 0  # what the kernel computes (skipped outputs, zero padding)

    @property
    def label(self) -> str:
        return "+".join(self.ops)


@dataclass
class Plan:
    """Offsets in the one static activation buffer; ``None`` for the caller's input/output."""

    arena_bytes: int
    offsets: dict[int, int | None]  # storage tensor -> offset
    scratch: dict[int, int]  # layer index -> offset
    sizes: dict[int, int]


@dataclass
class Program:
    """A checked, folded, fused and planned int8 model, ready for the code generator."""

    model_bytes: int
    input: Quant
    output: Quant
    output_kind: str  # "logits" (ends in FULLY_CONNECTED) or "softmax" or the last op's name
    layers: list[Layer]
    folded: list[tuple[int, str]]  # nodes removed at compile time
    storage: dict[int, int]  # tensor -> tensor whose buffer it shares (RESHAPE aliases)
    input_tensor: int
    output_tensor: int
    plan: Plan
    macs_model: int

    @property
    def macs_computed(self) -> int:
        return sum(layer.macs_computed for layer in self.layers)

    def weight_bytes(self) -> int:
        return sum(a.nbytes for layer in self.layers for a in layer.arrays.values())


# ---- the flatbuffer -------------------------------------------------------------------------


@dataclass
class _Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int
    data: np.ndarray | None  # constant contents

    @property
    def scale(self) -> float:
        return float(self.scales[0]) if self.scales.size else 0.0

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0]) if self.zero_points.size else 0


_NP_TYPES = {"INT8": np.int8, "INT32": np.int32, "UINT8": np.uint8, "INT16": np.int16, "INT64": np.int64}


def _enum(enum: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _read(data: bytes, path: object) -> tuple[ModelInfo, Any, list[_Tensor], list[Any]]:
    """Parse (corrupt files fail here, one line) and collect tensors with constant data."""
    from ai_edge_litert import schema_py_generated as schema

    info = parse(data, path)
    types = _enum(schema.TensorType)
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        if len(model.subgraphs or []) != 1:
            raise fail(path, f"expected one subgraph, found {len(model.subgraphs or [])}")
        g = model.subgraphs[0]
        tensors = []
        for i, t in enumerate(g.tensors or []):
            dtype = types.get(t.type, str(t.type))
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
            buf = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
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
            name = t.name.decode(errors="replace") if t.name else f"tensor {i}"
            tensors.append(_Tensor(i, name, dtype, shape, scales, zps, qdim, arr))
        operators = list(g.operators or [])
    except MnistTfliteError:
        raise
    except Exception as exc:
        raise fail(path, f"corrupt model: cannot read it ({type(exc).__name__}: {exc})") from None
    return info, model, tensors, operators


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


# ---- quantization arithmetic -----------------------------------------------------------------


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """A positive real as (multiplier, shift): real ~= multiplier * 2^(shift - 31), 2^30 <= m < 2^31."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    fixed = _round_half_away(q * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return fixed, shift


def activation_range(fused: int, scale: float, zero_point: int, path: object, where: str) -> tuple[int, int]:
    """The int8 clamp of a fused activation (NONE, RELU, RELU6, RELU_N1_TO_1)."""

    def q(x: float) -> int:
        return zero_point + _round_half_away(float(np.float32(x) / np.float32(scale)))

    if fused == 0:
        return -128, 127
    if fused == 1:
        return max(-128, q(0.0)), 127
    if fused == 2:
        return max(-128, q(-1.0)), min(127, q(1.0))
    if fused == 3:
        return max(-128, q(0.0)), min(127, q(6.0))
    names = {4: "TANH", 5: "SIGN_BIT"}
    raise fail(path, f"unsupported fused activation {names.get(fused, fused)} in {where}")


def _out_size(padding: int, size: int, k: int, stride: int) -> tuple[int, int]:
    """(output size, padding before) of TFLite SAME (0) / VALID (1) padding."""
    if padding == 0:
        out = (size + stride - 1) // stride
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2
    return (size - k) // stride + 1, 0


# ---- folding ---------------------------------------------------------------------------------


def _strided_slice(
    x: np.ndarray, begin: np.ndarray, end: np.ndarray, strides: np.ndarray, opts: Any
) -> np.ndarray:
    if opts is not None and (opts.ellipsisMask or opts.newAxisMask):
        raise ValueError("ellipsis/new-axis masks")
    index = []
    shrink = []
    for d in range(len(begin)):
        b, e, s = int(begin[d]), int(end[d]), int(strides[d])
        if opts is not None and opts.beginMask >> d & 1:
            b = None
        if opts is not None and opts.endMask >> d & 1:
            e = None
        if opts is not None and opts.shrinkAxisMask >> d & 1:
            index.append(b if b is not None else 0)
            shrink.append(True)
        else:
            index.append(slice(b, e, s))
            shrink.append(False)
    return np.asarray(x[tuple(index)])


def _fold(op_name: str, op: Any, tensors: list[_Tensor], values: dict[int, np.ndarray]) -> np.ndarray | None:
    """The constant output of a shape-only op, or None if it is not one."""
    ins = [int(i) for i in op.inputs]
    if op_name == "SHAPE":
        return np.asarray(tensors[ins[0]].shape, dtype=np.int32)
    if not all(i >= 0 and i in values for i in ins):
        return None
    args = [values[i] for i in ins]
    if op_name == "STRIDED_SLICE":
        return _strided_slice(args[0], args[1], args[2], args[3], op.builtinOptions)
    if op_name == "PACK":
        axis = op.builtinOptions.axis if op.builtinOptions is not None else 0
        return np.stack([np.asarray(a) for a in args], axis=axis)
    return None


# ---- lowering --------------------------------------------------------------------------------


def _check_int8(t: _Tensor, path: object, what: str) -> None:
    if t.dtype != "INT8":
        raise fail(path, f"{what} is {t.dtype.lower()}, expected int8")


def _weights(t: _Tensor, path: object, where: str) -> np.ndarray:
    if t.data is None:
        raise fail(path, f"{where}: weights {t.name!r} are not constant")
    if t.dtype != "INT8":
        raise fail(path, f"{where}: weights are {t.dtype.lower()}, expected int8")
    if t.zero_points.size and np.any(t.zero_points != 0):
        raise fail(path, f"{where}: weights have a non-zero zero point (int8 weights are symmetric)")
    return np.asarray(t.data, dtype=np.int8).reshape(t.shape)


def _bias(tensors: list[_Tensor], index: int, n: int, path: object, where: str) -> np.ndarray:
    if index < 0:
        return np.zeros(n, dtype=np.int64)
    t = tensors[index]
    if t.dtype != "INT32" or t.data is None or t.data.size != n:
        raise fail(
            path, f"{where}: bias must be {n} constant int32 values (found {t.dtype.lower()} {t.shape})"
        )
    return np.asarray(t.data, dtype=np.int64).reshape(n)


def _requant(in_q: _Tensor, w: _Tensor, out_q: _Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    scales = w.scales if w.scales.size == n else np.full(n, w.scale)
    pairs = [
        quantize_multiplier(float(in_q.scale) * float(s) / float(out_q.scale))
        for s in scales.astype(np.float32)
    ]
    return np.asarray([m for m, _ in pairs], dtype=np.int32), np.asarray([s for _, s in pairs], dtype=np.int8)


def _k_pad(k: int) -> int:
    return (k + 3) // 4 * 4


def _conv_weights(w: np.ndarray) -> np.ndarray:
    """[O, KH, KW, I] -> channel pairs, each group of 4 patch values: 4 bytes of channel 2p, then 2p+1."""
    o = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    kp = _k_pad(k)
    flat = np.zeros((o, kp), dtype=np.int8)
    flat[:, :k] = w.reshape(o, k)
    parts = []
    for c in range(0, o - 1, 2):
        parts.append(flat[c : c + 2].reshape(2, kp // 4, 4).transpose(1, 0, 2).reshape(-1))
    if o % 2:
        parts.append(flat[o - 1])
    return np.concatenate(parts).astype(np.int8)


def _folded_bias(bias: np.ndarray, w: np.ndarray, in_zp: int, path: object, where: str) -> np.ndarray:
    """bias - in_zp * sum(w): the kernels multiply raw input values, padding holds in_zp."""
    folded = bias - in_zp * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    if np.any(np.abs(folded) >= 2**31):
        raise fail(path, f"{where}: bias out of int32 range after folding the input zero point")
    return folded.astype(np.int32)


def _monotone(bias: np.ndarray, k: int, shift: np.ndarray) -> bool:
    """Can the max pool compare int32 sums? Yes unless a left shift could overflow them."""
    bound = int(np.abs(bias).max(initial=0)) + k * 255 * 128
    return all(bound << max(int(s), 0) < 2**31 for s in shift)


def _weighted(kind: str, index, op, tensors, path) -> tuple[str, list[int], Any, Any, Any, Any, Any]:
    """What CONV_2D and FULLY_CONNECTED share: int8 input and output, weights, options."""
    where = f"{kind} (node {index})"
    ins = [int(i) for i in op.inputs]
    x, w, y = tensors[ins[0]], tensors[ins[1]], tensors[int(op.outputs[0])]
    _check_int8(x, path, f"{where} input")
    _check_int8(y, path, f"{where} output")
    return where, ins, x, y, w, _weights(w, path, where), op.builtinOptions


def _conv(index, op, tensors, path) -> Layer:
    where, ins, x, y, w, wt, o = _weighted("CONV_2D", index, op, tensors, path)
    if len(x.shape) != 4 or x.shape[0] != 1 or wt.ndim != 4 or len(y.shape) != 4:
        raise fail(path, f"{where}: expected NHWC input with batch 1 and OHWI weights")
    _, h, wd, c = x.shape
    oc, kh, kw, ic = wt.shape
    if ic != c:
        raise fail(
            path, f"{where}: grouped convolution ({c} input channels, weights for {ic}) is not supported"
        )
    if (o.dilationHFactor, o.dilationWFactor) != (1, 1):
        raise fail(path, f"{where}: dilation {o.dilationHFactor}x{o.dilationWFactor} is not supported")
    oh, pad_t = _out_size(o.padding, h, kh, o.strideH)
    ow, pad_l = _out_size(o.padding, wd, kw, o.strideW)
    if y.shape != (1, oh, ow, oc):
        raise fail(
            path, f"{where}: output shape {list(y.shape)} does not match the convolution ({[1, oh, ow, oc]})"
        )
    if w.scales.size not in (1, oc) or w.quantized_dimension != 0:
        raise fail(path, f"{where}: weights need one scale per output channel (or one in all)")
    act = activation_range(o.fusedActivationFunction, y.scale, y.zero_point, path, where)
    mult, shift = _requant(x, w, y, oc)
    bias = _folded_bias(
        _bias(tensors, ins[2] if len(ins) > 2 else -1, oc, path, where), wt, x.zero_point, path, where
    )
    k = kh * kw * c
    layer = Layer(
        "conv",
        (index,),
        ("CONV_2D",),
        ins[0],
        int(op.outputs[0]),
        (h, wd, c),
        (oh, ow, oc),
        arrays={"weights": _conv_weights(wt), "bias": bias, "mult": mult, "shift": shift},
        scratch_bytes=4 * _k_pad(k) + 8 * oc,  # two patches (int16), sums of two positions
        macs_model=oh * ow * oc * k,
    )
    layer.fields = dict(
        in_h=h, in_w=wd, in_c=c, out_c=oc, k_pad=_k_pad(k), kh=kh, kw=kw, sh=o.strideH, sw=o.strideW,
        pad_t=pad_t, pad_l=pad_l, conv_h=oh, conv_w=ow, ph=1, pw=1, psh=1, psw=1, ppad_t=0, ppad_l=0,
        out_h=oh, out_w=ow, in_zp=x.zero_point, out_zp=y.zero_point, act_min=act[0], act_max=act[1],
    )  # fmt: skip
    layer.fields["_monotone"] = _monotone(bias, k, shift)
    return layer


def _pool_dims(index, op, x_shape, y_shape, path) -> dict[str, int]:
    where = f"MAX_POOL_2D (node {index})"
    o = op.builtinOptions
    _, h, w, c = x_shape
    oh, pt = _out_size(o.padding, h, o.filterHeight, o.strideH)
    ow, pl = _out_size(o.padding, w, o.filterWidth, o.strideW)
    if tuple(y_shape) != (1, oh, ow, c):
        raise fail(path, f"{where}: output shape {list(y_shape)} does not match the pool ({[1, oh, ow, c]})")
    return dict(ph=o.filterHeight, pw=o.filterWidth, psh=o.strideH, psw=o.strideW, ppad_t=pt, ppad_l=pl,
                out_h=oh, out_w=ow)  # fmt: skip


def _maxpool(index, op, tensors, path) -> Layer:
    where = f"MAX_POOL_2D (node {index})"
    x, y = tensors[int(op.inputs[0])], tensors[int(op.outputs[0])]
    _check_int8(x, path, f"{where} input")
    _check_int8(y, path, f"{where} output")
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise fail(path, f"{where}: expected an NHWC input with batch 1")
    if not (math.isclose(x.scale, y.scale, rel_tol=1e-6) and x.zero_point == y.zero_point):
        raise fail(path, f"{where}: input and output quantization differ")
    dims = _pool_dims(index, op, x.shape, y.shape, path)
    act = activation_range(op.builtinOptions.fusedActivationFunction, y.scale, y.zero_point, path, where)
    _, h, w, c = x.shape
    layer = Layer("maxpool", (index,), ("MAX_POOL_2D",), int(op.inputs[0]), int(op.outputs[0]), (h, w, c),
                  (dims["out_h"], dims["out_w"], c))  # fmt: skip
    layer.fields = dict(in_h=h, in_w=w, c=c, **dims, act_min=act[0], act_max=act[1])
    return layer


def _fuse(conv: Layer, pool: Layer, pool_op: Any, index: int, tensors, path) -> Layer:
    """CONV_2D then MAX_POOL_2D as one layer: convolution outputs only where a pool window reads."""
    f = conv.fields
    dims = _pool_dims(
        index, pool_op, (1, f["conv_h"], f["conv_w"], f["out_c"]), tensors[pool.dst].shape, path
    )
    f.update(dims)
    f["act_min"] = max(f["act_min"], pool.fields["act_min"])
    f["act_max"] = min(f["act_max"], pool.fields["act_max"])
    conv.nodes, conv.ops, conv.dst = (*conv.nodes, index), (*conv.ops, "MAX_POOL_2D"), pool.dst
    conv.scratch_bytes = 4 * f["k_pad"] + 4 * f["out_c"]  # one running maximum per channel
    conv.out_shape = (dims["out_h"], dims["out_w"], f["out_c"])
    return conv


def _window(o: int, stride: int, pad: int, size: int, limit: int) -> range:
    start = o * stride - pad
    return range(max(start, 0), min(start + size, limit))


def _fc(index, op, tensors, path) -> Layer:
    where, ins, x, y, w, wt, o = _weighted("FULLY_CONNECTED", index, op, tensors, path)
    if o is not None and o.weightsFormat != 0:
        raise fail(path, f"{where}: shuffled weights format is not supported")
    if wt.ndim != 2:
        raise fail(path, f"{where}: expected 2-D weights, found {list(wt.shape)}")
    units, n = wt.shape
    if math.prod(x.shape) != n or math.prod(y.shape) != units:
        raise fail(
            path, f"{where}: batch must be 1 ({list(x.shape)} in, {list(y.shape)} out, weights {[units, n]})"
        )
    per_channel = w.scales.size > 1
    if w.scales.size not in (1, units):
        raise fail(path, f"{where}: weights need one scale per output (or one in all)")
    act = activation_range(o.fusedActivationFunction if o else 0, y.scale, y.zero_point, path, where)
    mult, shift = _requant(x, w, y, units if per_channel else 1)
    bias = _folded_bias(
        _bias(tensors, ins[2] if len(ins) > 2 else -1, units, path, where), wt, x.zero_point, path, where
    )
    kp = _k_pad(n)
    padded = np.zeros((units, kp), dtype=np.int8)
    padded[:, :n] = wt
    layer = Layer("fc", (index,), ("FULLY_CONNECTED",), ins[0], int(op.outputs[0]), (n,), (units,),
                  arrays={"weights": padded.reshape(-1), "bias": bias, "mult": mult, "shift": shift},
                  macs_model=units * n, macs_computed=units * n)  # fmt: skip
    layer.fields = dict(in_n=n, out_n=units, k_pad=kp, per_channel=int(per_channel), out_zp=y.zero_point,
                        act_min=act[0], act_max=act[1])  # fmt: skip
    return layer


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """(input multiplier, left shift, smallest difference from the max that is not 0) for int8 softmax.

    The differences from the row maximum are scaled by beta * input_scale into a fixed-point
    number with 5 integer bits; differences beyond what that format holds give exp() = 0.
    """
    integer_bits = 5
    real = min(beta * input_scale * (1 << (31 - integer_bits)), (1 << 31) - 1.0)
    mult, shift = quantize_multiplier(real)
    if shift < 0:
        mult, shift = 0, 0
    radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << shift))
    return mult, shift, -radius


def _softmax(index, op, tensors, path) -> Layer:
    where = f"SOFTMAX (node {index})"
    x, y = tensors[int(op.inputs[0])], tensors[int(op.outputs[0])]
    _check_int8(x, path, f"{where} input")
    _check_int8(y, path, f"{where} output")
    if y.zero_point != -128 or not math.isclose(y.scale, 1 / 256, rel_tol=1e-6):
        raise fail(path, f"{where}: int8 softmax output must have scale 1/256 and zero point -128")
    depth = x.shape[-1] if x.shape else 1
    rows = math.prod(x.shape) // max(depth, 1)
    beta = float(op.builtinOptions.beta) if op.builtinOptions is not None else 1.0
    mult, shift, diff_min = softmax_params(float(np.float32(beta)), x.scale)
    layer = Layer("softmax", (index,), ("SOFTMAX",), int(op.inputs[0]), int(op.outputs[0]), tuple(x.shape),
                  tuple(y.shape))  # fmt: skip
    layer.fields = dict(rows=rows, depth=depth, in_mult=mult, in_left_shift=shift, diff_min=diff_min)
    layer.stream_distance = 0  # element-wise: may write over its own input
    return layer


def _stream_distance(layer: Layer) -> int | None:
    """How far below its input a row-by-row layer may start its output (bytes; may be < 0).

    Output row r is written after input rows before first_row(r) are no longer needed, so
    it is safe when out_offset + end_of_output_row(r) <= in_offset + first_row(r) * row_bytes
    for every r: the distance is the largest difference.
    """
    f = layer.fields
    if layer.kind == "conv":
        in_row = f["in_w"] * f["in_c"]
        out_row = f["out_w"] * f["out_c"]
        worst = -(10**9)
        for oy in range(f["out_h"]):
            conv_rows = _window(oy, f["psh"], f["ppad_t"], f["ph"], f["conv_h"])
            first_conv = conv_rows.start if len(conv_rows) else 0
            first_in = max(first_conv * f["sh"] - f["pad_t"], 0)
            worst = max(worst, (oy + 1) * out_row - first_in * in_row)
        return worst
    if layer.kind == "maxpool":
        in_row = f["in_w"] * f["c"]
        out_row = f["out_w"] * f["c"]
        return max(
            (oy + 1) * out_row - max(oy * f["psh"] - f["ppad_t"], 0) * in_row for oy in range(f["out_h"])
        )
    return layer.stream_distance


def _computed_macs(layer: Layer) -> None:
    f = layer.fields
    if layer.kind == "conv":
        positions = f["conv_h"] * f["conv_w"]
        if f["ph"] * f["pw"] > 1:
            # each pool window recomputes the convolution outputs it reads
            positions = sum(
                len(_window(oy, f["psh"], f["ppad_t"], f["ph"], f["conv_h"]))
                * len(_window(ox, f["psw"], f["ppad_l"], f["pw"], f["conv_w"]))
                for oy in range(f["out_h"])
                for ox in range(f["out_w"])
            )
        layer.macs_computed = positions * f["out_c"] * f["k_pad"]


# ---- memory planning -------------------------------------------------------------------------


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _place(
    combo: tuple[tuple[str, str], ...],
    layers: list[Layer],
    storage: dict[int, int],
    sizes: dict[int, int],
    external: set[int],
) -> tuple[int, dict[int, int], dict[int, int]]:
    """One combination of placements: (span, buffer offsets, scratch offsets), rebased to 0."""
    off: dict[int, int] = {}
    scratch: dict[int, int] = {}
    for i, (layer, (out_mode, scr_mode)) in enumerate(zip(layers, combo, strict=True)):
        src, dst = storage[layer.src], storage[layer.dst]
        if dst not in external and dst not in off:
            if src in external or src not in off:
                off[dst] = 0 if not off else min(off.values())
            elif out_mode == "same":
                off[dst] = off[src]
            elif out_mode == "above":
                off[dst] = off[src] + sizes[src]
            elif out_mode == "below":
                off[dst] = off[src] - sizes[dst]
            else:  # stream
                off[dst] = off[src] - _align(max(_stream_distance(layer) or 0, -(10**9)))
        if layer.scratch_bytes:
            live = [(off[s], off[s] + sizes[s]) for s in (src, dst) if s not in external and s in off]
            lo = min((a for a, _ in live), default=0)
            hi = max((b for _, b in live), default=0)
            size = _align(layer.scratch_bytes)
            scratch[i] = hi if scr_mode == "above" else lo - size
    starts = [*off.values(), *scratch.values()]
    ends = [off[s] + sizes[s] for s in off] + [scratch[i] + _align(layers[i].scratch_bytes) for i in scratch]
    if not starts:
        span, base = 0, 0
    else:
        base = min(starts)
        span = max(ends) - base
    return span, {s: o - base for s, o in off.items()}, {i: o - base for i, o in scratch.items()}


def plan_memory(
    layers: list[Layer], storage: dict[int, int], sizes: dict[int, int], external: set[int]
) -> Plan:
    """Offsets for every internal activation buffer and scratch area: the smallest span found.

    Tensors of a chain are live two at a time (a layer's input and output), plus the
    layer's scratch. Each placement is tried relative to the layer's input: below it at
    the streaming distance (overlapping the rows already consumed), below it with no
    overlap, or above it; scratch goes below or above both. All combinations are tried
    (a few thousand for these models) and the smallest total span wins.
    """
    choices = []
    for layer in layers:
        src, dst = storage[layer.src], storage[layer.dst]
        outs: list[str] = ["free"] if src in external or dst in external else ["above", "below"]
        if src not in external and dst not in external and src == dst:
            outs = ["same"]
        elif "below" in outs and _stream_distance(layer) is not None:
            outs.append("stream")
        scr = ["above", "below"] if layer.scratch_bytes else ["none"]
        choices.append(list(itertools.product(outs, scr)))
    best: tuple[int, dict[int, int], dict[int, int]] | None = None
    for combo in itertools.product(*choices):
        placed = _place(combo, layers, storage, sizes, external)
        if best is None or placed[0] < best[0]:
            best = placed
    assert best is not None
    span, off, scratch = best
    offsets: dict[int, int | None] = {s: None for s in external}
    offsets.update(off)
    _check_plan(layers, storage, sizes, offsets, scratch)
    return Plan(span, offsets, scratch, dict(sizes))


def _check_plan(layers, storage, sizes, offsets, scratch) -> None:
    """Assert the plan's invariants: live buffers never overlap, except a streaming layer's."""
    for i, layer in enumerate(layers):
        src, dst = storage[layer.src], storage[layer.dst]
        regions = []
        for s in {src, dst}:
            if offsets.get(s) is not None:
                regions.append((offsets[s], offsets[s] + sizes[s], s))
        if i in scratch:
            regions.append((scratch[i], scratch[i] + _align(layer.scratch_bytes), "scratch"))
        for (a0, a1, an), (b0, b1, bn) in itertools.combinations(regions, 2):
            if a0 < b1 and b0 < a1 and not ({an, bn} == {src, dst} and src != dst):
                raise AssertionError(f"plan overlaps {an} and {bn} in layer {i}")
        if offsets.get(src) is not None and offsets.get(dst) is not None and src != dst:
            o_in, o_out = offsets[src], offsets[dst]
            overlap = o_out < o_in + sizes[src] and o_in < o_out + sizes[dst]
            if overlap:
                d = _stream_distance(layer)
                assert d is not None and o_in - o_out >= d, f"layer {i} writes over input it still reads"


# ---- the whole model -------------------------------------------------------------------------


def compile_model(data: bytes, path: object = "model") -> Program:
    """Check, fold, fuse and plan ``data`` (a .tflite flatbuffer). Raises MnistTfliteError."""
    info, model, tensors, operators = _read(data, path)
    names = _checked_op_names(info, model, operators, path)
    folded, kept = _fold_shape_ops(names, operators, tensors, path)
    input_tensor, output_tensor = info.inputs[0], info.outputs[0]
    layers, storage = _chain(kept, names, operators, tensors, input_tensor, output_tensor, folded, path)
    for layer in layers:
        _computed_macs(layer)

    external = {storage[input_tensor], storage[output_tensor]}
    sizes = {}
    for layer in layers:
        for t in (layer.src, layer.dst):
            sizes[storage[t]] = _align(math.prod(tensors[t].shape))
    plan = plan_memory(layers, storage, sizes, external)

    x, y = tensors[input_tensor], tensors[output_tensor]
    last_op = next((names[i] for i in reversed(kept) if names[i] != "RESHAPE"), "RESHAPE")
    kind = {"FULLY_CONNECTED": "logits", "SOFTMAX": "softmax"}.get(last_op, last_op.lower())
    return Program(
        model_bytes=len(data),
        input=Quant(tuple(x.shape), x.scale, x.zero_point),
        output=Quant(tuple(y.shape), y.scale, y.zero_point),
        output_kind=kind,
        layers=layers,
        folded=sorted(folded),
        storage=storage,
        input_tensor=input_tensor,
        output_tensor=output_tensor,
        plan=plan,
        macs_model=info.macs,
    )


def _checked_op_names(info, model, operators, path) -> list[str]:
    """Every node's op name; a model that is not int8 or holds an op we lack is refused here."""
    from ai_edge_litert import schema_py_generated as schema

    op_names = _enum(schema.BuiltinOperator)
    names = []
    for op in operators:
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        name = op_names.get(code, f"BUILTIN_{code}")
        names.append(f"CUSTOM:{oc.customCode.decode(errors='replace')}" if name == "CUSTOM" else name)
    problem = int8_problem(info)
    if problem:
        raise fail(path, problem)
    supported = ", ".join((*KERNEL_OPS, *FOLDED_OPS))
    for index, name in enumerate(names):
        if name not in KERNEL_OPS and name not in FOLDED_OPS:
            raise fail(path, f"unsupported op {name} (node {index}); compile supports {supported}")
    return names


def _fold_shape_ops(names, operators, tensors, path) -> tuple[list[tuple[int, str]], list[int]]:
    """Fold what depends only on shapes (batch 1): (folded nodes, the nodes left to run)."""
    values = {t.index: t.data for t in tensors if t.data is not None}
    folded: list[tuple[int, str]] = []
    kept: list[int] = []
    for index, (name, op) in enumerate(zip(names, operators, strict=True)):
        if name not in FOLDED_OPS:
            kept.append(index)
            continue
        try:
            result = _fold(name, op, tensors, values)
        except (ValueError, IndexError, TypeError) as exc:
            raise fail(path, f"{name} (node {index}) cannot be folded at compile time: {exc}") from None
        if result is None:
            raise fail(path, f"{name} (node {index}) depends on runtime values; only shape chains are folded")
        values[int(op.outputs[0])] = np.asarray(result)
        folded.append((index, name))
    return folded, kept


def _chain(kept, names, operators, tensors, input_tensor, output_tensor, folded, path):
    """The kept nodes as one chain of layers (conv + max-pool fused), and where each tensor lives."""
    layers: list[Layer] = []
    storage: dict[int, int] = {input_tensor: input_tensor}
    consumers: dict[int, int] = {}
    for index in kept:
        for i in operators[index].inputs:
            consumers[int(i)] = consumers.get(int(i), 0) + 1
    current = input_tensor
    for index in kept:
        op, name = operators[index], names[index]
        src = int(op.inputs[0])
        if src != current:
            raise fail(
                path,
                f"{name} (node {index}) reads {tensors[src].name!r}, not the previous layer's output: "
                "compile handles a chain of layers",
            )
        dst = int(op.outputs[0])
        if name == "RESHAPE":
            if math.prod(tensors[src].shape) != math.prod(tensors[dst].shape):
                raise fail(path, f"RESHAPE (node {index}) changes the element count")
            storage[dst] = storage[src]
            folded.append((index, name))
            current = dst
            continue
        builder = {"CONV_2D": _conv, "MAX_POOL_2D": _maxpool, "FULLY_CONNECTED": _fc, "SOFTMAX": _softmax}[
            name
        ]
        layer = builder(index, op, tensors, path)
        prev = layers[-1] if layers else None
        if (
            name == "MAX_POOL_2D"
            and prev is not None
            and prev.kind == "conv"
            and prev.dst == src
            and len(prev.nodes) == 1
            and consumers.get(src, 0) == 1
            and src != output_tensor
            and prev.fields["_monotone"]
        ):
            _fuse(prev, layer, op, index, tensors, path)
        else:
            layers.append(layer)
        storage[dst] = dst
        current = dst
    if current != output_tensor:
        raise fail(path, "the graph's output is not the last layer's output")
    _output_storage(layers, storage, tensors, input_tensor, output_tensor)
    return layers, storage


def _output_storage(layers, storage, tensors, input_tensor, output_tensor) -> None:
    """The output is the input reshaped, or a RESHAPE of the last layer's output: copy or alias."""
    if layers and storage[output_tensor] == output_tensor:
        return
    if not layers or storage[output_tensor] == input_tensor:
        copy = Layer("copy", (), ("COPY",), input_tensor, output_tensor, tensors[input_tensor].shape,
                     tensors[output_tensor].shape)  # fmt: skip
        copy.fields = {"n": math.prod(tensors[output_tensor].shape)}
        layers.append(copy)
        storage[output_tensor] = output_tensor
    else:
        last = storage[output_tensor]
        for s, root in list(storage.items()):
            if root == last:
                storage[s] = output_tensor


def load_program(path: str | os.PathLike[str]) -> tuple[bytes, Program]:
    """Read and compile a ``.tflite`` file the user named."""
    data = read_user_file(path, "a TFLite flatbuffer (.tflite)")
    return data, compile_model(data, path)
