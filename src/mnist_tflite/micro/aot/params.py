"""The kernels' parameter structs as typed Python, and the layers that carry them.

Each dataclass mirrors one struct of ``kernels/int8_kernels.h`` member for member, by name:
codegen.py writes them as designated initializers (``.kernel = {.h = 3, ...}``), so the
order of the members lives only in the header. A NumPy array member becomes a constant
array of the generated file and the struct points at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Dims:
    """``i8k_dims_t``: an activation tensor's height, width and channels (batch 1, NHWC)."""

    h: int
    w: int
    c: int


@dataclass(frozen=True)
class Window:
    """``i8k_window_t``: size, stride and the positions before the first row and column."""

    h: int = 1
    w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0

    @property
    def pooling(self) -> bool:
        return self.h * self.w > 1

    def rows(self, o: int, limit: int) -> range:
        """The input rows (``0 <= row < limit``) the window of output row ``o`` covers."""
        return _covered(o, self.stride_h, self.pad_top, self.h, limit)

    def cols(self, o: int, limit: int) -> range:
        return _covered(o, self.stride_w, self.pad_left, self.w, limit)


def _covered(o: int, stride: int, pad: int, size: int, limit: int) -> range:
    start = o * stride - pad
    return range(max(start, 0), min(start + size, limit))


@dataclass(frozen=True)
class Filter:
    """``i8k_filter_t``: weights in the kernel's order, the folded bias, the padded row length."""

    weights: np.ndarray
    bias: np.ndarray
    k_pad: int


@dataclass(frozen=True)
class ChannelQuant:
    """``i8k_channel_quant_t``: fixed-point multipliers and shifts, one per output channel."""

    mult: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class Clamp:
    """``i8k_clamp_t``: the int8 clamp of the fused activation."""

    min: int
    max: int

    def narrowed(self, other: Clamp) -> Clamp:
        return Clamp(max(self.min, other.min), min(self.max, other.max))


@dataclass(frozen=True)
class ConvParams:
    """``i8k_conv_t``: a convolution, optionally with a max pool computed on the fly."""

    C_TYPE: ClassVar[str] = "i8k_conv_t"
    KERNEL: ClassVar[str] = "i8k_conv"
    input: Dims
    conv: Dims
    output: Dims
    kernel: Window
    pool: Window
    filter: Filter
    quant: ChannelQuant
    in_zp: int
    out_zp: int
    act: Clamp
    # U of winograd.py in the DSP kernel's order where it applies (3x3 conv + 2x2 pool), else None
    wino: np.ndarray | None = None


@dataclass(frozen=True)
class FcParams:
    """``i8k_fc_t``: a fully connected layer."""

    C_TYPE: ClassVar[str] = "i8k_fc_t"
    KERNEL: ClassVar[str] = "i8k_fc"
    in_n: int
    out_n: int
    filter: Filter
    quant: ChannelQuant
    per_channel: int
    out_zp: int
    act: Clamp


@dataclass(frozen=True)
class PoolParams:
    """``i8k_pool_t``: a max pool on its own."""

    C_TYPE: ClassVar[str] = "i8k_pool_t"
    KERNEL: ClassVar[str] = "i8k_maxpool"
    input: Dims
    output: Dims
    pool: Window
    act: Clamp


@dataclass(frozen=True)
class SoftmaxParams:
    """``i8k_softmax_t``: int8 softmax over the last axis."""

    C_TYPE: ClassVar[str] = "i8k_softmax_t"
    KERNEL: ClassVar[str] = "i8k_softmax"
    rows: int
    depth: int
    in_mult: int
    in_left_shift: int
    diff_min: int


@dataclass(frozen=True)
class CopyParams:
    """``i8k_copy``'s one argument (no struct): the bytes to copy."""

    C_TYPE: ClassVar[str] = ""
    KERNEL: ClassVar[str] = "i8k_copy"
    n: int


Params = ConvParams | FcParams | PoolParams | SoftmaxParams | CopyParams


WINO_SCRATCH_PER_CHANNEL = 32  # the transformed 4x4 input tile: 16 int16 per input channel
WINO_SCRATCH_SUMS = 4 * 16 * 4  # then the 16 sums of 4 output channels, int32
WINO_SCRATCH_M0 = 16 * 4  # the ARMv6-M kernel's correction per tile position, int32


def conv_scratch_bytes(k_pad: int, out_c: int, pooled: bool) -> int:
    """What ``I8K_CONV_SCRATCH_BYTES`` in int8_kernels.h says, for whichever instruction set the C
    is built for (plain/DSP or MVE: the larger; the generated C asserts it is enough)."""
    mve = 4 * (-(-k_pad // 16) * 16) + 4 * out_c
    return max(4 * k_pad + (4 if pooled else 8) * out_c, mve)


def array_members(params: Any) -> dict[str, np.ndarray]:
    """The NumPy members of a parameter struct, nested ones included, by member name."""
    found: dict[str, np.ndarray] = {}
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, np.ndarray):
            found[f.name] = value
        elif is_dataclass(value):
            found.update(array_members(value))
    return found


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
    params: Params
    macs_model: int = 0  # multiply-accumulates the model describes
    macs_computed: int = 0  # what the kernel computes (skipped outputs, zero padding)
    arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.arrays = array_members(self.params)

    @property
    def label(self) -> str:
        return "+".join(self.ops)

    @property
    def kernel(self) -> str:
        return self.params.KERNEL

    @property
    def scratch_bytes(self) -> int:
        p = self.params
        if isinstance(p, ConvParams):
            wino = (
                0
                if p.wino is None
                else WINO_SCRATCH_PER_CHANNEL * p.input.c + WINO_SCRATCH_SUMS + WINO_SCRATCH_M0
            )
            return max(conv_scratch_bytes(p.filter.k_pad, p.conv.c, p.pool.pooling), wino)
        return 0
