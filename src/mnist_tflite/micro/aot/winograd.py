"""Integer-exact Winograd F(2x2, 3x3) for a 3x3 conv followed by a 2x2 max pool (DSP and ARMv6-M kernels).

Lavin and Gray's minimal filtering computes a 2x2 block of a 3x3 convolution from a 4x4
input tile with 16 multiplications instead of 36: ``Y = A^T [(G g G^T) * (B^T d B)] A``.
G holds halves; with ``G2 = 2 G`` (integers) the transformed weights ``U = G2 g G2^T`` are
integers and ``Y`` comes out exactly 4 times the convolution, so the int32 sums stay exact
and a shift by 2 recovers them bit for bit. The 2x2 block of outputs is the 2x2 window of
the max pool that follows, so a tile is one pooled output: the maximum of its four sums.

Bounds that keep it exact: ``|U| <= 9 * 128`` and ``|V| = |B^T d B| <= 4 * 128`` fit int16
(two per SMLAD), and ``9 * in_c * max|U| * 512`` (the output transform's sum) must fit
int32; ``eligible`` checks it on the real weights.
"""

from __future__ import annotations

import numpy as np

G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.int64)
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.int64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.int64)
SCALE = 4  # Y = SCALE * the convolution
_INT32 = 2**31 - 1


def transformed(w: np.ndarray) -> np.ndarray:
    """OHWI 3x3 weights -> U = G2 g G2^T, shape [O, 4, 4, I] (int64)."""
    return np.einsum("ak,okli,bl->oabi", G2, w.astype(np.int64), G2)


def eligible(w: np.ndarray, kernel: object, pool: object, in_c: int) -> bool:
    """Whether the Winograd DSP kernel computes this conv + pool exactly.

    ``kernel`` and ``pool`` are params.Window: a 3x3 stride-1 unpadded convolution, a 2x2
    stride-2 unpadded pool, input channels in eights, output channels in fours, no overflow.
    """
    o, kh, kw, i = w.shape
    shape_ok = (kh, kw, i) == (3, 3, in_c) and in_c % 8 == 0 and o % 4 == 0
    k = (kernel.h, kernel.w, kernel.stride_h, kernel.stride_w, kernel.pad_top, kernel.pad_left)  # type: ignore[attr-defined]
    p = (pool.h, pool.w, pool.stride_h, pool.stride_w, pool.pad_top, pool.pad_left)  # type: ignore[attr-defined]
    if not (shape_ok and k == (3, 3, 1, 1, 0, 0) and p == (2, 2, 2, 2, 0, 0)):
        return False
    u = np.abs(transformed(w))
    worst = 9 * 512 * int(u.sum(axis=3).max())  # output transform over the 16 products' sums
    return worst <= _INT32 // 2 and int(u.max()) < 2**15


def kernel_weights(w: np.ndarray) -> np.ndarray:
    """U in the DSP kernel's order, int16: [output quad][tile position 16][input word][channel][half].

    An input word holds two channels as SXTB16 makes them of 4 int8 channels c..c+3:
    word 2g is (4g, 4g+2), word 2g+1 is (4g+1, 4g+3), the first in the low half.
    """
    o, _, _, i = w.shape
    u = transformed(w).reshape(o, 16, i)  # [O, pos, I]
    order = np.arange(i).reshape(i // 4, 2, 2).transpose(0, 2, 1).reshape(-1)  # 0,2,1,3,4,6,5,7...
    u = u[:, :, order].reshape(o // 4, 4, 16, i // 2, 2)  # [quad, oc, pos, word, half]
    return u.transpose(0, 2, 3, 1, 4).reshape(-1).astype(np.int16)


U_OFFSET, V_OFFSET = 2048, 512  # the ARMv6-M kernel loads U and V as unsigned halfwords


def kernel_weights_m0(w: np.ndarray) -> np.ndarray:
    """U for the ARMv6-M kernel (int8_conv_m0.h), int16: U + 2048 ordered [output quad][tile
    position 16][input channel][channel of the quad], then the sums' int32 start values (as int16
    pairs, low half first) [output quad][position][channel]: minus 512 times the sum of U over the
    input channels and 2048 * 512 per input channel, which the offsets of U and V add."""
    o, _, _, i = w.shape
    u = transformed(w).reshape(o, 16, i)  # [O, pos, I]
    lay = (u + U_OFFSET).reshape(o // 4, 4, 16, i).transpose(0, 2, 3, 1).reshape(-1)
    start = -(V_OFFSET * u.sum(axis=2) + U_OFFSET * V_OFFSET * i)  # [O, pos]
    start = start.reshape(o // 4, 4, 16).transpose(0, 2, 1).reshape(-1)
    wrapped = ((start + 2**31) % 2**32 - 2**31).astype("<i4")  # the kernel sums modulo 2^32
    return np.concatenate([lay.astype(np.int16), wrapped.view("<i2").astype(np.int16)])


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The 4x sums of every 2x2 block of a valid 3x3 convolution of x [H, W, I], the way the
    kernel computes them (for tests): [H//2 - 1 ... ] blocks, [by, bx, O, 2, 2]."""
    h, wd, _ = x.shape
    u = transformed(w)  # [O, 4, 4, I]
    ny, nx = (h - 2) // 2, (wd - 2) // 2
    out = np.zeros((ny, nx, w.shape[0], 2, 2), dtype=np.int64)
    for by in range(ny):
        for bx in range(nx):
            d = x[2 * by : 2 * by + 4, 2 * bx : 2 * bx + 4].astype(np.int64)  # [4, 4, I]
            v = np.einsum("ak,kli,bl->abi", BT, d, BT)
            m = np.einsum("oabi,abi->oab", u, v)
            out[by, bx] = np.einsum("ra,oab,sb->ors", AT, m, AT)
    return out
