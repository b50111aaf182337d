"""Turn evaluation rows into ``report.md``, ``report.json`` and PNG plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_tflite.core import atomic
from mnist_tflite.core.errors import printable
from mnist_tflite.edge.evaluate import VariantResult
from mnist_tflite.report.plots import TIE_POINTS, pareto_front, plot_accuracy_vs_size, plot_confusion

__all__ = [
    "budget_table",
    "markdown_table",
    "pareto_front",
    "plot_accuracy_vs_size",
    "plot_confusion",
    "rows_as_dicts",
    "table_cells",
    "write_report",
]

# (header, row key, formatter); a column whose key no row has is left out
COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("variant", "name", str),
    ("size (bytes)", "size_bytes", lambda v: f"{v:,}"),
    ("x float32", "size_ratio", lambda v: f"{v:.2f}"),
    ("accuracy", "accuracy", lambda v: f"{100 * v:.2f} %"),
    ("agrees w/ Keras", "agreement", lambda v: f"{100 * v:.2f} %"),
    ("max Δprob", "max_prob_diff", lambda v: f"{v:.4f}"),
    ("latency b1 (µs)", "latency_us", lambda v: f"{v:,.0f}"),
    ("batched (img/s)", "throughput_ips", lambda v: f"{v:,.0f}"),
    ("zipped (bytes)", "zip_bytes", lambda v: f"{v:,}"),
    ("sparsity", "sparsity", lambda v: f"{100 * v:.0f} %"),
    ("fine-tune (s)", "finetune_seconds", lambda v: f"{v:.0f}"),
    ("flash (bytes)", "flash_bytes", lambda v: f"{v:,}"),
    ("TFLM arena (bytes)", "arena_bytes", lambda v: f"{v:,}"),
    ("TFLM check", "tflm_check", str),
    ("MACs", "macs", lambda v: f"{v:,}"),
    ("compiled code (bytes)", "compiled_code_bytes", lambda v: f"{v:,}"),
    ("compiled RAM (bytes)", "compiled_static_ram_bytes", lambda v: f"{v:,}"),
    ("M4 instructions", "compiled_instructions", lambda v: f"{v:,}"),
    ("ops", "ops", lambda v: ", ".join(v) if isinstance(v, list) else str(v)),
    ("in/out", "io", str),
)


def rows_as_dicts(rows: Sequence[VariantResult]) -> list[dict[str, Any]]:
    out = [r.to_dict() for r in rows]
    base = next((r["size_bytes"] for r in out if r["name"] == "float32" and r["size_bytes"]), None)
    for r in out:
        if base and r.get("size_bytes"):
            r["size_ratio"] = r["size_bytes"] / base
        if r.get("input_dtype"):
            r["io"] = f"{r['input_dtype']}/{r['output_dtype']}"
    return out


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the comparison table; failed rows show their reason.

    Columns that no row has are left out. ``report.md`` and the web page both show this.
    """
    cols = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    cells = []
    for r in rows:
        if r.get("status") == "failed":
            cells.append(
                [str(r.get("name")), f"failed: {r.get('error') or 'unknown'}"] + [""] * (len(cols) - 2)
            )
        else:
            cells.append(["" if r.get(key) is None else fmt(r[key]) for _, key, fmt in cols])
    return [h for h, _, _ in cols], cells


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured table; failed rows show their reason."""
    headers, cells = table_cells(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(printable(c) for c in row) + " |" for row in cells]  # names from files
    return "\n".join(lines)


BUDGETS_KB = (8, 10, 16, 32, 48, 64, 128, 256)


BUDGET_TITLE = (
    "Which variant to choose for a flash budget (KB = 1,024 bytes). Rule: among the variants "
    "that fit, the most accurate wins, except that accuracies within 0.05 points (5 of 10,000 "
    "test images, well inside the ±0.2-point 95 % interval) count as a tie, which goes to the "
    "smallest TFLM arena (RAM), then the smallest flash:"
)


def budget_table(rows: Sequence[dict[str, Any]], budgets_kb: Sequence[int] = BUDGETS_KB) -> str:
    """A markdown table: for each flash budget, the most accurate variant that fits.

    Accuracies within ``TIE_POINTS`` of the best count as a tie, won by the smaller arena, then flash.

    Flash is ``flash_bytes`` when the rows have it, else ``size_bytes``; when rows carry a TFLM
    ``arena_bytes``, only those (the variants that run on a microcontroller) are candidates.

    Returns:
        The table, or ``""`` when no row has a size and an accuracy.
    """
    key = "flash_bytes" if any(r.get("flash_bytes") for r in rows) else "size_bytes"
    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get(key) and r.get("accuracy") is not None]
    if any(r.get("arena_bytes") for r in ok):  # a TFLM report: only what runs on the MCU counts
        ok = [r for r in ok if r.get("arena_bytes")]
    if not ok:
        return ""

    def best(candidates: list[dict[str, Any]]) -> dict[str, Any]:
        # a few test images are noise: among those within TIE_POINTS of the best accuracy,
        # the one that costs least RAM (then flash) wins
        top = max(r["accuracy"] for r in candidates)
        close = [r for r in candidates if r["accuracy"] >= top - TIE_POINTS / 100]
        return min(close, key=lambda r: (r.get("arena_bytes") or 0, r[key], -r["accuracy"]))

    overall = best(ok)
    arena = any(r.get("arena_bytes") for r in ok)
    lines = [
        "| flash budget | choose | accuracy | flash (bytes) |" + (" TFLM arena (bytes) |" if arena else ""),
        "|---|---|---|---|" + ("---|" if arena else ""),
    ]
    for kb in budgets_kb:
        fits = [r for r in ok if r[key] <= kb * 1024]
        if not fits:
            lines.append(f"| ≤ {kb} KB | nothing fits | | |" + (" |" if arena else ""))
            continue
        choice = best(fits)
        cells = [f"≤ {kb} KB", choice["name"], f"{100 * choice['accuracy']:.2f} %", f"{choice[key]:,}"]
        if arena:
            cells.append(f"{choice['arena_bytes']:,}")
        lines.append("| " + " | ".join(cells) + " |")
        if choice is overall:
            break  # larger budgets choose the same
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike[str], report: dict[str, Any], notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.json`` into ``out_dir``."""
    out = Path(out_dir)
    rows = report["variants"]
    data = report.get("data", {})
    lines = [
        "# mnist-tflite report",
        "",
        f"Data: {data.get('source', '?')} — {data.get('train_images', '?'):,} training / "
        f"{data.get('test_images', '?'):,} test images. Seed {report.get('seed')}.",
    ]
    if "keras_accuracy" in report.get("train", {}):
        t = report["train"]
        lines.append(
            f"Keras model ({t['config']['arch']}): {100 * t['keras_accuracy']:.2f} % test accuracy "
            f"after {t['config']['epochs']} epochs ({t['seconds']:.0f} s)."
        )
    lines += ["", markdown_table(rows), ""]
    budgets = budget_table(rows)
    if budgets:
        lines += [BUDGET_TITLE, "", budgets, ""]
    lines += [f"- {n}" for n in notes]
    plots = report.get("plots", {})
    if plots:
        lines.append("")
        lines += [f"![{k}]({v})" for k, v in plots.items()]
    md, js = out / "report.md", out / "report.json"
    atomic.write_text(md, "\n".join(lines).rstrip() + "\n")
    atomic.write_json(js, report)
    return md, js
