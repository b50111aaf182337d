"""Tables and figures of ``bench_inference.py``: ratios, % of ceiling, the issue's targets."""

from __future__ import annotations

from typing import Any

VARIANTS = ("float32", "float16", "dynamic", "int8")


def derive(rows: list[dict[str, Any]], macs: int) -> dict[str, Any]:
    """Ratios to the seed's way, % of the ceiling, and the issue's targets, from the medians."""
    by = {(r["label"], r["variant"]): r for r in rows if "error" not in r}
    gemm = next((r for r in rows if "gmacs" in r), None)
    ceiling = gemm["gmacs"] * 1e9 / macs if gemm else None
    for r in rows:
        if "ips" not in r or r.get("error"):
            continue
        seed = by.get(
            (
                "whole job: seed script"
                if r["label"].startswith("whole job")
                else "seed: tf.lite batch-1 loop",
                r["variant"],
            )
        )
        if seed:
            r["x_seed"] = r["ips"] / seed["ips"]
        if ceiling:
            r["pct_ceiling"] = 100 * r["ips"] / ceiling
    ours = {v: r for (lbl, v), r in by.items() if lbl == "mnist-tflite runner"}
    ort = [r for r in rows if r.get("group") == "onnxruntime" and "ips" in r]
    ort_best = max(ort, key=lambda r: r["ips"]) if ort else None
    keras = by.get(("keras predict(batch_size=256)", "float32"))
    best = max(ours.values(), key=lambda r: r["ips"]) if ours else None
    f32 = ours.get("float32")
    t: dict[str, Any] = {
        "macs_per_image": macs,
        "ceiling_ips": ceiling,
        "best_path": best and f"runner {best['variant']}",
        "best_ips": best and best["ips"],
        "onnxruntime_best": ort_best and ort_best["label"],
    }

    def ratio(a: dict | None, b: dict | None) -> float | None:
        return a["ips"] / b["ips"] if a and b else None

    default_job = by.get(("whole job: evaluate default --data", "float32"))
    t["evaluate_default_whole_job_x_seed_float32"] = default_job and default_job.get("x_seed")  # target >= 8
    t["best_vs_onnxruntime"] = ratio(best, ort_best)
    t["float32_vs_onnxruntime"] = ratio(f32, ort_best)
    t["best_pct_ceiling"] = best and ceiling and 100 * best["ips"] / ceiling
    t["float32_pct_ceiling"] = f32 and ceiling and 100 * f32["ips"] / ceiling
    t["best_vs_keras"] = ratio(best, keras)
    t["float32_vs_keras"] = ratio(f32, keras)
    t["vs_seed_loop"] = {v: r.get("x_seed") for v, r in ours.items()}
    t["whole_job_vs_seed"] = {
        v: by[("whole job: seed script", v)]["seconds"] / r["seconds"]
        for (lbl, v), r in by.items()
        if lbl == "whole job: mnist-tflite evaluate" and ("whole job: seed script", v) in by
    }
    return t


def table(rows: list[dict[str, Any]], show_sweep: bool = True) -> str:
    head = (
        "| measurement | variant | images/s (median) | spread (min–max) | µs/image | CPU µs/image "
        "| × seed | % ceiling | peak RSS (MB) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if r.get("group") == "sweep" and not show_sweep:
            continue
        if r.get("error"):
            lines.append(f"| {r['label']} | {r['variant']} | failed: {r['error'][:80]} ||||||| ")
            continue
        if "gmacs" in r:
            lines.append(
                f"| {r['label']} ({r['gmacs']:.1f} GMAC/s) | - | {r['ceiling_ips']:,.0f} | "
                f"{r['gmacs_min']:.1f}–{r['gmacs_max']:.1f} GMAC/s | {1e6 / r['ceiling_ips']:.1f} | | | "
                f"100 | {r['peak_rss_mb']:.0f} |"
            )
            continue
        lines.append(
            f"| {r['label']} | {r['variant']} | {r['ips']:,.0f} | {r['ips_min']:,.0f}–{r['ips_max']:,.0f} "
            f"| {r['us_per_image']:.1f} | {_fmt(r, 'cpu_us_per_image', '.1f')} | {_fmt(r, 'x_seed', '.2f')} "
            f"| {_fmt(r, 'pct_ceiling', '.0f')} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def compact_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: images/s per variant (columns) for each way of running the model."""
    ok = [r for r in rows if "ips" in r and r.get("group") != "sweep" and not r.get("error")]
    ort = [r for r in ok if r.get("group") == "onnxruntime"]
    best_ort = max(ort, key=lambda r: r["ips"]) if ort else None
    labels = list(dict.fromkeys(r["label"] for r in ok if r.get("group") != "onnxruntime"))
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in ok)]
    head = "| images/s (median; whole job: seconds) | " + " | ".join(variants) + " |"
    lines = [head, "|---|" + "---|" * len(variants)]
    for label in labels:
        cells = {r["variant"]: r for r in ok if r["label"] == label}
        lines.append(
            f"| {label} | "
            + " | ".join(
                _cell(cells[v], label.startswith("whole job")) if v in cells else "" for v in variants
            )
            + " |"
        )
    if best_ort:
        lines.append(
            f"| ONNX Runtime, best setting ({best_ort['label'][12:]}) | {best_ort['ips']:,.0f} |"
            + " |" * (len(variants) - 1)
        )
    gemm = next((r for r in rows if "gmacs" in r and not r.get("error")), None)
    if gemm:
        lines.append(
            f"| ceiling: float32 GEMM {gemm['gmacs']:.0f} GMAC/s ÷ MACs/image | "
            f"{gemm['ceiling_ips']:,.0f} |" + " |" * (len(variants) - 1)
        )
    return "\n".join(lines)


def _cell(row: dict[str, Any], whole_job: bool) -> str:
    value = f"{row['seconds']:.2f} s" if whole_job else f"{row['ips']:,.0f}"
    return value + (f" ({row['x_seed']:.1f}x)" if row.get("x_seed") else "")


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else ""
