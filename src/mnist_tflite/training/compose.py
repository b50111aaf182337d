"""Lines of handwritten digits composed from MNIST digits: the ink of a number, no photo.

Digits are cut to their ink, scaled a little each (size jitter), set on a wavering
baseline with a chosen spacing (``gap`` pixels at MNIST scale between their boxes, or
touching: moved together until their strokes meet), optionally on two lines, and slanted as
a whole (italic shear). Every choice comes from the caller's seeded RNG. NumPy and Pillow
only: the tests' and benchmarks' number photos (``tests/numbers.py``) and the touching-digit
reader's training strings (:mod:`mnist_tflite.training.reader`) are made by these functions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["compose", "compose_line", "shear"]


def _crop(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(digit > 0)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _scaled(digit: np.ndarray, factor: float) -> np.ndarray:
    h, w = digit.shape
    size = (max(2, int(round(w * factor))), max(2, int(round(h * factor))))
    return np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BICUBIC))


def _touch_offset(row_right: np.ndarray, glyph: np.ndarray, top: int) -> int:
    """Where ``glyph`` starts so that its strokes just meet the line drawn so far."""
    best = None
    for y in range(glyph.shape[0]):
        core = np.nonzero(glyph[y] > 128)[0]
        if core.size and row_right[top + y] >= 0:
            start = row_right[top + y] - int(core[0])  # overlap one pixel on this row
            best = start if best is None else max(best, start)
    return int(best) if best is not None else int(row_right.max()) + 1


def compose_line(
    digits: list[np.ndarray],
    rng: np.random.Generator,
    *,
    gap: tuple[int, int] | None,
    jitter: float = 0.12,
    owners: list[np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 28x28 digits -> one line of ink (uint8, white on black). ``gap=None``: touching.

    ``owners``, when a list, receives the line's ground truth: which digit (1, 2, ...; 0 for
    none) put the most ink in each pixel.
    """
    glyphs = [_scaled(_crop(d), float(rng.uniform(1 - jitter, 1 + jitter))) for d in digits]
    height = max(g.shape[0] for g in glyphs) + 6
    width = sum(g.shape[1] for g in glyphs) + (len(glyphs) + 1) * (max(gap) if gap else 1) + 8
    line = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.uint8)
    row_right = np.full(height, -1)  # rightmost core pixel drawn on each row
    x = 3
    for i, g in enumerate(glyphs):
        top = int(np.clip(height - 3 - g.shape[0] + rng.integers(-2, 3), 0, height - g.shape[0]))
        if i and gap is None:
            x = max(0, _touch_offset(row_right, g, top))
        elif i:
            x += int(rng.integers(gap[0], gap[1] + 1))
        region = line[top : top + g.shape[0], x : x + g.shape[1]]
        mine = owner[top : top + g.shape[0], x : x + g.shape[1]]
        mine[(g > region) & (g > 0)] = i + 1
        np.maximum(region, g, out=region)
        for y in range(g.shape[0]):
            core = np.nonzero(g[y] > 128)[0]
            if core.size:
                row_right[top + y] = max(row_right[top + y], x + int(core[-1]))
        x += g.shape[1]
    cols = np.nonzero(line.any(axis=0))[0]
    if owners is not None:
        owners.append(owner[:, max(0, cols[0] - 3) : cols[-1] + 4])
    return line[:, max(0, cols[0] - 3) : cols[-1] + 4]


def shear(ink: np.ndarray, slant: float, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """Italic: each row moves right by ``slant`` pixels per pixel above the bottom."""
    h, w = ink.shape
    extra = int(np.ceil(abs(slant) * h))
    img = Image.fromarray(ink)
    shift = -slant * h if slant > 0 else 0.0
    data = (1, slant, shift, 0, 1, 0)
    return np.asarray(img.transform((w + extra, h), Image.Transform.AFFINE, data, resample))


def compose(
    lines: list[list[np.ndarray]],
    rng: np.random.Generator,
    *,
    gap,
    slant: float,
    owners: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Lines of digits -> one ink picture, lines stacked with a blank between, slanted.

    ``owners``, when a list, receives the picture's ground truth (as :func:`compose_line`'s,
    digits counted across the lines).
    """
    line_owners: list[np.ndarray] = []
    drawn = [compose_line(line, rng, gap=gap, owners=line_owners) for line in lines]
    width = max(d.shape[1] for d in drawn)
    space = int(rng.integers(6, 12))
    rows, truth, first = [], [], 0
    for i, (d, o) in enumerate(zip(drawn, line_owners, strict=True)):
        if i:
            rows.append(np.zeros((space, width), np.uint8))
            truth.append(np.zeros((space, width), np.uint8))
        indent = int(rng.integers(0, width - d.shape[1] + 1))
        pad = ((0, 0), (indent, width - d.shape[1] - indent))
        rows.append(np.pad(d, pad))
        truth.append(np.pad(np.where(o > 0, o + first, 0).astype(np.uint8), pad))
        first += len(lines[i])
    if owners is not None:
        owners.append(shear(np.vstack(truth), slant, Image.Resampling.NEAREST))
    return shear(np.vstack(rows), slant)
