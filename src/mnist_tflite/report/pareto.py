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

from mnist_tflite.core import atomic
from mnist_tflite.core.errors import fail, first_line
from mnist_tflite.report import tables as report_mod
from mnist_tflite.report.plots import plot_accuracy_vs_size

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
        raise fail(path, f"not readable JSON ({first_line(exc)})") from None
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
        images = report.get("data", {}).get("test_images")
        for variant in report["variants"]:
            row = {k: variant.get(k) for k in (*_COLUMNS, "status", "error") if k in variant}
            row.update(name=f"{label}/{variant.get('name')}", architecture=arch, run=str(run_dir))
            if isinstance(images, int) and images > 0:
                row["test_images"] = images
            rows.append(row)
    return rows


def _competitors(
    rows: list[dict[str, Any]], key: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], bool]:
    """(the rows that compete on the chart, (name, why) of the others, whether TFLM decided)."""
    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get(key) and r.get("accuracy")]
    excluded = [(r["name"], r.get("error") or "failed") for r in rows if r not in ok]
    tflm = any(r.get("arena_bytes") for r in ok)
    if not tflm:
        return ok, excluded, False
    # flash is a microcontroller's budget: only what TFLM runs competes
    excluded += [(r["name"], "does not run in TFLM") for r in ok if not r.get("arena_bytes")]
    return [r for r in ok if r.get("arena_bytes")], excluded, True


def _out_dir(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if (out / "pareto.md").exists() and not force:
        raise fail(out / "pareto.md", "already exists (pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_pareto(
    run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Any]:
    """Write ``pareto.md``, ``pareto.json`` and ``pareto.png`` into ``out``; returns the JSON.

    Example:
        >>> write_pareto(["runs/seed", "runs/tiny"], "runs/pareto")
    """
    rows = merge_runs(run_dirs)
    out = _out_dir(Path(out), force)

    key = "flash_bytes" if any(r.get("flash_bytes") for r in rows) else "size_bytes"
    plotted, excluded, tflm = _competitors(rows, key)
    left_out = "; ".join(f"{name} ({why})" for name, why in excluded)
    front = plot_accuracy_vs_size(
        plotted,
        out / "pareto.png",
        size_key=key,
        title="Accuracy vs flash, every architecture and recipe",
        group_key="architecture",
        caption=f"Not plotted: {left_out}." if excluded else None,
    )
    table_rows = sorted(rows, key=lambda r: (r.get(key) or 0, r["name"]))
    lines = [
        "# mnist-tflite: accuracy vs flash across architectures",
        "",
        f"Runs: {', '.join(str(d) for d in run_dirs)}. Flash = {key.replace('_', ' ')}; "
        "KB = 1,024 bytes."
        + (" The chart, front and budgets count only variants that run in TFLM." if tflm else ""),
        "",
        f"Left out of the chart, front and budgets: {left_out}." if excluded else "Every variant is plotted.",
        "",
        report_mod.markdown_table(table_rows),
        "",
        f"Pareto front (each more than {report_mod.TIE_POINTS:g} points more accurate than every smaller "
        "one; closer is a tie, which the smaller wins): " + ", ".join(r["name"] for r in front),
        "",
        report_mod.BUDGET_TITLE,
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
        "excluded": [{"name": name, "reason": why} for name, why in excluded],
        "kb_bytes": 1024,
        "tie_points": report_mod.TIE_POINTS,
    }
    atomic.write_text(out / "pareto.md", "\n".join(lines) + "\n")
    atomic.write_json(out / "pareto.json", doc)
    return doc
