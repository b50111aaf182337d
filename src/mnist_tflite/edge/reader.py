"""Read touching digits without cutting them first: a small CTC sequence model, run by LiteRT.

Digits that touch and interlock (a 7's bar over the next digit, a 4 under it) leave no clean
cut line, so :mod:`mnist_tflite.edge.segment` asks this reader instead: a fully
convolutional network slides over the component's ink, normalised to a fixed height
(:func:`normalize`), and says for every column step (``STEP`` pixels) how likely each digit
is there, or none (the CTC blank). The best path, its repeats collapsed and blanks
dropped (:func:`decode`), is the number; each digit's probabilities are those of the step
where the reader was surest of it. Trained by :mod:`mnist_tflite.training.reader` on
touching strings composed from MNIST's training digits, with this same :func:`normalize`.

No TensorFlow: LiteRT and NumPy.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mnist_tflite.core.errors import fail, first_line
from mnist_tflite.edge.infer import vetted_model_bytes
from mnist_tflite.edge.preprocess import _resize_float
from mnist_tflite.edge.quiet import stderr_silenced

__all__ = [
    "DEFAULT_READER",
    "HEIGHT",
    "STEP",
    "WIDTH",
    "DigitRead",
    "Reader",
    "decode",
    "normalize",
    "placed",
    "vote",
]

HEIGHT = 32  # the reader's input: the component's ink, this tall...
INNER = 28  # ... its ink this tall inside (a margin above and below)...
WIDTH = 128  # ... left-aligned in this width (wider ink is squeezed to fit)
MARGIN = 2
STEP = 4  # columns per output step: WIDTH // STEP steps
BLANK = 10  # the CTC blank: the last of the 11 outputs
DEFAULT_READER = Path(__file__).resolve().parent / "models" / "reader.tflite"


@dataclass(frozen=True)
class Normalized:
    """A component's ink as the reader sees it, and how to map its columns back."""

    image: np.ndarray  # (HEIGHT, WIDTH) float32 in [0, 1]
    x0: int  # the first inked column of the component
    scale: float  # reader columns per component column


def normalize(ink: np.ndarray) -> Normalized:
    """An ink map (H, W) in [0, 1] of one component -> the reader's (HEIGHT, WIDTH) input.

    Cropped to the ink, scaled so the ink is ``INNER`` pixels tall (width in proportion,
    squeezed when it would not fit), brightest ink at 1, left-aligned with a ``MARGIN``.
    The one normalisation of the reader: training and inference both call it.

    Example:
        >>> normalize(patch).image.shape
        (32, 128)
    """
    ink = np.asarray(ink, dtype=np.float32)
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    out = np.zeros((HEIGHT, WIDTH), np.float32)
    if rows.size == 0:
        return Normalized(out, 0, 1.0)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink.shape
    width = min(WIDTH - 2 * MARGIN, max(1, round(w * INNER / h)))
    a = np.clip(_resize_float(ink, (INNER, width), "LANCZOS"), 0.0, 1.0)
    peak = float(a.max())
    if peak > 0:
        a = a / peak
    out[MARGIN : MARGIN + INNER, MARGIN : MARGIN + width] = a
    return Normalized(out, int(cols[0]), width / w)


class DigitRead(NamedTuple):
    """One digit the reader found: where (a column of the component) and how sure."""

    column: float  # the component's column at the digit's middle (where CTC placed it, corrected)
    probabilities: np.ndarray  # (10,), summing to 1: the step where the reader was surest


def decode(probs: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Best-path CTC decoding of (steps, 11) probabilities -> [(digit, first, last, peak step)].

    The most likely class at each step; a run of the same digit is one digit (a blank
    between two runs of the same digit makes two); blanks are dropped.

    Example:
        >>> decode(np.eye(11)[[10, 3, 3, 10, 3, 7]])
        [(3, 1, 2, 1), (3, 4, 4, 4), (7, 5, 5, 5)]
    """
    best = np.argmax(probs, axis=1)
    out: list[tuple[int, int, int, int]] = []
    t = 0
    while t < len(best):
        k = int(best[t])
        end = t
        while end + 1 < len(best) and best[end + 1] == k:
            end += 1
        if k != BLANK:
            peak = t + int(np.argmax(probs[t : end + 1, k]))
            out.append((k, t, end, peak))
        t = end + 1
    return out


def placed(first: int, last: int) -> float:
    """Where CTC placed a digit decoded over steps ``first``-``last``: the middle of those
    steps, in reader pixels (:attr:`Reader.column_offset` then moves it to the digit's middle)."""
    return ((first + last) / 2 + 0.5) * STEP


class Phase(NamedTuple):
    """The reader's answer with its input shifted ``shift`` pixels right."""

    shift: int
    probs: np.ndarray  # (steps, 11)
    digits: list[tuple[int, int, int, int]]  # decode(probs)

    @property
    def text(self) -> tuple[int, ...]:
        return tuple(d for d, *_ in self.digits)

    @property
    def sureness(self) -> float:
        """The best path's log-probability."""
        return float(np.log(np.maximum(self.probs.max(axis=1), 1e-30)).sum())


def vote(phases: list[Phase]) -> Phase:
    """The reading most phases agree on (the surest phase among those that read it); when
    no two phases agree, the unshifted one.

    Measured with the first reader on the first 600 touching numbers of ``bench_numbers.py``
    (601 wide components): one phase read 461 right, four phases voted 481; on 2,000 held-out
    strings of training digits, 1,710 and 1,741 (the shipped reader: 1,791 and 1,824).
    """
    counts: dict[tuple[int, ...], int] = {}
    for ph in phases:
        counts[ph.text] = counts.get(ph.text, 0) + 1
    most = max(counts.values())
    if most == 1:
        return phases[0]
    return max((ph for ph in phases if counts[ph.text] == most), key=lambda ph: ph.sureness)


class Reader:
    """The touching-digit reader: a ``.tflite`` of (N, HEIGHT, WIDTH, 1) -> (N, steps, 11).

    Args:
        path: the model file (default: the one shipped in the package); its sidecar's
            SHA-256 is checked.

    Example:
        >>> [d.probabilities.argmax() for d in Reader().read(patch)]
        [2, 0, 2, 6]
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_READER, *, allow_modified: bool = False
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        data, self.metadata = vetted_model_bytes(self.path, allow_modified=allow_modified)
        try:
            with stderr_silenced():
                self._interp = Interpreter(model_content=data, num_threads=1)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise fail(self.path, f"LiteRT cannot load it: {first_line(exc, 2000)}") from None
        ins, outs = self._interp.get_input_details(), self._interp.get_output_details()
        want = (1, HEIGHT, WIDTH, 1)
        if len(ins) != 1 or len(outs) != 1 or tuple(ins[0]["shape"]) != want or ins[0]["dtype"] != np.float32:
            found = [(list(d["shape"]), np.dtype(d["dtype"]).name) for d in ins]
            expected = f"expected one float32 input of shape {list(want)}: not a reader"
            raise fail(self.path, f"input {found}; {expected}")
        shape = tuple(outs[0]["shape"])
        if shape != (1, WIDTH // STEP, BLANK + 1):
            expected = f"expected {[1, WIDTH // STEP, BLANK + 1]} (steps x 10 digits + blank)"
            raise fail(self.path, f"output shape {list(shape)}; {expected}")
        self._in, self._out = ins[0]["index"], outs[0]["index"]
        # CTC places a digit where its network was surest, not at its middle: the trainer
        # measured how far right of that the digits' centres lie (reader pixels; 0 if unsaid)
        self.column_offset = float((self.metadata or {}).get("column_offset", 0.0))
        self._lock = threading.Lock()  # one interpreter; a server's threads take turns

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """One normalised (HEIGHT, WIDTH) image -> (steps, 11) probabilities."""
        with self._lock:
            self._interp.set_tensor(self._in, np.asarray(image, np.float32).reshape(1, HEIGHT, WIDTH, 1))
            self._interp.invoke()
            return np.array(self._interp.get_tensor(self._out)[0], dtype=np.float32)

    def read(self, ink: np.ndarray) -> list[DigitRead]:
        """A component's ink map (H, W) -> its digits, left to right.

        The reader answers every ``STEP`` columns, so where that grid falls on the digits
        changes what it reads now and then (a squeezed 1 between two steps). It reads the
        component at every phase of the grid (shifted right by 0 to ``STEP - 1`` pixels) and
        takes the reading most phases agree on (:func:`vote`).
        """
        norm = normalize(ink)
        phases = []
        for shift in range(STEP):
            image = np.zeros_like(norm.image)
            image[:, shift:] = norm.image[:, : WIDTH - shift]
            probs = self.probabilities(image)
            phases.append(Phase(shift, probs, decode(probs)))
        chosen = vote(phases)
        found = []
        for _, first, last, peak in chosen.digits:
            centre = placed(first, last) + self.column_offset - chosen.shift - MARGIN
            p = chosen.probs[peak, :BLANK].astype(np.float64)
            found.append(DigitRead(norm.x0 + centre / norm.scale, p / max(float(p.sum()), 1e-12)))
        return found

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.path.stat().st_size}
