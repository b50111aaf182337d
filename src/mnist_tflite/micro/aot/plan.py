"""Pass 4 of the compiler: plan the activation memory.

One static buffer holds every activation tensor and scratch area, each at an offset chosen
so that tensors alive at the same time never overlap, where a layer that reads its input
row by row may write its output over the rows it has finished with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mnist_tflite.micro.aot.params import ConvParams, Layer, PoolParams, SoftmaxParams

ALIGN = 4  # every buffer offset: word loads (LDR/LDRD) need it on a Cortex-M
_FAR = 10**9


@dataclass
class Plan:
    """Offsets in the one static activation buffer; ``None`` for the caller's input/output."""

    arena_bytes: int
    offsets: dict[int, int | None]  # storage tensor -> offset
    scratch: dict[int, int]  # layer index -> offset
    sizes: dict[int, int]


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def stream_distance(layer: Layer) -> int | None:
    """How far below its input a row-by-row layer may start its output (bytes; may be < 0).

    Output row r is written after input rows before first_row(r) are no longer needed, so
    it is safe when out_offset + end_of_output_row(r) <= in_offset + first_row(r) * row_bytes
    for every r: the distance is the largest difference. None: the output may not overlap.
    """
    p = layer.params
    if isinstance(p, ConvParams):
        in_row, out_row = p.input.w * p.input.c, p.output.w * p.conv.c
        worst = -_FAR
        for oy in range(p.output.h):
            conv_rows = p.pool.rows(oy, p.conv.h)
            first_conv = conv_rows.start if len(conv_rows) else 0
            first_in = max(first_conv * p.kernel.stride_h - p.kernel.pad_top, 0)
            worst = max(worst, (oy + 1) * out_row - first_in * in_row)
        return worst
    if isinstance(p, PoolParams):
        in_row, out_row = p.input.w * p.input.c, p.output.w * p.output.c
        return max(
            (oy + 1) * out_row - max(oy * p.pool.stride_h - p.pool.pad_top, 0) * in_row
            for oy in range(p.output.h)
        )
    if isinstance(p, SoftmaxParams):
        return 0  # element-wise: may write over its own input
    return None


Choice = tuple[str, str]  # (where the output goes, where the scratch goes)


def _layout(
    combo: tuple[Choice, ...],
    layers: list[Layer],
    storage: dict[int, int],
    sizes: dict[int, int],
    external: set[int],
) -> tuple[int, dict[int, int], dict[int, int]]:
    """The offsets one combination of choices gives: (span, buffer offsets, scratch offsets), rebased to 0."""
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
                off[dst] = off[src] - align(max(stream_distance(layer) or 0, -_FAR))
        if layer.scratch_bytes:
            live = [(off[s], off[s] + sizes[s]) for s in (src, dst) if s not in external and s in off]
            lo = min((a for a, _ in live), default=0)
            hi = max((b for _, b in live), default=0)
            scratch[i] = hi if scr_mode == "above" else lo - align(layer.scratch_bytes)
    starts = [*off.values(), *scratch.values()]
    ends = [off[s] + sizes[s] for s in off] + [scratch[i] + align(layers[i].scratch_bytes) for i in scratch]
    base = min(starts, default=0)
    span = max(ends) - base if starts else 0
    return span, {s: o - base for s, o in off.items()}, {i: o - base for i, o in scratch.items()}


def _choices(layer: Layer, storage: dict[int, int], external: set[int]) -> list[Choice]:
    """Where a layer's output may go relative to its input, and its scratch relative to both."""
    src, dst = storage[layer.src], storage[layer.dst]
    outs: list[str] = ["free"] if src in external or dst in external else ["above", "below"]
    if src not in external and dst not in external and src == dst:
        outs = ["same"]
    elif "below" in outs and stream_distance(layer) is not None:
        outs.append("stream")
    scr = ["above", "below"] if layer.scratch_bytes else ["none"]
    return list(itertools.product(outs, scr))


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
    combos = itertools.product(*(_choices(layer, storage, external) for layer in layers))
    span, off, scratch = min(
        (_layout(c, layers, storage, sizes, external) for c in combos), key=lambda r: r[0]
    )
    offsets: dict[int, int | None] = {s: None for s in external}
    offsets.update(off)
    _check_plan(layers, storage, sizes, offsets, scratch)
    return Plan(span, offsets, scratch, dict(sizes))


def _check_plan(
    layers: list[Layer],
    storage: dict[int, int],
    sizes: dict[int, int],
    offsets: dict[int, int | None],
    scratch: dict[int, int],
) -> None:
    """Assert the plan's invariants: live buffers never overlap, except a streaming layer's."""
    for i, layer in enumerate(layers):
        src, dst = storage[layer.src], storage[layer.dst]
        regions: list[tuple[int, int, object]] = []
        for s in {src, dst}:
            o = offsets.get(s)
            if o is not None:
                regions.append((o, o + sizes[s], s))
        if i in scratch:
            regions.append((scratch[i], scratch[i] + align(layer.scratch_bytes), "scratch"))
        for (a0, a1, an), (b0, b1, bn) in itertools.combinations(regions, 2):
            if a0 < b1 and b0 < a1 and not ({an, bn} == {src, dst} and src != dst):
                raise AssertionError(f"plan overlaps {an} and {bn} in layer {i}")
        o_in, o_out = offsets.get(src), offsets.get(dst)
        overlap = (
            o_in is not None and o_out is not None and o_out < o_in + sizes[src] and o_in < o_out + sizes[dst]
        )
        if overlap and src != dst:
            d = stream_distance(layer)
            assert d is not None and o_in - o_out >= d, f"layer {i} writes over input it still reads"
