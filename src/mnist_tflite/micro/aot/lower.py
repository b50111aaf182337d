"""Pass 3 of the compiler: fold what depends only on shapes, lower the rest into kernel calls.

- folds (fold.py) the SHAPE -> STRIDED_SLICE -> PACK chain a dynamic batch puts in front of
  Flatten's RESHAPE (the batch is 1), and RESHAPE itself, which moves no byte in NHWC order;
- lowers each CONV_2D, MAX_POOL_2D, FULLY_CONNECTED and SOFTMAX into a ``Layer`` holding
  its kernel's parameter struct (params.py), with the weights reordered for the kernels'
  dot products;
- fuses each CONV_2D with the MAX_POOL_2D that follows it, so the full-resolution
  convolution output never exists (and convolution outputs no pool window reads, such as
  the last row and column of an odd-sized map, are never computed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_tflite.core.errors import fail
from mnist_tflite.micro.aot import quantization as quant
from mnist_tflite.micro.aot import winograd
from mnist_tflite.micro.aot.fold import fold_shape_ops
from mnist_tflite.micro.aot.params import (
    ConvParams,
    CopyParams,
    Dims,
    FcParams,
    Filter,
    Layer,
    PoolParams,
    SoftmaxParams,
    Window,
)
from mnist_tflite.micro.aot.read import Graph, Op, Tensor

_U8, _U16 = 255, 65_535  # the widths of the C struct members (int8_kernels.h)


@dataclass
class Lowered:
    """The model as a chain of kernel calls."""

    layers: list[Layer]
    storage: dict[int, int]  # tensor -> tensor whose buffer it shares (RESHAPE aliases)
    folded: list[tuple[int, str]]  # nodes removed at compile time
    kept: list[int]  # nodes that remain (kernels and RESHAPEs), in order


def lower(graph: Graph, path: object) -> Lowered:
    """Fold, lower and fuse ``graph``'s ops into one chain from its input to its output."""
    folded, kept = fold_shape_ops(graph, path)
    layers, storage = _chain(graph, kept, folded, path)
    return Lowered(layers, storage, sorted(folded), kept)


# ---- shared checks ---------------------------------------------------------------------------


def _weights(t: Tensor, path: object, where: str) -> np.ndarray:
    if t.data is None:
        raise fail(path, f"{where}: weights {t.name!r} are not constant")
    if t.dtype != "INT8":
        raise fail(path, f"{where}: weights are {t.dtype.lower()}, expected int8")
    if t.data.size != math.prod(t.shape) or any(d <= 0 for d in t.shape):
        raise fail(path, f"{where}: weights of shape {list(t.shape)} but {t.data.size} values stored")
    if t.zero_points.size and np.any(t.zero_points != 0):
        raise fail(path, f"{where}: weights have a non-zero zero point (int8 weights are symmetric)")
    return np.asarray(t.data, dtype=np.int8).reshape(t.shape)


def _bias(tensors: list[Tensor], index: int, n: int, path: object, where: str) -> np.ndarray:
    if index < 0:
        return np.zeros(n, dtype=np.int64)
    t = tensors[index]
    if t.dtype != "INT32" or t.data is None or t.data.size != n:
        raise fail(
            path, f"{where}: bias must be {n} constant int32 values (found {t.dtype.lower()} {t.shape})"
        )
    return np.asarray(t.data, dtype=np.int64).reshape(n)


def _options(op: Op, path: object) -> Any:
    if op.options is None:
        raise fail(path, f"{op.where}: its options are missing")
    return op.options


def _dims(shape: tuple[int, ...], path: object, what: str) -> Dims:
    """NHWC with batch 1 and sizes the C struct holds."""
    if len(shape) != 4 or shape[0] != 1 or not all(1 <= d <= _U16 for d in shape[1:]):
        raise fail(
            path, f"{what}: expected an NHWC shape with batch 1 (sizes 1..{_U16}), found {list(shape)}"
        )
    return Dims(*shape[1:])


def _window(o: Any, kh: int, kw: int, size: Dims, path: object, where: str) -> tuple[Window, int, int]:
    """The sliding window of a conv or pool over ``size``: (window, output rows, output columns)."""
    if not (1 <= kh <= _U8 and 1 <= kw <= _U8 and 1 <= o.strideH <= _U8 and 1 <= o.strideW <= _U8):
        raise fail(
            path, f"{where}: window {kh}x{kw} with stride {o.strideH}x{o.strideW}; expected 1..{_U8} each"
        )
    if o.padding not in (0, 1):
        raise fail(path, f"{where}: unknown padding {o.padding}")
    oh, pad_top = _out_size(o.padding, size.h, kh, o.strideH)
    ow, pad_left = _out_size(o.padding, size.w, kw, o.strideW)
    if oh < 1 or ow < 1 or pad_top > _U8 or pad_left > _U8:
        raise fail(path, f"{where}: a {kh}x{kw} window does not fit the {size.h}x{size.w} input")
    return Window(kh, kw, o.strideH, o.strideW, pad_top, pad_left), oh, ow


def _out_size(padding: int, size: int, k: int, stride: int) -> tuple[int, int]:
    """(output size, padding before) of TFLite SAME (0) / VALID (1) padding."""
    if padding == 0:
        out = (size + stride - 1) // stride
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2
    return (size - k) // stride + 1, 0


def _k_pad(k: int) -> int:
    return (k + 3) // 4 * 4


# ---- the kernels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Weighted:
    """What CONV_2D and FULLY_CONNECTED share: checked int8 input and output, weights, bias."""

    x: Tensor
    w: Tensor
    y: Tensor
    weights: np.ndarray
    raw_bias: np.ndarray  # the model's int32 bias (zeros if it has none)


def _weighted(op: Op, graph: Graph, path: object) -> _Weighted:
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        raise fail(path, f"{op.where}: expected input, weights and bias")
    x, w, y = (graph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    quant.check_activation(x, path, f"{op.where} input")
    quant.check_activation(y, path, f"{op.where} output")
    weights = _weights(w, path, op.where)
    bias_index = op.inputs[2] if len(op.inputs) > 2 else -1
    return _Weighted(x, w, y, weights, _bias(graph.tensors, bias_index, weights.shape[0], path, op.where))


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


def conv_weights_mve(packed: np.ndarray, out_c: int, k_pad: int) -> np.ndarray:
    """The MVE kernels' layout of weights packed by ``_conv_weights``: one row per output channel,
    its k_pad bytes then zeros up to a multiple of 16 (one VMLADAVA.S8 per 16)."""
    flat = np.zeros((out_c, -(-k_pad // 16) * 16), dtype=np.int8)
    pairs = out_c // 2
    interleaved = packed[: 2 * pairs * k_pad].reshape(pairs, k_pad // 4, 2, 4)
    flat[: 2 * pairs, :k_pad] = interleaved.transpose(0, 2, 1, 3).reshape(2 * pairs, k_pad)
    if out_c % 2:
        flat[-1, :k_pad] = packed[2 * pairs * k_pad :]
    return flat.reshape(-1)


def conv_weights_m0(packed: np.ndarray, out_c: int, k_pad: int, k: int) -> np.ndarray:
    """The ARMv6-M kernel's layout of weights packed by ``_conv_weights`` (int8_conv_m0.h): blocks
    of four output channels [block][k][4], then the rows of the channels after the last block;
    k values per row, unpadded, each stored as the weight + 128 (the byte LDRB reads)."""
    rows = conv_weights_mve(packed, out_c, k_pad).reshape(out_c, -1)[:, :k].astype(np.int16) + 128
    blocks = out_c // 4 * 4
    parts = [rows[:blocks].reshape(-1, 4, k).transpose(0, 2, 1).reshape(-1), rows[blocks:].reshape(-1)]
    return np.concatenate(parts).astype(np.uint8).view(np.int8)


def _conv(op: Op, graph: Graph, path: object) -> Layer:
    o = _options(op, path)
    if len(graph.tensors[op.inputs[1]].shape) != 4:
        raise fail(
            path, f"{op.where}: expected OHWI weights, found {list(graph.tensors[op.inputs[1]].shape)}"
        )
    v = _weighted(op, graph, path)
    src = _dims(v.x.shape, path, f"{op.where} input")
    oc, kh, kw, ic = v.weights.shape
    if ic != src.c or oc > _U16:
        raise fail(
            path, f"{op.where}: weights {list(v.weights.shape)} for {src.c} input channels are not supported"
        )
    if (o.dilationHFactor, o.dilationWFactor) != (1, 1):
        raise fail(path, f"{op.where}: dilation {o.dilationHFactor}x{o.dilationWFactor} is not supported")
    kernel, oh, ow = _window(o, kh, kw, src, path, op.where)
    if v.y.shape != (1, oh, ow, oc):
        raise fail(
            path,
            f"{op.where}: output shape {list(v.y.shape)} does not match the convolution ({[1, oh, ow, oc]})",
        )
    if v.w.scales.size not in (1, oc) or v.w.quantized_dimension != 0:
        raise fail(path, f"{op.where}: weights need one scale per output channel (or one in all)")
    k = kh * kw * src.c
    params = ConvParams(
        input=src,
        conv=Dims(oh, ow, oc),
        output=Dims(oh, ow, oc),
        kernel=kernel,
        pool=Window(),
        filter=Filter(
            _conv_weights(v.weights),
            quant.folded_bias(v.raw_bias, v.weights, v.x.zero_point, path, op.where),
            _k_pad(k),
        ),
        quant=quant.channel_quant(v.x, v.w, v.y, oc, path, op.where),
        in_zp=v.x.zero_point,
        out_zp=v.y.zero_point,
        act=quant.activation_range(o.fusedActivationFunction, v.y.scale, v.y.zero_point, path, op.where),
    )
    return Layer("conv", (op.index,), ("CONV_2D",), op.inputs[0], op.outputs[0], (src.h, src.w, src.c),
                 (oh, ow, oc), params, macs_model=oh * ow * oc * k)  # fmt: skip


def _pool_window(op: Op, src: Dims, y_shape: tuple[int, ...], path: object) -> tuple[Window, Dims]:
    o = _options(op, path)
    window, oh, ow = _window(o, o.filterHeight, o.filterWidth, src, path, op.where)
    if tuple(y_shape) != (1, oh, ow, src.c):
        raise fail(
            path, f"{op.where}: output shape {list(y_shape)} does not match the pool ({[1, oh, ow, src.c]})"
        )
    return window, Dims(oh, ow, src.c)


def _maxpool(op: Op, graph: Graph, path: object) -> Layer:
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    quant.check_activation(x, path, f"{op.where} input")
    quant.check_activation(y, path, f"{op.where} output")
    src = _dims(x.shape, path, f"{op.where} input")
    if not (math.isclose(x.scale, y.scale, rel_tol=1e-6) and x.zero_point == y.zero_point):
        raise fail(path, f"{op.where}: input and output quantization differ")
    window, dst = _pool_window(op, src, y.shape, path)
    act = quant.activation_range(op.options.fusedActivationFunction, y.scale, y.zero_point, path, op.where)
    params = PoolParams(input=src, output=dst, pool=window, act=act)
    return Layer("maxpool", (op.index,), ("MAX_POOL_2D",), op.inputs[0], op.outputs[0], (src.h, src.w, src.c),
                 (dst.h, dst.w, dst.c), params)  # fmt: skip


def unpacked_weights(p: ConvParams) -> np.ndarray:
    """The OHWI weights back from the kernels' packed layout."""
    oc, kp = p.conv.c, p.filter.k_pad
    rows = conv_weights_mve(p.filter.weights, oc, kp).reshape(oc, -1)
    return rows[:, : p.kernel.h * p.kernel.w * p.input.c].reshape(oc, p.kernel.h, p.kernel.w, p.input.c)


def _fuse(conv: Layer, pool: Layer, pool_op: Op, graph: Graph, path: object) -> Layer:
    """CONV_2D then MAX_POOL_2D as one layer: convolution outputs only where a pool window reads."""
    p = conv.params
    assert isinstance(p, ConvParams) and isinstance(pool.params, PoolParams)
    window, dst = _pool_window(pool_op, p.conv, graph.tensors[pool.dst].shape, path)
    fused = dataclasses.replace(p, output=dst, pool=window, act=p.act.narrowed(pool.params.act))
    w = unpacked_weights(p)
    if winograd.eligible(w, p.kernel, window, p.input.c):
        fused = dataclasses.replace(fused, wino=winograd.kernel_weights(w))
    return Layer("conv", (*conv.nodes, pool_op.index), (*conv.ops, "MAX_POOL_2D"), conv.src, pool.dst,
                 conv.in_shape, (dst.h, dst.w, dst.c), fused, macs_model=conv.macs_model)  # fmt: skip


def _fc(op: Op, graph: Graph, path: object) -> Layer:
    o = op.options
    if o is not None and o.weightsFormat != 0:
        raise fail(path, f"{op.where}: shuffled weights format is not supported")
    if len(graph.tensors[op.inputs[1]].shape) != 2:
        raise fail(path, f"{op.where}: expected 2-D weights, found {list(graph.tensors[op.inputs[1]].shape)}")
    v = _weighted(op, graph, path)
    units, n = v.weights.shape
    if math.prod(v.x.shape) != n or math.prod(v.y.shape) != units or n > _U16 or units > _U16:
        raise fail(
            path,
            f"{op.where}: batch must be 1 ({list(v.x.shape)} in, {list(v.y.shape)} out, "
            f"weights {[units, n]})",
        )
    per_channel = v.w.scales.size > 1
    if v.w.scales.size not in (1, units):
        raise fail(path, f"{op.where}: weights need one scale per output (or one in all)")
    kp = _k_pad(n)
    padded = np.zeros((units, kp), dtype=np.int8)
    padded[:, :n] = v.weights
    params = FcParams(
        in_n=n,
        out_n=units,
        filter=Filter(
            padded.reshape(-1), quant.folded_bias(v.raw_bias, v.weights, v.x.zero_point, path, op.where), kp
        ),
        quant=quant.channel_quant(v.x, v.w, v.y, units if per_channel else 1, path, op.where),
        per_channel=int(per_channel),
        out_zp=v.y.zero_point,
        act=quant.activation_range(
            o.fusedActivationFunction if o else 0, v.y.scale, v.y.zero_point, path, op.where
        ),
    )
    return Layer("fc", (op.index,), ("FULLY_CONNECTED",), op.inputs[0], op.outputs[0], (n,), (units,), params,
                 macs_model=units * n, macs_computed=units * n)  # fmt: skip


def _softmax(op: Op, graph: Graph, path: object) -> Layer:
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    quant.check_activation(x, path, f"{op.where} input")
    quant.check_activation(y, path, f"{op.where} output")
    if y.zero_point != -128 or not math.isclose(y.scale, 1 / 256, rel_tol=1e-6):
        raise fail(path, f"{op.where}: int8 softmax output must have scale 1/256 and zero point -128")
    depth = x.shape[-1] if x.shape else 1
    rows = math.prod(x.shape) // max(depth, 1)
    if not (1 <= depth <= _U16 and 1 <= rows <= _U16) or math.prod(y.shape) != rows * depth:
        raise fail(path, f"{op.where}: shapes {list(x.shape)} in, {list(y.shape)} out are not supported")
    beta = float(op.options.beta) if op.options is not None else 1.0
    mult, shift, diff_min = quant.softmax_params(float(np.float32(beta)), x.scale)
    params = SoftmaxParams(rows=rows, depth=depth, in_mult=mult, in_left_shift=shift, diff_min=diff_min)
    return Layer("softmax", (op.index,), ("SOFTMAX",), op.inputs[0], op.outputs[0], tuple(x.shape),
                 tuple(y.shape), params)  # fmt: skip


_LOWER = {"CONV_2D": _conv, "MAX_POOL_2D": _maxpool, "FULLY_CONNECTED": _fc, "SOFTMAX": _softmax}


def computed_macs(layer: Layer) -> int:
    """Multiply-accumulates the kernel computes: each pool window recomputes the conv outputs it reads."""
    p = layer.params
    if not isinstance(p, ConvParams):
        return layer.macs_computed
    positions = p.conv.h * p.conv.w
    if p.pool.pooling:
        positions = sum(
            len(p.pool.rows(oy, p.conv.h)) * len(p.pool.cols(ox, p.conv.w))
            for oy in range(p.output.h)
            for ox in range(p.output.w)
        )
    return positions * p.conv.c * p.filter.k_pad


# ---- the chain -------------------------------------------------------------------------------


def _fusable(prev: Layer | None, op: Op, consumers: dict[int, int], output_tensor: int) -> bool:
    """A MAX_POOL_2D that alone reads a plain convolution's output, whose sums it may compare."""
    if op.name != "MAX_POOL_2D" or prev is None or not isinstance(prev.params, ConvParams):
        return False
    src = op.inputs[0]
    if prev.dst != src or len(prev.nodes) != 1 or consumers.get(src, 0) != 1 or src == output_tensor:
        return False
    p = prev.params
    k = p.kernel.h * p.kernel.w * p.input.c
    return quant.pool_on_sums_is_exact(p.filter.bias, k, p.quant.shift)


def _chain(
    graph: Graph, kept: list[int], folded: list[tuple[int, str]], path: object
) -> tuple[list[Layer], dict[int, int]]:
    """The kept nodes as one chain of layers (conv + max-pool fused), and where each tensor lives."""
    layers: list[Layer] = []
    storage: dict[int, int] = {graph.input_tensor: graph.input_tensor}
    consumers: dict[int, int] = {}
    for index in kept:
        for i in graph.ops[index].inputs:
            consumers[i] = consumers.get(i, 0) + 1
    current = graph.input_tensor
    for op in (graph.ops[i] for i in kept):
        src, dst = op.inputs[0], op.outputs[0]
        if src != current:
            raise fail(path, f"{op.where} reads {graph.tensors[src].name!r}, not the previous layer's "
                       "output: compile handles a chain of layers")  # fmt: skip
        if op.name == "RESHAPE":
            if math.prod(graph.tensors[src].shape) != math.prod(graph.tensors[dst].shape):
                raise fail(path, f"{op.where} changes the element count")
            storage[dst] = storage[src]
            folded.append((op.index, op.name))
            current = dst
            continue
        layer = _LOWER[op.name](op, graph, path)
        prev = layers[-1] if layers else None
        if _fusable(prev, op, consumers, graph.output_tensor):
            layers[-1] = _fuse(prev, layer, op, graph, path)
        else:
            layers.append(layer)
        storage[dst] = dst
        current = dst
    if current != graph.output_tensor:
        raise fail(path, "the graph's output is not the last layer's output")
    _output_storage(graph, layers, storage)
    for layer in layers:
        layer.macs_computed = computed_macs(layer)
    return layers, storage


def _output_storage(graph: Graph, layers: list[Layer], storage: dict[int, int]) -> None:
    """The output is the input reshaped, or a RESHAPE of the last layer's output: copy or alias."""
    x, y = graph.input_tensor, graph.output_tensor
    if layers and storage[y] == y:
        return
    if not layers or storage[y] == x:
        shape_in, shape_out = graph.tensors[x].shape, graph.tensors[y].shape
        params = CopyParams(math.prod(shape_out))
        layers.append(Layer("copy", (), ("COPY",), x, y, shape_in, shape_out, params))
        storage[y] = y
    else:
        last = storage[y]
        for s, root in list(storage.items()):
            if root == last:
                storage[s] = y
