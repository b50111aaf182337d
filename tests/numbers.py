"""Handwritten numbers made of official MNIST test digits, rendered as photo files.

Digits are cut to their ink, scaled a little each (size jitter), set on a wavering
baseline with a chosen spacing (``gap`` pixels at MNIST scale between their boxes, or
touching: moved together until their strokes meet), optionally on two lines, slanted as a
whole (italic shear), then drawn on paper by the photo generator of :mod:`tests.photos`
(paper or board, pen, lighting, noise, blur, format), with ruled lines or a shadow across
the sheet when asked. Every choice comes from a seeded RNG and is recorded.

Used by ``tests/test_segment.py`` and ``benchmarks/bench_numbers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.photos import _stroke_change, appearance


@dataclass(frozen=True)
class NumberRender:
    """How one number photo was made."""

    text: str  # the digits, lines separated by a space: "2026", "12 34"
    size: tuple[int, int]
    spacing: str  # "gap" or "touching"
    slant: float
    ruled: bool
    shadow: bool
    rotation: float
    polarity: str
    lighting: float
    blur: float
    noise: float
    fmt: str
    quality: int


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


def _shear(ink: np.ndarray, slant: float, resample=Image.Resampling.BILINEAR) -> np.ndarray:
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
        owners.append(_shear(np.vstack(truth), slant, Image.Resampling.NEAREST))
    return _shear(np.vstack(rows), slant)


def render_number(
    lines: list[list[np.ndarray]],
    labels: list[list[int]],
    rng: np.random.Generator,
    *,
    gap: tuple[int, int] | None = (3, 10),
    slant: float | None = None,
    ruled: bool = False,
    shadow: bool = False,
    width: int | None = None,
    owners: list[np.ndarray] | None = None,
) -> tuple[bytes, str, NumberRender]:
    """Digits (uint8 28x28) by line -> (file bytes, suffix, how it was made).

    ``owners``, when a list, receives the ground truth for analysis: an (h, w) uint8 map of
    the photo, each pixel the digit (1, 2, ... across lines) whose ink is drawn there, 0 none.
    """
    slant = float(rng.uniform(-0.25, 0.25)) if slant is None else slant
    truth: list[np.ndarray] = []
    ink = compose(lines, rng, gap=gap, slant=slant, owners=truth)
    w = width or int(rng.integers(240, 901))
    cover = float(rng.uniform(0.5, 0.9))  # of the width, or of the height for a tall number
    scale = min(w * cover / ink.shape[1], w * 1.2 * cover / ink.shape[0])
    h = int(max(ink.shape[0] * scale / rng.uniform(0.35, 0.7), w * rng.uniform(0.5, 0.9)))
    size = (max(2, int(ink.shape[1] * scale)), max(2, int(ink.shape[0] * scale)))
    glyph = Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC)
    glyph = _stroke_change(glyph, int(rng.choice([-1, 0, 0, 1])) * int(scale * 28 // 90))
    rotation = float(rng.uniform(-4, 4))
    glyph = glyph.rotate(rotation, resample=Image.Resampling.BILINEAR, expand=True)
    canvas = Image.new("L", (w, h), 0)
    ox = int(rng.integers(0, max(0, w - glyph.width) + 1))
    oy = int(rng.integers(0, max(0, h - glyph.height) + 1))
    canvas.paste(glyph, (ox, oy))
    if owners is not None:  # the same steps, without mixing digits' numbers
        near = Image.Resampling.NEAREST
        label = Image.fromarray(truth[0]).resize(size, near).rotate(rotation, resample=near, expand=True)
        owner = Image.new("L", (w, h), 0)
        owner.paste(label, (ox, oy))
        owners.append(np.asarray(owner))
    a = np.clip((np.asarray(canvas, np.float32) / 255.0 - 0.15) * 1.6, 0.0, 1.0)[..., None]
    marks = None
    if ruled:  # pale lines every line-height or so, one under the digits' baseline
        spacing = max(8, int(size[1] / len(lines) * rng.uniform(0.9, 1.3)))
        base = oy + glyph.height - 1
        ys = np.arange(h)
        on = ((ys - base) % spacing) < max(1, h // 300 + 1)
        marks = np.repeat(on[:, None].astype(np.float32), w, axis=1) * float(rng.uniform(0.5, 1.0))
    shade = None
    if shadow:  # a soft-edged shadow (a hand, a phone) over part of the sheet
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        d = np.cos(theta) * (xx - w * rng.uniform(0.3, 0.7)) + np.sin(theta) * (
            yy - h * rng.uniform(0.3, 0.7)
        )
        edge = max(2.0, 0.08 * w)  # a penumbra: a hand or phone held above the sheet
        shade = 1.0 - float(rng.uniform(0.25, 0.45)) / (1.0 + np.exp(-d / edge))
    data, suffix, look = appearance(a, rng, paper_marks=marks, shade=shade)
    text = " ".join("".join(str(v) for v in line) for line in labels)
    spacing = "touching" if gap is None else "gap"
    info = NumberRender(text, (w, h), spacing, round(slant, 3), ruled, shadow, round(rotation, 2), **look)
    return data, suffix, info
