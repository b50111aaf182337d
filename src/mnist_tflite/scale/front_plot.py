"""``front.png``: the trials' validation accuracy against flash, RAM as colour, and the front.

The front is drawn on its cross-validated accuracy with its test accuracy beside it; the
hand-designed models of ``run`` are the reference points. Front members far below the rest
(a 4 KB model at 54 %) are left out and counted in the legend, so the axis shows the contenders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic
from mnist_tflite.scale.space import kib

__all__ = ["plot_front"]

_TICKS_KB = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def plot_front(
    rows: list[dict[str, Any]],
    front: list[dict[str, Any]],
    path: Path,
    flash_budget: int,
    references: Sequence[dict[str, Any]],
) -> None:
    """Write the chart to ``path`` (atomically). ``references``: name, flash and test_accuracy each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["status"] in ("ok", "stopped") and r.get("flash") and r.get("arena")]
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=100)
    if pts:
        _draw_trials(fig, ax, pts)
    lows = [100 * (r["cv_accuracy"] or 0) for r in front if 100 * (r["cv_accuracy"] or 0) >= 80.0] + [97.0]
    floor = min(lows) - 1.5
    shown = [r for r in front if 100 * r["cv_accuracy"] >= floor]  # not a 4 KB model at 50 %
    if shown:
        _draw_front(ax, shown, hidden=len(front) - len(shown), floor=floor)
    for h in references:
        ax.scatter([h["flash"]], [100 * h["test_accuracy"]], marker="s", color="tab:orange", zorder=5)
        ax.annotate(
            h["name"] + " (test)",
            (h["flash"], 100 * h["test_accuracy"]),
            xytext=(-6, 6),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
    budget_label = f"flash budget {kib(flash_budget)}"
    ax.axvline(flash_budget, color="grey", linestyle="--", alpha=0.6, label=budget_label)
    _axes(ax, [r["flash"] for r in pts] + [h["flash"] for h in references] + [flash_budget], floor)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _draw_trials(fig: Any, ax: Any, pts: list[dict[str, Any]]) -> None:
    """Every trained trial (stopped ones ringed), coloured by arena."""
    acc = [
        100 * (r["val_accuracy"] if r["val_accuracy"] is not None else r["keras_val_accuracy"] or 0)
        for r in pts
    ]
    sc = ax.scatter(
        [r["flash"] for r in pts],
        acc,
        c=[r["arena"] for r in pts],
        cmap="viridis",
        s=40,
        zorder=3,
        marker="o",
        edgecolors="none",
    )
    stopped = [(r["flash"], a) for r, a in zip(pts, acc, strict=True) if r["status"] == "stopped"]
    if stopped:
        ax.scatter(
            *zip(*stopped, strict=True),
            s=70,
            facecolors="none",
            edgecolors="grey",
            zorder=2,
            label="stopped early (val at that epoch)",
        )
    fig.colorbar(sc, ax=ax, label="TFLM arena (bytes)")


def _draw_front(ax: Any, front: list[dict[str, Any]], hidden: int, floor: float) -> None:
    """The front's step line on its cross-validated accuracy, and its test accuracy as crosses."""
    fx, fy = [r["flash"] for r in front], [100 * r["cv_accuracy"] for r in front]
    ax.step(
        fx,
        np.maximum.accumulate(fy),
        where="post",
        color="tab:red",
        alpha=0.6,
        label="Pareto front (cross-validated)"
        + (f"; {hidden} below {floor:.0f} % not shown" if hidden else ""),
    )
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="tab:red", zorder=4)
    ax.scatter(
        fx,
        [100 * r["test_accuracy"] for r in front],
        marker="x",
        color="black",
        zorder=5,
        label="front: test accuracy",
    )


def _axes(ax: Any, xs: list[int], floor: float) -> None:
    """A log flash axis in KB over ``xs``, accuracy from ``floor`` to 100 %, title and legend."""
    import matplotlib.ticker

    lo, hi = min(xs) / 1.15, max(xs) * 1.15
    ticks = [k << 10 for k in _TICKS_KB if lo <= k << 10 <= hi]
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xticks(ticks, [kib(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("flash: int8 .tflite size (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(floor, 100.0)
    ax.set_title("tune: accuracy vs flash, RAM as colour (dots: trials on their validation fold)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
