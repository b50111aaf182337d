"""``mnist-tflite pareto``: several runs (one per architecture) on one accuracy-vs-flash chart.

Each ``mnist-tflite run`` trains one architecture; this merges their ``report.json`` files
so every (architecture, recipe) pair is one point, marks the Pareto front and says which
variant to choose for a flash budget. Reads JSON only: no TensorFlow, no re-evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_tflite import atomic
from mnist_tflite.errors import fail
from mnist_tflite.report import tables as report_mod

__all__ = ["load_run", "merge_runs", "write_pareto"]

MAX_REPORT_BYTES = 64 << 20  # a run's report.json is tens of KB

# the columns that matter when choosing between architectures; the full ones stay in each run
_COLUMNS = ("name", "size_bytes", "flash_bytes", "arena_bytes", "zip_bytes", "accuracy", "latency_us", "io")


def load_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``report.json``, checked to be one.

    Raises:
        MnistTfliteError: no report, unreadable JSON, or not a ``mnist-tflite run`` report.
    """
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise fail(run_dir, "no report.json; expected a directory written by `mnist-tflite run`")
    if path.stat().st_size > MAX_REPORT_BYTES:
        expected = "expected a report written by `mnist-tflite run`"
        raise fail(path, f"larger than {MAX_REPORT_BYTES:,} bytes; {expected}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise fail(path, "JSON nested too deeply; expected a report written by `mnist-tflite run`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: also ints over 4,300 digits
        raise fail(path, f"not readable JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list):
        raise fail(path, "has no 'variants' list; expected a report written by `mnist-tflite run`")
    bad = next((v for v in report["variants"] if not isinstance(v, dict)), None)
    if bad is not None or not isinstance(report.get("train", {}), dict):
        found = f"a variant {str(bad)[:40]!r}" if bad is not None else f"'train': {report['train']!r:.40}"
        raise fail(path, f"has {found}; expected objects as written by `mnist-tflite run`")
    config = report.get("train", {}).get("config", {})
    if not isinstance(config, dict):
        raise fail(path, f"has 'train.config': {config!r:.40}; expected an object")
    for v in report["variants"]:
        for key in ("size_bytes", "flash_bytes", "arena_bytes", "zip_bytes", "accuracy", "latency_us"):
            x = v.get(key)
            if x is not None and not (isinstance(x, int | float) and not isinstance(x, bool) and x == x):
                name = str(v.get("name"))[:40]
                raise fail(path, f"variant {name!r} has {key} {x!r:.40}; expected a number or null")
    return report


def merge_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """One row per (architecture, recipe), named ``arch/recipe``; runs of the same architecture
    are told apart by their directory name.

    Example:
        >>> rows = merge_runs(["runs/seed", "runs/tiny"])
    """
    rows: list[dict[str, Any]] = []
    labels: set[str] = set()
    for run_dir in run_dirs:
        report = load_run(run_dir)
        arch = str(report.get("train", {}).get("config", {}).get("arch", "?"))
        label = arch if arch not in labels else f"{arch}@{Path(run_dir).name}"
        labels.add(label)
        for variant in report["variants"]:
            row = {k: variant.get(k) for k in (*_COLUMNS, "status", "error") if k in variant}
            row.update(name=f"{label}/{variant.get('name')}", architecture=arch, run=str(run_dir))
            rows.append(row)
    return rows


def write_pareto(
    run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Any]:
    """Write ``pareto.md``, ``pareto.json`` and ``pareto.png`` into ``out``; returns the JSON.

    Example:
        >>> write_pareto(["runs/seed", "runs/tiny"], "runs/pareto")
    """
    rows = merge_runs(run_dirs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if (out / "pareto.md").exists() and not force:
        raise fail(out / "pareto.md", "already exists (pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)

    key = "flash_bytes" if any(r.get("flash_bytes") for r in rows) else "size_bytes"
    plotted = [r for r in rows if r.get("status", "ok") == "ok" and r.get(key) and r.get("accuracy")]
    tflm = any(r.get("arena_bytes") for r in plotted)
    if tflm:  # flash is a microcontroller's budget: only what TFLM runs competes
        plotted = [r for r in plotted if r.get("arena_bytes")]
    front_pts = set(report_mod.pareto_front([(r[key], 100 * r["accuracy"]) for r in plotted]))
    front = sorted((r for r in plotted if (r[key], 100 * r["accuracy"]) in front_pts), key=lambda r: r[key])
    _plot(plotted, front, key, out / "pareto.png")
    table_rows = sorted(rows, key=lambda r: (r.get(key) or 0, r["name"]))
    lines = [
        "# mnist-tflite: accuracy vs flash across architectures",
        "",
        f"Runs: {', '.join(str(d) for d in run_dirs)}. Flash = {key.replace('_', ' ')}"
        + ("; the chart, front and budgets count only variants that run in TFLM." if tflm else "."),
        "",
        report_mod.markdown_table(table_rows),
        "",
        "Pareto front (nothing else is both smaller and at least as accurate): "
        + ", ".join(r["name"] for r in front),
        "",
        "Which variant to choose for a flash budget (most accurate that fits):",
        "",
        report_mod.budget_table(plotted),
        "",
        "![accuracy vs flash](pareto.png)",
    ]
    doc = {
        "format": "mnist-tflite-pareto/1",
        "runs": [str(d) for d in run_dirs],
        "size_key": key,
        "variants": table_rows,
        "pareto_front": [r["name"] for r in front],
    }
    atomic.write_text(out / "pareto.md", "\n".join(lines) + "\n")
    atomic.write_json(out / "pareto.json", doc)
    return doc


def _plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], key: str, path: Path) -> None:
    """One colour per architecture; only the Pareto front is labelled (the rest would overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for arch in dict.fromkeys(r["architecture"] for r in rows):
        pts = [(r[key], 100 * r["accuracy"]) for r in rows if r["architecture"] == arch]
        ax.scatter(*zip(*pts, strict=True), s=36, zorder=3, label=arch)
    if front:
        fx, fy = [r[key] for r in front], [100 * r["accuracy"] for r in front]
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, label="Pareto front")
        for i, r in enumerate(front):  # neighbours on the front sit close: stagger their labels
            xy = (r[key], 100 * r["accuracy"])
            ax.annotate(r["name"], xy, xytext=(6, -14 - 12 * (i % 3)), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"{key.replace('_', ' ')} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs flash, every architecture and recipe")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
