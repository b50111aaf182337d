"""The activation plan of ``compile --ram-optimized``: rows streamed through line buffers.

The default plan (plan.py) holds whole feature maps. This one runs the model's leading
convolutions (each perhaps fused with its max pool) one output row at a time, pulled from the
fully connected layer that follows them (``kernels/int8_stream.h``): each convolution's output
lives in a line buffer of only the rows one output row of the next convolution reads, and the
fully connected layer adds each finished row of the last convolution to int32 partial sums. A
convolution computes only the rows and columns later layers read (the rest is trimmed here),
and when the last convolution's row fits over the line-buffer row it has finished reading, it
is written there. Layers after that fully connected one (SOFTMAX, another FULLY_CONNECTED) run
as in the default build.

Graphs of another shape are refused: one line, naming what was found.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mnist_tflite.core.errors import fail
from mnist_tflite.micro.aot.lower import computed_macs
from mnist_tflite.micro.aot.params import ConvParams, Dims, FcParams, Layer
from mnist_tflite.micro.aot.plan import Plan, align, plan_memory

STREAM_HEADER = "int8_stream.h"
_TAIL_KINDS = ("fc", "softmax")
_INT16 = 32_767  # int8_stream.h counts rows in int16_t


@dataclass(frozen=True)
class Stream:
    """Where the streaming driver's buffers are, for the code generator and compile.json."""

    stages: tuple[int, ...]  # the leading convolutions' layer indices
    capacity: tuple[int, ...]  # rows of each line buffer (every stage but the last)
    rings: tuple[int, ...]  # the line buffers' offsets in the activation buffer
    scratch: int  # offset of the convolutions' scratch (one runs at a time)
    row: int  # offset of the last convolution's row
    row_in_place: bool  # that row is written over the first row of the last line buffer
    acc: int  # offset of the fully connected layer's int32 sums
    fc: int  # its layer index
    regions: tuple[tuple[str, int, int], ...]  # (what, offset, bytes), for the reports


def _refuse(path: object, found: str) -> Exception:
    return fail(
        path,
        "--ram-optimized streams the model's leading CONV_2D layers (each perhaps with its MAX_POOL_2D) "
        f"into a FULLY_CONNECTED layer; {found}: compile it without --ram-optimized",
    )


def rows_read(p: ConvParams, y: int) -> range:
    """The input rows output row ``y`` of a convolution reads (``stream_rows_read`` in C)."""
    conv = p.pool.rows(y, p.conv.h)
    lo = conv.start * p.kernel.stride_h - p.kernel.pad_top
    hi = (conv.stop - 1) * p.kernel.stride_h - p.kernel.pad_top + p.kernel.h
    return range(max(lo, 0), min(hi, p.input.h))


def cols_read(p: ConvParams, x: int) -> range:
    """The input columns output column ``x`` reads."""
    conv = p.pool.cols(x, p.conv.w)
    lo = conv.start * p.kernel.stride_w - p.kernel.pad_left
    hi = (conv.stop - 1) * p.kernel.stride_w - p.kernel.pad_left + p.kernel.w
    return range(max(lo, 0), min(hi, p.input.w))


def _check_chain(layers: list[Layer], path: object) -> int:
    """The number of leading convolutions, after checking the chain is one the driver runs."""
    n = next((i for i, layer in enumerate(layers) if layer.kind != "conv"), len(layers))
    if n == 0:
        raise _refuse(path, f"its first layer is {layers[0].label if layers else 'missing'}")
    if n == len(layers) or layers[n].kind != "fc":
        raise _refuse(path, f"layer {n} is {layers[n].label if n < len(layers) else 'the output'}")
    odd = next((layer for layer in layers[n + 1 :] if layer.kind not in _TAIL_KINDS), None)
    if odd is not None:
        raise _refuse(path, f"{odd.label} after the FULLY_CONNECTED layer is not streamed")
    for i in range(n):
        p = layers[i].params
        assert isinstance(p, ConvParams)
        if max(p.input.h, p.output.h) > _INT16:
            raise _refuse(path, f"layer {i} has {max(p.input.h, p.output.h):,} rows (at most {_INT16:,})")
    return n


def _trim(layers: list[Layer], n: int) -> list[Layer]:
    """Each convolution's output cut to the rows and columns the next one reads (same bits: the
    rest is never read, and a reading past the edge is padding either way)."""
    layers = list(layers)
    for j in range(1, n):
        p = layers[j].params
        assert isinstance(p, ConvParams)
        h = max(rows_read(p, y).stop for y in range(p.output.h))
        w = max(cols_read(p, x).stop for x in range(p.output.w))
        if (h, w) == (p.input.h, p.input.w):
            continue
        q = layers[j - 1].params
        assert isinstance(q, ConvParams)
        dims = Dims(h, w, p.input.c)
        prev = dataclasses.replace(
            layers[j - 1], params=dataclasses.replace(q, output=dims), out_shape=(h, w, dims.c)
        )
        layers[j - 1] = prev
        layers[j] = dataclasses.replace(
            layers[j], params=dataclasses.replace(p, input=dims), in_shape=(h, w, dims.c)
        )
    for layer in layers[:n]:
        layer.macs_computed = computed_macs(layer)
    return layers


def _in_place(prev: ConvParams, last: ConvParams) -> bool:
    """Whether the last convolution may write its row over the first row of its line buffer.

    Output pixel x is written after every read of the pixels up to x; the reads after it are
    at columns from the first one pixel x + 1 reads, and row lo(y) is not read again by row y + 1.
    """
    ic, oc = last.input.c, last.conv.c
    if last.output.w * oc > prev.output.w * prev.output.c:
        return False
    columns = all(x * oc <= cols_read(last, x).start * ic for x in range(1, last.output.w))
    rows = all(rows_read(last, y + 1).start > rows_read(last, y).start for y in range(last.output.h - 1))
    return columns and rows


def _buffers(layers: list[Layer], n: int) -> tuple[Stream, int]:
    """The driver's buffers from offset 0: the sums, the line buffers, the scratch, the last row
    (unless it goes over the last line buffer's first row); and where they end."""
    convs = [layer.params for layer in layers[:n]]
    fc = layers[n].params
    assert isinstance(fc, FcParams) and all(isinstance(p, ConvParams) for p in convs)
    capacity = tuple(max(len(rows_read(convs[j], y)) for y in range(convs[j].output.h)) for j in range(1, n))
    row_bytes = [p.output.w * p.output.c for p in convs]
    regions = [(f"int32 sums of layer {n} ({layers[n].label})", 0, 4 * fc.out_n)]
    at = align(4 * fc.out_n)
    rings = []
    for j, rows in enumerate(capacity):
        rings.append(at)
        regions.append((f"line buffer of layer {j}'s output: {rows} of its rows", at, rows * row_bytes[j]))
        at += align(rows * row_bytes[j])
    scratch = at
    scratch_bytes = max(align(layer.scratch_bytes) for layer in layers[:n])
    regions.append(("scratch of the convolutions", at, scratch_bytes))
    at += scratch_bytes
    in_place = n > 1 and _in_place(convs[-2], convs[-1])  # type: ignore[arg-type]
    row = rings[-1] if in_place else at
    if not in_place:
        regions.append((f"row of layer {n - 1}'s output", at, row_bytes[-1]))
        at += align(row_bytes[-1])
    return Stream(tuple(range(n)), capacity, tuple(rings), scratch, row, in_place, 0, n, tuple(regions)), at


def plan_stream(
    layers: list[Layer], storage: dict[int, int], sizes: dict[int, int], external: set[int], path: object
) -> tuple[list[Layer], Plan, Stream]:
    """The layers trimmed, the activation buffer's plan and the driver's buffers. Raises
    MnistTfliteError (one line) for a graph the streaming driver does not run."""
    n = _check_chain(layers, path)
    layers = _trim(layers, n)
    stream, end = _buffers(layers, n)
    fc = layers[n].params
    assert isinstance(fc, FcParams)
    after_sums = align(4 * fc.out_n)
    # the layers from the fully connected one on, as plan.py places them (its input is streamed),
    # after the sums: the layer's output is written while they are read
    tail = plan_memory(layers[n:], storage, sizes, external)
    offsets: dict[int, int | None] = {s: None for s in external}
    buffer_sizes = dict(sizes)
    regions = list(stream.regions)
    for root, off in tail.offsets.items():
        if off is not None:
            offsets[root] = after_sums + off
            regions.append((f"tensor {root} (once the rows are done)", after_sums + off, sizes[root]))
    for j, rows in enumerate(stream.capacity):
        root = storage[layers[j].dst]
        offsets[root] = stream.rings[j]
        buffer_sizes[root] = rows * layers[j].out_shape[1] * layers[j].out_shape[2]
    last = storage[layers[n - 1].dst]
    offsets[last] = stream.row
    buffer_sizes[last] = layers[n - 1].out_shape[1] * layers[n - 1].out_shape[2]
    plan = Plan(
        max(end, after_sums + tail.arena_bytes), offsets, {i: stream.scratch for i in range(n)}, buffer_sizes
    )
    stream = dataclasses.replace(stream, regions=tuple(sorted(regions, key=lambda r: r[1])))
    return layers, plan, stream
