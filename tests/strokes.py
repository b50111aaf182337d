"""Pen strokes that redraw an MNIST test digit on the page's pad (for the browser tests and
benchmarks/bench_wasm.py): one horizontal stroke per run of ink in each row of the 28x28
image, as fractions of the pad, so the pen (18 px on the 280 px pad, about MNIST's stroke)
paints the digit's shape."""

from __future__ import annotations

import numpy as np

INK = 128  # pixels above this (of 255) are ink


def strokes_of(image: np.ndarray, margin: float = 0.1) -> list[list[tuple[float, float]]]:
    """uint8 (28, 28) white-on-black digit -> strokes: lists of (x, y) points in [0, 1] of the pad."""
    on = np.asarray(image) > INK
    size = on.shape[0]
    span = 1.0 - 2 * margin

    def at(col: float, row: int) -> tuple[float, float]:
        return (margin + span * (col + 0.5) / size, margin + span * (row + 0.5) / size)

    strokes = []
    for row in range(size):
        cols = np.flatnonzero(on[row])
        if not len(cols):
            continue
        starts = [cols[0], *cols[1:][np.diff(cols) > 1]]
        ends = [*cols[:-1][np.diff(cols) > 1], cols[-1]]
        strokes += [[at(a, row), at(b, row)] for a, b in zip(starts, ends, strict=True)]
    return strokes


def number_strokes(images: list[np.ndarray], aspect: float = 3.0) -> list[list[tuple[float, float]]]:
    """Several digits side by side on a pad ``aspect`` times wider than tall (the page's
    number mode): each digit's :func:`strokes_of` in a square cell of its own, centred."""
    cell = min(1.0, aspect / len(images))  # a cell's side, in pad heights
    left, top = (aspect - cell * len(images)) / 2, (1.0 - cell) / 2
    strokes = []
    for k, image in enumerate(images):
        x0 = left + k * cell
        strokes += [[((x0 + cell * x) / aspect, top + cell * y) for x, y in s] for s in strokes_of(image)]
    return strokes


# in the page: replay strokes as pointer events through the page's own handlers, then wait
# for the answer; returns what the page shows and the pad as a PNG
REPLAY_JS = """async (strokes) => {
  const pad = document.getElementById("pad"), r = pad.getBoundingClientRect();
  document.getElementById("clear").click();
  const ev = (type, [fx, fy], buttons) => pad.dispatchEvent(new PointerEvent(type, {
    bubbles: true, cancelable: true, pointerId: 1, pointerType: "mouse", isPrimary: true, buttons,
    clientX: r.left + fx * r.width, clientY: r.top + fy * r.height }));
  // pen down for each stroke; one pen-up at the end, so the page classifies once (as after
  // the last stroke of a person's drawing)
  for (const s of strokes) {
    ev("pointerdown", s[0], 1);
    for (const p of s.slice(1)) ev("pointermove", p, 1);
  }
  const last = strokes[strokes.length - 1];
  ev("pointerup", last[last.length - 1], 0);
  const seen = document.getElementById("seen").getContext("2d").getImageData(0, 0, 28, 28).data;
  const b = document.body.dataset;
  return { label: document.getElementById("label").textContent, state: b.state, answerMs: Number(b.answerMs),
           seen: Array.from({ length: 784 }, (_, i) => seen[4 * i]), png: pad.toDataURL("image/png") };
}"""
