"""Handwritten numbers made of official MNIST test digits, rendered as photo files.

The ink of a number is composed by :mod:`mnist_tflite.training.compose` (size jitter, a
wavering baseline, spacing from wide to touching, two lines, slant), then drawn on paper by
the photo generator of :mod:`tests.photos` (paper or board, pen, lighting, noise, blur,
format), with ruled lines or a shadow across the sheet when asked. Every choice comes from
a seeded RNG and is recorded.

Used by ``tests/test_segment.py`` and ``benchmarks/bench_numbers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mnist_tflite.training.compose import compose
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
