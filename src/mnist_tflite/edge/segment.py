"""Find the digits of a handwritten number in one photo: cut it into MNIST-format digits.

MNIST's digits were cut out of forms one by one; this is that cut. After the ink map of
:mod:`mnist_tflite.edge.ink` (background, shadows and polarity dealt with), long ruled
lines are taken out, the ink falls into connected components, parts of one digit (a 5
whose flag came loose) are joined, components are grouped into lines, and a component
wider than a digit (digits that touch) is cut where a slanted cut line crosses the least
ink (with the model at hand, where the pieces it is surest of lie). Each digit's strokes
are cut against their own strength (a small digit's thin strokes are fainter than the
picture's strongest ink), and it becomes a 28x28 image by the very steps a single digit
takes (:func:`mnist_tflite.edge.preprocess.ink_to_mnist`). Pure NumPy: connected components are
labelled run by run (SciPy's ``ndimage`` would add 0.7 s to ``predict``'s start-up).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge.ink import box3, cut_ink, ink_strength, running, stretch
from mnist_tflite.edge.preprocess import ink_to_mnist, picture

__all__ = ["MAX_DIGITS", "Digit", "SegmentError", "find_digits"]

MAX_DIGITS = 64  # more marks than this is a page of text, not a number
INK_LEVEL = 0.12  # ink above this (of the ink map's 0..1) connects a component (a faint digit too)
RULE_LENGTH = 0.75  # a horizontal run this long (fraction of the width) is a ruled line, not ink
WHOLE_PICTURE = 0.9  # one component over this fraction of both sides: a table or frame
JOIN_OVERLAP = 0.5  # parts of one digit overlap this much of the narrower part's width...
JOIN_HEIGHT = 1.7  # ... and together are at most this many digit heights tall
WIDE = 1.35  # a component wider than this many line heights holds touching digits...
WIDE_JUDGED = 0.8  # ... or, with the model to judge, may hold them: the model decides
WIDEST = 1.5  # the widest single digit (a 5 or an 8, turned): uncut, it is still a candidate...
WHOLE_PENALTY = 1.0  # ... paying this per line height of width over one
WHOLE_SURE = 0.5  # with the reader: the model this sure of the uncut whole may keep it one digit
# the reader reads components wider than this many line heights; narrower ones are cut and chosen
# as without it (the reader can be sure of "77" in one long-barred 7; a wider single digit is rare)
READER_WIDE = 1.1
PRIOR = 1.0  # weight of the width prior against the model's log-confidence
DIGIT_WIDTH = (0.5, 0.85)  # a digit's width, in line heights (measured on composed numbers)
FRAGMENT = 0.6  # a mark under this fraction of a digit's height that joined no digit is dropped...
FLAT = (0.3, 0.3)  # ... unless (a flat 0, a small 8) this tall and with this share of a digit's ink
SLOPES = (-0.35, -0.2, -0.1, 0.0, 0.1, 0.2, 0.35)  # cut lines tried: dx per dy (slanted writing)
PIECE = 0.9  # a digit cut from touching digits is at most this many line heights wide
CUT_SPACING = 0.1  # candidate cuts are at least this many line heights apart...
MAX_CUTS = 32  # ... and at most this many in one component of touching digits
STROKE_WINDOW = 0.15  # a digit's strokes are measured against the strongest ink this near (digit heights)...
FAINTEST = 0.25  # ... or this share of the picture's strongest ink, if that is more (noise stays noise)

Judge = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) images -> (N,) confidence of the best class
# a component's ink -> its digits, left to right: (column, probabilities of the 10 digits) each
ReadInk = Callable[[np.ndarray], list[tuple[float, np.ndarray]]]


class SegmentError(MnistTfliteError):
    """The picture is not a row of digits: too many marks, or one mark covering it all."""


@dataclass(frozen=True)
class Digit:
    """One digit found in a picture.

    ``box`` is (left, top, right, bottom) as fractions of the picture's width and height;
    ``line`` counts lines of writing from the top; ``image`` is its (28, 28) MNIST image;
    ``probabilities``, when the touching-digit reader read it, are the reader's (else None:
    the model classifies ``image``).
    """

    box: tuple[float, float, float, float]
    line: int
    image: np.ndarray
    probabilities: np.ndarray | None = None


# --- connected components, run by run ---------------------------------------------------


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask -> (labels, count); 0 is background.

    Each row's runs of ink are found at once; a run joins the runs of the next row that it
    touches (found by binary search), and a union-find over runs, not pixels, names them.
    """
    h, w = mask.shape
    edge = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edge == 1)
    ends = np.nonzero(edge == -1)[1]  # exclusive; row-major order pairs them with the starts
    n = len(rows)
    labels = np.zeros((h, w), np.int32)
    if n == 0:
        return labels, 0
    width = w + 2
    skey, ekey = rows * width + starts, rows * width + ends
    below = (rows + 1) * width
    lo = np.searchsorted(ekey, below + starts, side="left")  # first run below ending at/after start
    hi = np.searchsorted(skey, below + ends, side="right")  # last run below starting at/before end
    count = np.maximum(hi - lo, 0)
    first = np.repeat(np.arange(n), count)
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    second = np.repeat(lo, count) + offset
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)])
    names = np.unique(roots, return_inverse=True)[1] + 1
    lengths = ends - starts
    flat = np.repeat(rows * w + starts, lengths) + (
        np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    labels.ravel()[flat] = np.repeat(names, lengths)
    return labels, int(names.max())


@dataclass
class _Part:
    """A digit in the making: its components, box (rows y0:y1, columns x0:x1) and ink."""

    ids: list[int]
    y0: int
    y1: int
    x0: int
    x1: int
    area: float

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def joined(self, other: _Part) -> _Part:
        return _Part(
            self.ids + other.ids,
            min(self.y0, other.y0),
            max(self.y1, other.y1),
            min(self.x0, other.x0),
            max(self.x1, other.x1),
            self.area + other.area,
        )


def _parts(labels: np.ndarray, count: int, ink: np.ndarray) -> list[_Part]:
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    big = np.iinfo(np.int32).max
    y0 = np.full(count, big)
    x0 = np.full(count, big)
    y1 = np.zeros(count, np.int64)
    x1 = np.zeros(count, np.int64)
    np.minimum.at(y0, lab, ys)
    np.minimum.at(x0, lab, xs)
    np.maximum.at(y1, lab, ys + 1)
    np.maximum.at(x1, lab, xs + 1)
    area = np.bincount(lab, weights=ink[ys, xs], minlength=count)
    return [
        _Part([i + 1], int(y0[i]), int(y1[i]), int(x0[i]), int(x1[i]), float(area[i])) for i in range(count)
    ]


# --- from components to digits ----------------------------------------------------------


def _without_rules(ink: np.ndarray) -> np.ndarray:
    """Ink minus long horizontal lines (ruled paper, an underline): a horizontal opening."""
    k = int(ink.shape[1] * RULE_LENGTH) | 1
    if k < 9:
        return ink
    rules = running(running(ink, k, 1, np.minimum), k, 1, np.maximum)
    return np.clip(ink - rules, 0.0, 1.0)


def _typical_height(parts: list[_Part]) -> float:
    """The height of a digit here: the median of the tall components with a good share of ink
    (a loose flag of a 5 has ink, but it is not a digit's height)."""
    top = max(p.area for p in parts)
    heights = [p.height for p in parts if p.area >= 0.3 * top]
    return float(np.median([v for v in heights if v >= 0.75 * max(heights)]))


def _join_pieces(parts: list[_Part], height: float) -> list[_Part]:
    """Join the pieces of one digit (a 5 whose flag came loose, a 4 with a gap, a dotted
    stroke): a piece well under a digit's height joins the nearest piece if together they
    are still one digit's size; one that is far from everything stays alone (a speck).
    Two full-height components are two digits unless one stands over the other's middle.
    """
    parts = sorted(parts, key=lambda p: -p.area)
    changed = True
    while changed:
        changed = False
        for i, small in sorted(enumerate(parts), key=lambda t: t[1].height):
            best, best_gap = None, 0.3 * height
            for j, other in enumerate(parts):
                if j == i:
                    continue
                both = small.joined(other)
                overlap = min(small.x1, other.x1) - max(small.x0, other.x0)
                stacked = overlap >= JOIN_OVERLAP * min(small.width, other.width)
                # halves of one digit overlap in rows too; two lines of digits leave a gap
                entwined = stacked and min(small.y1, other.y1) > max(small.y0, other.y0)
                tall = both.height > JOIN_HEIGHT * height and not entwined
                # one piece over another (a 5's flag over its body) may be a digit wider than tall
                if tall or both.width > (1.2 if stacked else 0.95) * max(height, both.height):
                    continue
                if small.height >= 0.6 * height and other.height >= 0.6 * height and not stacked:
                    continue
                gap = max(other.x0 - small.x1, small.x0 - other.x1, other.y0 - small.y1, small.y0 - other.y1)
                if gap <= best_gap:
                    best, best_gap = j, gap
            if best is not None:
                parts[min(i, best)] = small.joined(parts[best])
                del parts[max(i, best)]
                changed = True
                break
    return parts


def _digits_only(parts: list[_Part], height: float) -> list[_Part]:
    """Drop specks, dashes and stray strokes: a digit is tall, or as wide as a digit is tall
    (a 0 or an 8 written flat and small) with much of a digit's ink."""
    tall = [p for p in parts if p.height >= FRAGMENT * height]
    area = float(np.median([p.area for p in tall])) if tall else 0.0
    return [
        p
        for p in parts
        if p.height >= FRAGMENT * height
        or (p.height >= FLAT[0] * height and p.width >= FRAGMENT * height and p.area >= FLAT[1] * area)
    ]


def _lines(parts: list[_Part]) -> list[list[_Part]]:
    """Group parts into lines of writing (a part joins the line its middle lies in), top down."""
    lines: list[list[_Part]] = []
    for p in sorted(parts, key=lambda p: -p.height):  # tall digits define the lines
        mid = (p.y0 + p.y1) / 2
        home = None
        for line in lines:
            top = float(np.median([q.y0 for q in line]))
            bottom = float(np.median([q.y1 for q in line]))
            if top <= mid <= bottom:
                home = line
                break
        if home is None:
            lines.append([p])
        else:
            home.append(p)
    lines.sort(key=lambda line: float(np.median([(q.y0 + q.y1) / 2 for q in line])))
    return [sorted(line, key=lambda p: (p.x0 + p.x1) / 2) for line in lines]


def _ink_of(part: _Part, ink: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The part's own ink in its box: its components, grown a pixel for the soft edge, and
    no pixel of a neighbour's component."""
    sl = (slice(part.y0, part.y1), slice(part.x0, part.x1))
    lab = labels[sl]
    own = np.isin(lab, part.ids)
    near = running(running(own.astype(np.float32), 3, 0, np.maximum), 3, 1, np.maximum) > 0
    return ink[sl] * (near & ((lab == 0) | own))


def _cut_costs(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column x: the least ink a cut line through (x, middle) crosses, and its
    slopes (above the middle row, from it down). A cut bends at the middle row: interlocking
    digits (a 7's bar over the next digit's top, a 4 under it) leave no straight gap."""
    h, w = patch.shape
    ys = np.arange(h)[:, None] - (h - 1) / 2
    xs = np.arange(w)[None, :]
    halves = []
    for rows in (ys[:, 0] < 0, ys[:, 0] >= 0):  # the top half, then the bottom half
        part, dy = patch[rows], ys[rows]
        costs = np.full((len(SLOPES), w), np.inf)
        for k, slope in enumerate(SLOPES):
            # column x of the sheared half holds the pixels on the line x + slope * (y - mid)
            col = np.broadcast_to(np.rint(xs - slope * dy).astype(int), part.shape)
            inside = (col >= 0) & (col < w)
            costs[k] = np.bincount(col[inside], weights=part[inside], minlength=w)[:w]
        best = np.argmin(costs, axis=0)
        halves.append((costs[best, np.arange(w)], np.asarray(SLOPES)[best]))
    (top, up), (bottom, down) = halves
    return top + bottom, np.stack([up, down], axis=1)


def _between(patch: np.ndarray, left: tuple[float, ...], right: tuple[float, ...]) -> np.ndarray:
    """The ink between two cut lines, each (x at the middle row, slope above it, slope below)."""
    h, w = patch.shape
    ys = np.arange(h)[:, None] - (h - 1) / 2
    xs = np.arange(w)[None, :]

    def across(cut: tuple[float, ...]) -> np.ndarray:
        return xs - np.where(ys < 0, cut[1], cut[2]) * ys

    return patch * ((across(left) >= left[0]) & (across(right) < right[0]))


@dataclass(frozen=True)
class _Candidates:
    """Where touching digits may be cut: the cut lines, and the stretches between two of
    them that may be one digit (``spans``: indices into ``bounds``; ``inks``: their ink)."""

    edges: list[int]  # each cut line's x at the middle row; 0 and the width at the ends
    bounds: list[tuple[float, float, float]]  # (x at the middle row, slopes); infinite at the ends
    crossing: list[float]  # the ink each cut line crosses, in line heights
    spans: list[tuple[int, int]]
    inks: list[np.ndarray]


def _candidates(patch: np.ndarray, height: float) -> _Candidates:
    """Over-segment: the candidate cuts are the columns where a slanted cut line crosses
    the least ink (local minima, no two closer than a stroke or two); every stretch between
    two candidates that is about a digit wide (and the whole) may be a digit."""
    cost, slope = _cut_costs(patch)
    w = patch.shape[1]
    order = np.argsort(cost[1:-1], kind="stable") + 1
    spaced: list[int] = []
    for x in order.tolist():  # cheapest first
        if cost[x] > cost[x - 1] or cost[x] > cost[x + 1]:
            continue
        if all(abs(x - y) >= CUT_SPACING * height for y in spaced) and len(spaced) < MAX_CUTS:
            spaced.append(x)
    spaced.sort()
    edges = [0, *spaced, w]
    bounds = [(-np.inf, 0.0, 0.0), *[(float(x), *map(float, slope[x])) for x in spaced], (np.inf, 0.0, 0.0)]
    spans = [
        (i, j)
        for i in range(len(edges))
        for j in range(i + 1, len(edges))
        if 0.15 * height <= edges[j] - edges[i] <= PIECE * height or (i, j) == (0, len(edges) - 1)
    ]
    inks = [_between(patch, bounds[i], bounds[j]) for i, j in spans]
    keep = [k for k, a in enumerate(inks) if float(a.sum()) > 0.5]
    crossing = [0.0, *[float(cost[x]) / height for x in spaced], 0.0]
    return _Candidates(edges, bounds, crossing, [spans[k] for k in keep], [inks[k] for k in keep])


def _split(patch: np.ndarray, height: float, width: float, judge: Judge | None) -> list[np.ndarray]:
    """Cut the ink of touching digits into digits, left to right.

    Over-segment (:func:`_candidates`), then choose the best chain of candidates from left
    to right. With a ``judge`` (the model), a candidate scores by how sure the model
    is of it; without, by how close its width is to a digit's. Each cut through ink costs.
    """
    c = _candidates(patch, height)
    edges, bounds, spans, inks, crossing = c.edges, c.bounds, c.spans, c.inks, c.crossing
    if not spans:
        return [patch]
    if judge is not None:  # all candidates in one call
        sure = np.asarray(judge(np.stack([ink_to_mnist(a) for a in inks])), dtype=np.float64)
    widths = np.array([edges[j] - edges[i] for i, j in spans], dtype=np.float64)
    scores = -np.abs(widths - width) / width
    whole = spans.index((0, len(edges) - 1)) if (0, len(edges) - 1) in spans else None
    if whole is not None and widths[whole] <= WIDEST * height:
        # uncut, a wide digit is still a digit, but ever less likely one as it widens
        scores[whole] = -WHOLE_PENALTY * max(0.0, widths[whole] / height - 1.0)
    if judge is not None:
        scores = scores * PRIOR + np.log(np.maximum(sure, 1e-6))
    # a cut pays for the ink it crosses, in line heights (a stroke is about 0.1)
    best = np.full(len(edges), -np.inf)
    best[0] = 0.0
    back = [-1] * len(edges)
    for (i, j), score in sorted(zip(spans, scores.tolist(), strict=True)):
        value = best[i] + score - crossing[j]
        if value > best[j]:
            best[j], back[j] = value, i
    if not np.isfinite(best[-1]):
        return [patch]
    chosen, j = [], len(edges) - 1
    while j > 0:
        chosen.append((back[j], j))
        j = back[j]
    return [_between(patch, bounds[i], bounds[j]) for i, j in reversed(chosen)]


def _own_strokes(
    part: _Part, piece: np.ndarray, strength: np.ndarray, labels: np.ndarray, peak: float
) -> np.ndarray:
    """A digit's ink again, each stroke cut against its own strength, not the picture's.

    A digit in a number is a few dozen pixels tall: blur and a fine pen leave its thin
    strokes fainter than the picture's strongest ink, and the picture-wide cut of the ink map
    drops them (an 8 without its waist, a 7 without its bar). MNIST's strokes are solid
    whatever the pen: each pixel near the piece (its ink grown two pixels, nothing of a
    neighbour's component) is measured against the strongest ink around it, then stretched
    as :func:`mnist_tflite.edge.ink.cut_ink` stretches the picture's.
    """
    sl = (slice(part.y0, part.y1), slice(part.x0, part.x1))
    lab = labels[sl]
    near = running(running((piece > 0).astype(np.float32), 5, 0, np.maximum), 5, 1, np.maximum) > 0
    s = strength[sl] * (near & ((lab == 0) | np.isin(lab, part.ids)))
    k = max(3, int(STROKE_WINDOW * part.height) | 1)
    local = running(running(box3(s), k, 0, np.maximum), k, 1, np.maximum)
    return stretch(s / np.maximum(local, FAINTEST * peak))


def _cut_at(patch: np.ndarray, height: float, columns: list[float]) -> list[np.ndarray]:
    """Cut touching digits between the columns where the reader saw each one: at the
    candidate cut (:func:`_candidates`) nearest the middle of two neighbours, else straight
    down that middle."""
    c = _candidates(patch, height)
    inner = list(zip(c.edges[1:-1], c.bounds[1:-1], strict=True))
    bounds: list[tuple[float, float, float]] = [c.bounds[0]]
    for a, b in itertools.pairwise(columns):
        middle = (a + b) / 2
        near = [(abs(x - middle), bound) for x, bound in inner if a < x < b]
        bounds.append(min(near)[1] if near else (middle, 0.0, 0.0))
    bounds.append(c.bounds[-1])
    pieces = [_between(patch, left, right) for left, right in itertools.pairwise(bounds)]
    return [q if float(q.sum()) > 0.5 else patch for q in pieces]


def _one_digit(patch: np.ndarray, wide: float, reads: list, judge: Judge | None) -> bool:
    """A wide single digit (a broad 0, a slanted 4) that the reader took for two: the model
    is surer of the whole as one digit than the reader is of all its digits together."""
    if judge is None or wide > WIDEST:
        return False
    together = float(np.prod([q.max() for _, q in reads]))
    whole = float(np.asarray(judge(ink_to_mnist(patch)[None]))[0])
    return whole >= WHOLE_SURE and whole > together


def _line_width(line: list[_Part], height: float) -> float:
    """The width of one digit in this line: the median of the parts that hold one digit."""
    single = [p.width for p in line if DIGIT_WIDTH[0] * height <= p.width <= WIDE_JUDGED * height]
    guess = float(np.median(single)) if single else 0.55 * height
    return float(np.clip(guess, DIGIT_WIDTH[0] * height, DIGIT_WIDTH[1] * height))


def _box(part: _Part, piece: np.ndarray, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """A piece's box as fractions of the picture: its ink within its part's box."""
    rows, cols = np.nonzero(piece.any(axis=1))[0], np.nonzero(piece.any(axis=0))[0]
    y0, y1 = part.y0 + int(rows[0]), part.y0 + int(rows[-1]) + 1
    x0, x1 = part.x0 + int(cols[0]), part.x0 + int(cols[-1]) + 1
    h, w = shape
    return (round(x0 / w, 4), round(y0 / h, 4), round(x1 / w, 4), round(y1 / h, 4))


def _too_many(count: int, what: str) -> SegmentError:
    return SegmentError(
        f"found {count} {what}; at most {MAX_DIGITS} digits are read from one picture (a page of text?)"
    )


def find_digits(image, *, judge: Judge | None = None, reader: ReadInk | None = None) -> list[Digit]:
    """A photo or array of a handwritten number -> its digits, by line, left to right.

    Args:
        image: a ``PIL.Image.Image`` or a NumPy array (H, W[, C]), as for ``to_mnist``.
            A 28x28 array is one MNIST digit and is returned as it is.
        judge: (N, 28, 28) candidate digits -> the model's confidence in each; used to
            choose where touching digits are cut (without it, by their widths).
        reader: a component's ink -> its digits (column, probabilities), read without
            cutting (:class:`mnist_tflite.edge.reader.Reader`); when given, it reads the
            components wider than ``READER_WIDE`` line heights (its cuts only make the pictures).

    Returns:
        The digits found, each with its box and its (28, 28) image. When only one is found,
        its image is exactly ``to_mnist(image)``: a single digit is read as before.

    Raises:
        BlankImageError: when there is no ink; SegmentError: more than ``MAX_DIGITS`` marks,
        or one mark as large as the picture (a table, a frame).

    Example:
        >>> [d.box for d in find_digits(load_image("meter.jpg"))]
    """
    a = picture(image)
    if a.ndim == 2:  # an MNIST digit
        return [Digit((0.0, 0.0, 1.0, 1.0), 0, a)]
    strength, peak = ink_strength(a)
    full = cut_ink(strength, peak)
    h, w = full.shape
    labels, count = _label(full > INK_LEVEL)
    parts = _parts(labels, count, full)
    for p in parts:
        if p.width >= WHOLE_PICTURE * w and p.height >= WHOLE_PICTURE * h:
            share = f"{p.width / w:.0%} of its width, {p.height / h:.0%} of its height"
            what = "a table, a grid or a frame, not digits"
            raise SegmentError(f"one mark spans the whole picture ({share}): {what}")
    ink = _without_rules(full)
    if ink is not full:
        labels, count = _label(ink > INK_LEVEL)
        parts = _parts(labels, count, ink)
    if not parts:
        return [Digit((0.0, 0.0, 1.0, 1.0), 0, ink_to_mnist(full))]
    height = _typical_height(parts)
    parts = _join_pieces(parts, height)
    parts = _digits_only(parts, height)
    if len(parts) > MAX_DIGITS:
        raise _too_many(len(parts), "separate marks")
    # (part, line, ink, cut from a wider component, the reader's probabilities or None)
    found: list[tuple[_Part, int, np.ndarray, bool, np.ndarray | None]] = []
    for number, line in enumerate(_lines(parts)):
        line_height = float(np.median([p.height for p in line]))
        digit_width = _line_width(line, line_height)
        for p in line:
            patch = _ink_of(p, ink, labels)
            probs: list[np.ndarray | None] = []  # the reader's, when it read the component
            if p.width <= (WIDE_JUDGED if judge or reader else WIDE) * max(line_height, p.height):
                pieces = [patch]
            elif reader is not None and p.width > READER_WIDE * max(line_height, p.height):
                reads = reader(patch)
                if len(reads) > 1 and not _one_digit(
                    patch, p.width / max(line_height, p.height), reads, judge
                ):
                    pieces = _cut_at(patch, line_height, [x for x, _ in reads])
                    probs = [q for _, q in reads]
                else:
                    pieces = [patch]
            else:
                pieces = _split(patch, line_height, digit_width, judge)
            probs = probs or [None] * len(pieces)
            found += [(p, number, q, len(pieces) > 1, r) for q, r in zip(pieces, probs, strict=True)]
            if len(found) > MAX_DIGITS:
                raise _too_many(len(found), "digits")
    if len(found) == 1:  # one digit: exactly the single-digit path, specks and all
        part, _, piece, _, _ = found[0]
        return [Digit(_box(part, piece, (h, w)), 0, ink_to_mnist(full))]
    # a piece cut from touching digits stays as it was judged or read (grown, it would cross the cut)
    return [
        Digit(
            _box(p, q, (h, w)),
            number,
            ink_to_mnist(q if cut else _own_strokes(p, q, strength, labels, peak)),
            r,
        )
        for p, number, q, cut, r in found
    ]
