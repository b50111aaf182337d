"""The ink map: how far each pixel of a photo or scan is from its paper (or board).

The background is whatever remains after a morphological closing (an opening on a dark
board) with a window wider than any stroke: paper tint, shadows, lighting gradients and a
table around the sheet. Ink is measured against it in the direction the background
decides (dark ink on light paper, light chalk on a dark board), in whichever colour
channel moved most, so any pen colour works. Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError

CLOSING = 0.2  # background window, as a fraction of the longest side (wider than any stroke)
MIN_CONTRAST = 0.10  # ink must differ from the background by this much (fraction of full scale)
NOISE_MARGIN = 10.0  # ... and stand out from the noise by this many median deviations
CHROMA = 0.6  # weight of a change in a single colour channel, against one in brightness
COARSE = 8  # the background is computed on a grid this many cells across its window
MIN_INK_PIXELS = 6  # fewer is a speck of dust, not a digit
LOW_CUT, HIGH_CUT = 0.30, 0.75  # below LOW_CUT * peak is background, above HIGH_CUT * peak solid


class BlankImageError(MnistTfliteError):
    """The image has no ink: nothing differs from the background enough to be a digit."""


def quantile(a: np.ndarray, q: float, axis: int | None = None) -> np.ndarray:
    """Nearest-rank quantile (``np.percentile``/``np.median`` import numpy.ma: 25 ms of start-up)."""
    if axis is None:
        a, axis = a.ravel(), 0
    n = a.shape[axis]
    k = min(n - 1, max(0, int(round(q * (n - 1)))))
    return np.take(np.partition(a, k, axis=axis), k, axis=axis)


def _luminance(a: np.ndarray) -> np.ndarray:
    if a.shape[-1] == 1:
        return a[..., 0]
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def _light_background(lum: np.ndarray) -> bool:
    """Polarity from the background: most of the picture is paper (or board), not ink."""
    level = float(quantile(lum.ravel()[::3], 0.5))  # a third of the pixels is plenty
    if level >= 0.65:
        return True
    if level <= 0.35:
        return False
    # a mid-grey picture (a grey board, or a shadow across the sheet): the ink is whichever
    # tail reaches further from the local level, so that a shadow's edge, dark on one side
    # and light on the other, counts for neither polarity
    f = max(1, int(max(lum.shape) * CLOSING))  # blocks as wide as the background window
    local = _upsample(_block(lum, f, np.add) / np.float32(f * f), f, lum.shape) if f > 1 else lum
    detail = lum - local
    return -float(quantile(detail, 0.005)) >= float(quantile(detail, 0.995))


def running(a: np.ndarray, k: int, axis: int, op: np.ufunc) -> np.ndarray:
    """Centred running max/min of width ``k`` along ``axis`` of a 2-D array.

    van Herk/Gil-Werman: prefix and suffix extremes within blocks of ``k``, so the cost does
    not grow with ``k``; the scan runs along axis 0 so each step is one vectorized row.
    """
    if axis == 1:
        return running(a.T, k, 0, op).T
    n, lo = a.shape[0], k // 2
    total = -(-(n + k - 1) // k) * k
    # edges repeated (np.pad's bookkeeping costs more than the scan on small arrays)
    p = np.concatenate([np.repeat(a[:1], lo, axis=0), a, np.repeat(a[-1:], total - n - lo, axis=0)])
    blocks = p.reshape(total // k, k, -1)
    prefix = op.accumulate(blocks, axis=1).reshape(p.shape)
    suffix = op.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(p.shape)
    return op(suffix[:n], prefix[k - 1 : k - 1 + n])


def box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean (edges repeated)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / np.float32(9.0)


def _block(a: np.ndarray, f: int, op: np.ufunc) -> np.ndarray:
    """Reduce a 2-D array by ``op`` over f x f blocks (edges repeated to whole blocks).

    Row blocks first (a reduction along a middle axis runs over whole contiguous rows),
    then the f interleaved column slices: each step is one vectorized pass.
    """
    h, w = a.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    if (hh, ww) != (h, w):
        a = np.pad(a, ((0, hh - h), (0, ww - w)), mode="edge")
    rows = op.reduce(a.reshape(hh // f, f, ww), axis=1)
    out = rows[:, 0::f]
    for i in range(1, f):
        out = op(out, rows[:, i::f])
    return out


def _background(channel: np.ndarray, light: bool) -> np.ndarray:
    """The paper (or board) without the ink: a morphological closing (opening on a board).

    Any mark thinner than the window is a stroke and is removed; larger areas (a shadow,
    a lighting gradient, the table around a sheet) are background and kept, edges and all.
    The background is smooth at the scale of the window, so it is computed on a grid
    ``COARSE`` times coarser than the window (the first operation taken over blocks keeps
    its meaning: no stroke survives a block maximum) and interpolated back: the cost no
    longer grows with the picture's area times the window.
    """
    h, w = channel.shape
    k = max(3, int(max(h, w) * CLOSING) | 1)
    first, second = (np.maximum, np.minimum) if light else (np.minimum, np.maximum)
    f = max(1, k // COARSE)
    small = _block(channel, f, first) if f > 1 else channel
    kc = max(3, (k // f) | 1)
    # the picture goes on beyond its frame: a dark table edge along the border stays background
    bg = np.pad(small, kc, mode="edge")
    for op in (first, second):
        bg = running(running(bg, kc, 0, op), kc, 1, op)
    bg = bg[kc:-kc, kc:-kc]
    if f == 1:
        return bg
    # a block that straddles the edge of a large dark area (the table around a sheet) took
    # the paper's value; one more step of the second operation gives the edge back to the
    # dark side, so that interpolating never lights up table pixels as ink
    bg = running(running(bg, 3, 0, second), 3, 1, second)
    return _upsample(bg, f, (h, w))


def _upsample(a: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a block grid (one value per f x f block) back to ``shape``."""
    from PIL import Image

    hh, ww = a.shape[0] * f, a.shape[1] * f
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((ww, hh), Image.Resampling.BILINEAR), dtype=np.float32)
    return out[: shape[0], : shape[1]]


def ink_map(a: np.ndarray) -> np.ndarray:
    """(H, W, C) colour image in [0, 1] -> ink strength (H, W) in [0, 1], 0 = background."""
    return cut_ink(*ink_strength(a))


def ink_strength(a: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, C) colour image in [0, 1] -> (how far each pixel is from the paper, above the
    noise; the strongest mark's level): the ink before :func:`cut_ink` scales it to 0..1.

    Raises:
        BlankImageError: when no mark stands out from the paper and its noise.
    """
    light = _light_background(_luminance(a))
    channels = [a[..., c] for c in range(min(a.shape[-1], 3))]
    diffs = []
    for ch in channels:
        bg = _background(ch, light)
        # on paper, light falls on ink and paper alike: dividing by the paper level (a flat
        # field) evens out shadows; a dark board has no such level to divide by
        diffs.append((bg - ch) / np.maximum(bg, 0.2) if light else ch - bg)
    if len(diffs) == 1:
        ink = diffs[0]
    else:
        # ink is mostly a change of brightness; a light-coloured pen (yellow on white) shows
        # only in one channel, so that counts too, but less: faint ruled lines stay faint
        r, g, b = diffs
        ink = np.maximum(r * 0.299 + g * 0.587 + b * 0.114, CHROMA * np.maximum(np.maximum(r, g), b))
    # the background envelope sits a little above sensor/JPEG noise: take that level off,
    # and ask the ink to stand out from the noise as well as from the paper
    sample = ink.ravel()[::3]
    base = float(quantile(sample, 0.5))
    noise = float(quantile(np.abs(sample - base), 0.5))
    ink = np.clip(ink - base, 0.0, 1.0)
    smooth = box3(ink)  # hides single-pixel noise when judging the peak
    peak = float(quantile(smooth, 0.999)) if smooth.size > 1000 else float(smooth.max())
    peak = max(peak, float(smooth.max()) * 0.8)
    needed = max(MIN_CONTRAST, NOISE_MARGIN * noise)
    if peak < needed:
        raise BlankImageError(
            f"no ink found: the strongest mark differs from the background by {peak:.0%} of full "
            f"scale, expected at least {needed:.0%} (blank page?)"
        )
    return ink, peak


def stretch(strength: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Ink strength -> [0, 1]: under ``LOW_CUT`` of ``peak`` is paper, over ``HIGH_CUT`` solid ink."""
    low, high = LOW_CUT * peak, HIGH_CUT * peak
    return np.clip((strength - low) / (high - low), 0.0, 1.0)


def cut_ink(strength: np.ndarray, peak: float) -> np.ndarray:
    """Ink strength -> the ink map in [0, 1] (:func:`stretch` against the picture's peak).

    Raises:
        BlankImageError: when only a few pixels are solid ink.
    """
    ink = stretch(strength, peak)
    if int((ink > 0.5).sum()) < MIN_INK_PIXELS:
        raise BlankImageError("no digit found: only a few specks differ from the background (blank page?)")
    return ink
