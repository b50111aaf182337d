"""What ``compile`` prints: the summary of compile.json as text, and the exit rule's count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mnist_tflite.micro.aot import alltargets, targets, wasm
from mnist_tflite.micro.aot.build import NOT_MEASURED


def differing_rows(summary: Mapping[str, Any]) -> int:
    v = summary.get("verification") or {}
    return sum(int(part.get("rows_differing", 0)) for part in v.values() if isinstance(part, dict))


def _kb(n: int | None) -> str:
    return "?" if n is None else f"{n:,} bytes ({n / 1024:.1f} KB)"


def summary_text(s: Mapping[str, Any], out: object = None) -> str:
    """What ``compile`` prints (without --json)."""
    if s["target"] == alltargets.ALL:
        return alltargets.summary_text(s, out)
    mem, flash = s["memory"], s.get("flash", {})
    t = targets.get(s["target"]) if s["target"] in targets.NAMES else targets.get("cortex-m4")
    core = s.get(t.key, {}) if t.is_arm else s.get("cortex_m4", {})
    label = f"{t.core if t.is_arm else 'Cortex-M4':<9}"
    lines = [f"{s['name']}: {s['model']} -> {out or ''} (target {s['target']}, output {s['output']['kind']})"]
    for layer in s["layers"]:
        lines.append(
            f"  {layer['kernel']:<12} {layer['ops']:<20} {'x'.join(map(str, layer['in']))} -> "
            f"{'x'.join(map(str, layer['out']))}  {layer['macs_computed']:,} MACs"
        )
    if s["folded"]:
        lines.append(
            "  folded at compile time: " + ", ".join(f"{f['op']} (node {f['node']})" for f in s["folded"])
        )
    if "code_bytes" in flash:
        lines.append(
            f"  code      {_kb(flash['code_bytes'])} runtime and kernels; "
            f"model data {_kb(flash['model_data_bytes'])}"
        )
    elif flash.get("host_code_bytes") is not None:
        lines.append(
            f"  code      {_kb(flash['host_code_bytes'])} on this computer (Cortex-M4: {NOT_MEASURED})"
        )
    lines += wasm.summary_lines(s)
    ram = mem.get("static_ram_bytes")
    lines.append(
        f"  RAM       activation buffer {_kb(mem['arena_bytes'])}"
        + (f" + stack {mem['stack_bytes']:,} bytes = {_kb(ram)} static RAM" if ram is not None else "")
        + (", rows streamed (--ram-optimized)" if s.get("ram_optimized") else "")
    )
    if "instructions_per_inference" in core:
        lines.append(
            f"  {label} {core['instructions_per_inference']:,} instructions per inference "
            f"({core['times_bound']}x the bound of {core['bound_instructions']:,}: {core['bound_rule']}; "
            f"{core['kernels']} kernels, QEMU {core['board']})"
        )
    elif core.get("not_measured") == "--target host":
        lines.append(f"  {label} not measured (built for this computer: --target host)")
    else:
        lines.append(f"  {label} {core.get('not_measured', NOT_MEASURED)}")
    for part in (s.get("verification") or {}).values():
        if not isinstance(part, dict):
            continue
        acc = f"{100 * part['accuracy']:.2f} %" if part.get("accuracy") is not None else "?"
        if "rows_identical" in part:
            lines.append(
                f"  vs TFLM   {part['rows_identical']:,}/{part['images']:,} rows identical "
                f"({part['program']}), accuracy {acc}"
            )
        else:
            lines.append(
                f"  accuracy  {acc} on {part['images']:,} test images ({part['program']}); "
                f"TFLM comparison {part['vs_tflm']}"
            )
    return "\n".join(lines)
