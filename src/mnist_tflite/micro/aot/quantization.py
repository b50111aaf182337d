"""Pass 2 of the compiler: quantization parameters as the kernels use them.

Real scales become fixed-point multipliers and shifts, fused activations become int8
clamps, biases absorb the input zero point. The arithmetic follows the TFLite int8
specification (and TFLM's reference kernels, which the generated code must match bit for
bit).
"""

from __future__ import annotations

import math

import numpy as np

from mnist_tflite.core.errors import fail
from mnist_tflite.micro.aot.params import ChannelQuant, Clamp
from mnist_tflite.micro.aot.read import Tensor


def round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """A positive real as (multiplier, shift): real ~= multiplier * 2^(shift - 31), 2^30 <= m < 2^31."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    fixed = round_half_away(q * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return fixed, shift


def check_activation(t: Tensor, path: object, what: str) -> None:
    """An int8 activation tensor with one finite positive scale and an int8 zero point."""
    if t.dtype != "INT8":
        raise fail(path, f"{what} is {t.dtype.lower()}, expected int8")
    if not (math.isfinite(t.scale) and t.scale > 0):
        raise fail(path, f"{what}: scale {t.scale} is not a finite positive number")
    if not -128 <= t.zero_point <= 127:
        raise fail(path, f"{what}: zero point {t.zero_point} is outside the int8 range")


def activation_range(fused: int, scale: float, zero_point: int, path: object, where: str) -> Clamp:
    """The int8 clamp of a fused activation (NONE, RELU, RELU6, RELU_N1_TO_1)."""

    def q(x: float) -> int:
        return zero_point + round_half_away(float(np.float32(x) / np.float32(scale)))

    if fused == 0:
        return Clamp(-128, 127)
    if fused == 1:
        return Clamp(max(-128, q(0.0)), 127)
    if fused == 2:
        return Clamp(max(-128, q(-1.0)), min(127, q(1.0)))
    if fused == 3:
        return Clamp(max(-128, q(0.0)), min(127, q(6.0)))
    names = {4: "TANH", 5: "SIGN_BIT"}
    raise fail(path, f"unsupported fused activation {names.get(fused, fused)} in {where}")


def channel_quant(x: Tensor, w: Tensor, y: Tensor, n: int, path: object, where: str) -> ChannelQuant:
    """Multiplier and shift of input scale * weight scale / output scale, for ``n`` channels."""
    scales = w.scales if w.scales.size == n else np.full(n, w.scale)
    if not np.all(np.isfinite(scales) & (scales >= 0)):  # 0: a channel of zeros
        raise fail(path, f"{where}: weight scales must be finite and not negative")
    pairs = [
        quantize_multiplier(float(x.scale) * float(s) / float(y.scale)) for s in scales.astype(np.float32)
    ]
    mult = np.asarray([m for m, _ in pairs], dtype=np.int32)
    return ChannelQuant(mult, np.asarray([s for _, s in pairs], dtype=np.int8))


def folded_bias(bias: np.ndarray, w: np.ndarray, in_zp: int, path: object, where: str) -> np.ndarray:
    """bias - in_zp * sum(w): the kernels multiply raw input values, padding holds in_zp."""
    folded = bias - in_zp * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    if np.any(np.abs(folded) >= 2**31):
        raise fail(path, f"{where}: bias out of int32 range after folding the input zero point")
    return folded.astype(np.int32)


def pool_on_sums_is_exact(bias: np.ndarray, k: int, shift: np.ndarray) -> bool:
    """Can a fused max pool compare int32 sums? Yes unless a left shift could overflow them."""
    bound = int(np.abs(bias).max(initial=0)) + k * 255 * 128
    return all(bound << max(int(s), 0) < 2**31 for s in shift)


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
