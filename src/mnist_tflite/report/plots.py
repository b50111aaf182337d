"""The report's PNGs: accuracy against size with 95 % intervals, and the confusion matrix.

Sizes are in KB of 1,024 bytes on a log axis; accuracies carry Wilson 95 % intervals, so a
difference of three test images in 10,000 does not look like a cliff.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from mnist_tflite.core import atomic

__all__ = ["TIE_POINTS", "pareto_front", "plot_accuracy_vs_size", "plot_confusion", "wilson_interval"]

KB = 1024
_T = TypeVar("_T")
MIN_SPAN_POINTS = 1.0  # the y axis spans at least this many accuracy points


def wilson_interval(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95 % interval of a proportion ``accuracy`` measured on ``n`` images.

    Example:
        >>> wilson_interval(0.987, 10_000)  # about +-0.22 points
        (0.9846..., 0.9890...)
    """
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


TIE_POINTS = 0.05  # accuracy points treated as a tie (5 of 10,000 test images)


def _size_then_error(point: Any) -> tuple[float, float]:
    size, accuracy = point
    return (size, -accuracy)


def pareto_front(
    items: Sequence[_T], key: Callable[[_T], Sequence[float]] = _size_then_error, tie: float = 0.0
) -> list[_T]:
    """The items no other item dominates, in their order.

    ``key`` gives each item's costs, smaller is better; another item dominates when its costs
    are at most as large in every coordinate and not all equal. The default takes
    ``(size, accuracy)`` pairs. Tune's front uses ``(flash, arena, -accuracy)``.

    With ``tie`` > 0, walking the front from the cheapest, an item is kept only when its last
    cost beats every item kept before it by more than ``tie``: a larger variant 0.01-0.02 points
    "better" (a test image or two, far inside the 95 % intervals) is not ranked above a smaller
    one; the smaller wins, as in the budget table.

    Example:
        >>> pareto_front([(10, 90.0), (20, 95.0), (30, 94.0)])
        [(10, 90.0), (20, 95.0)]
        >>> pareto_front([(1, 90.0), (2, 90.04), (3, 90.1)], tie=0.05)
        [(1, 90.0), (3, 90.1)]
    """
    costs = [tuple(key(item)) for item in items]
    front = [
        (item, mine)
        for item, mine in zip(items, costs, strict=True)
        if not any(other != mine and all(a <= b for a, b in zip(other, mine, strict=True)) for other in costs)
    ]
    if tie <= 0:
        return [item for item, _ in front]
    kept: list[_T] = []
    best = math.inf
    for item, mine in sorted(front, key=lambda pair: pair[1]):
        if mine[-1] < best - tie:
            kept.append(item)
            best = mine[-1]
    return kept


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _kb_label(value: float, _pos: object = None) -> str:
    kb = value / KB
    return f"{kb:,.0f} KB" if kb >= 1 else f"{value:,.0f} B"


def _kb_axis(ax: Any, sizes: Sequence[float]) -> None:
    """Log x axis with ticks at powers of two KB that cover ``sizes``, labelled in KB."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    lo, hi = min(sizes) / 1.6, max(sizes) * 1.6
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ticks = [KB * 2.0**k for k in range(-4, 24) if lo <= KB * 2.0**k <= hi]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(_kb_label))
    ax.xaxis.set_minor_locator(NullLocator())


def _y_range(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """Cover every interval, span at least ``MIN_SPAN_POINTS``, never above 100 %."""
    lo, hi = min(lows), max(highs)
    span = max(hi - lo, MIN_SPAN_POINTS)
    mid = (lo + hi) / 2
    lo, hi = mid - 0.62 * span, mid + 0.62 * span
    if hi > 100:
        lo, hi = lo - (hi - 100), 100.0
    return lo, hi


_STEPS = (0, 12, 24, 40, 60, 85)
# where a label may go, in points from its marker: nearest first, above before below
_LABEL_OFFSETS = sorted(
    {(sx * dx, sy * dy) for dx in (10, 28, 50, 80, 115) for dy in _STEPS for sx in (-1, 1) for sy in (-1, 1)}
    | {(0, sy * dy) for dy in _STEPS[1:] for sy in (-1, 1)},
    key=lambda o: (math.hypot(*o), o[1] < 0),
)


def _obstacles(
    ax: Any,
    points: Sequence[tuple[float, float, str]],
    avoid: Sequence[Any],
    bars: Sequence[tuple[float, float, float]],
    boxes: Sequence[Any],
) -> tuple[list[Any], list[Any]]:
    """Display-space boxes a label must not cover: markers, whiskers, boxes, and sampled lines."""
    from matplotlib.transforms import Bbox

    taken = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - 5), 10, 10) for x, y, _ in points]
    for x, lo, hi in bars:  # (x, low, high) in data units: the whisker and its caps
        (x0, y0), (_, y1) = ax.transData.transform([(x, lo), (x, hi)])
        taken.append(Bbox.from_extents(x0 - 5, y0 - 2, x0 + 5, y1 + 2))
    taken += list(boxes)  # e.g. the legend
    lines = []
    for line in avoid:  # sample each line densely: a label box must not cover any of it
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        for (x0, y0), (x1, y1) in itertools.pairwise(xy):
            for t in np.linspace(0, 1, 24):
                px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                lines.append(Bbox.from_bounds(px - 1, py - 1, 2, 2))
    return taken, lines


def _place_labels(
    ax: Any,
    points: Sequence[tuple[float, float, str]],
    avoid: Sequence[Any] = (),
    bars: Sequence[tuple[float, float, float]] = (),
    boxes: Sequence[Any] = (),
) -> None:
    """Label every point inside the axes, off other labels, markers, error ``bars`` and ``avoid`` lines.

    Tries offsets around each point (nearest first) and keeps the first whose text box fits;
    a thin leader line joins each label to its point.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    from matplotlib.text import Text

    taken, lines = _obstacles(ax, points, avoid, bars, boxes)
    offsets = _LABEL_OFFSETS
    for x, y, name in points:
        best: tuple[int, Any] | None = None
        for dx, dy in offsets:
            text = ax.annotate(
                name,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="right" if dx < 0 else "left" if dx > 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 0, "shrinkB": 3},
                zorder=5,
            )
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            clashes = (0 if inside else 1000) + sum(box.overlaps(o) for o in [*taken, *lines])
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, text)
            else:
                text.remove()
            if clashes == 0:
                break
        if best is not None:
            taken.append(Text.get_window_extent(best[1], renderer))


def _draw_points(
    ax: Any, pts: Sequence[dict[str, Any]], intervals: list[Any], size_key: str, group_key: str | None
) -> None:
    """Each variant with its interval as an error bar, one colour per group."""
    groups = list(dict.fromkeys(r.get(group_key, "") for r in pts)) if group_key else [""]
    for g in groups:
        pairs = zip(pts, intervals, strict=True)
        mine = [(r, ci) for r, ci in pairs if not group_key or r.get(group_key) == g]
        xs = [r[size_key] for r, _ in mine]
        ys = [100 * r["accuracy"] for r, _ in mine]
        err = [[y - 100 * lo for y, (_, (lo, _hi)) in zip(ys, mine, strict=True)],
               [100 * hi - y for y, (_, (_lo, hi)) in zip(ys, mine, strict=True)]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=5, capsize=3, lw=1, zorder=3, label=g or None)


def _draw_front(ax: Any, pts: Sequence[dict[str, Any]], size_key: str) -> tuple[list[dict[str, Any]], Any]:
    """The Pareto front's rows (smallest first) and the step line drawn for it."""
    front_xy = set(pareto_front([(r[size_key], 100 * r["accuracy"]) for r in pts], tie=TIE_POINTS))
    on_front = (r for r in pts if (r[size_key], 100 * r["accuracy"]) in front_xy)
    front = sorted(on_front, key=lambda r: r[size_key])
    # the front as explicit steps (not drawstyle="steps-post"), so the label placer sees the
    # segments actually drawn: right along each accuracy, then up to the next
    fx = [r[size_key] for r in front] + [ax.get_xlim()[1]]
    fy = [100 * r["accuracy"] for r in front]
    sx = [v for i in range(len(fy)) for v in (fx[i], fx[i + 1])]
    sy = [v for y in fy for v in (y, y)]
    label = f"Pareto front (within {TIE_POINTS:g} points: a tie, the smaller wins)"
    (step,) = ax.plot(sx, sy, color="tab:red", alpha=0.6, label=label)
    return front, step


SIZE_AXES = {  # row key -> what the x axis measures
    "size_bytes": "model file size",
    "flash_bytes": "flash (model bytes)",
    "arena_bytes": "TFLM tensor arena (RAM)",
}


def plot_accuracy_vs_size(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    size_key: str = "size_bytes",
    title: str = "Size vs accuracy",
    test_images: int = 10_000,
    group_key: str | None = None,
    caption: str | None = None,
) -> list[dict[str, Any]]:
    """Accuracy (with Wilson 95 % intervals) against size for every variant, Pareto front drawn.

    Args:
        rows: report rows with ``name``, ``accuracy`` and ``size_key``; failed rows are skipped.
        test_images: the number of images each accuracy was measured on (rows may carry their
            own ``test_images``), which sets the interval.
        group_key: colour the points by this row key (e.g. ``architecture``).
        caption: a line under the plot (e.g. what was left out).

    Returns:
        The rows on the Pareto front, smallest first.
    """
    plt = _pyplot()
    pts = [
        r for r in rows if r.get("status", "ok") == "ok" and r.get(size_key) and r.get("accuracy") is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    front: list[dict[str, Any]] = []
    if pts:
        intervals = [wilson_interval(r["accuracy"], int(r.get("test_images") or test_images)) for r in pts]
        _draw_points(ax, pts, intervals, size_key, group_key)
        _kb_axis(ax, [r[size_key] for r in pts])
        ax.set_ylim(*_y_range([100 * lo for lo, _ in intervals], [100 * hi for _, hi in intervals]))
        front, step = _draw_front(ax, pts, size_key)
        counts = ", ".join(f"{n:,}" for n in sorted({int(r.get("test_images") or test_images) for r in pts}))
        ax.plot([], [], " ", label=f"bars: 95 % interval (Wilson, {counts} images)")
        legend = ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{SIZE_AXES.get(size_key, size_key)} (KB = 1,024 bytes; log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    if pts:  # after the layout is final: labels are placed in display coordinates
        fig.canvas.draw()
        _place_labels(
            ax,
            [(r[size_key], 100 * r["accuracy"], str(r["name"])) for r in pts],
            avoid=[step],
            bars=[(r[size_key], 100 * lo, 100 * hi) for r, (lo, hi) in zip(pts, intervals, strict=True)],
            boxes=[legend.get_window_extent()],
        )
    _save(fig, path)
    return front


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], title: str, path: str | os.PathLike[str]
) -> None:
    """Counts on a log colour scale (the diagonal dwarfs the errors), a colour bar, accuracy in the title."""
    from matplotlib.colors import SymLogNorm

    plt = _pyplot()
    cm = np.asarray(cm)
    total = int(cm.sum())
    acc = float(np.trace(cm)) / total if total else 0.0
    fig, ax = plt.subplots(figsize=(7, 5.8), dpi=110)
    norm = SymLogNorm(linthresh=1, vmin=0, vmax=max(1, int(cm.max())), base=10)
    im = ax.imshow(cm, cmap="Blues", norm=norm)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                color = "white" if norm(cm[i, j]) > 0.6 else "black"
                ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=7, color=color)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_ticks([t for t in (0, 1, 10, 100, 1000, 10000) if t <= max(1, int(cm.max()))])
    bar.set_ticklabels([f"{t:,}" for t in bar.get_ticks()])
    bar.set_label("test images (log scale)")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [str(c)[:8] for c in class_names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [str(c)[:8] for c in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    errors = total - int(np.trace(cm))
    ax.set_title(f"{title}\n{100 * acc:.2f} % accurate on {total:,} test images ({errors:,} errors)")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
