"""Notes under the report table: what the figures mean on this machine and for these recipes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def int8_note(rows: Sequence[dict[str, Any]], machine: dict[str, Any]) -> str | None:
    """One line: what int8 costs or buys against float32 on the CPU the run measured.

    Example:
        >>> int8_note(table_rows, {"cpu_flags": ["avx2", "fma"]})
        'int8 on this CPU (AVX2, no VNNI): 0.85x float32's batched throughput ...'
    """
    by = {r["name"]: r for r in rows if r.get("status") == "ok"}
    f32, i8 = by.get("float32"), by.get("int8")
    if not f32 or not i8 or not f32.get("throughput_ips") or not i8.get("throughput_ips"):
        return None
    flags = set(machine.get("cpu_flags") or ())
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else machine.get("machine", "?")
    cpu = f"{isa}, {'VNNI: ' + '/'.join(vnni) if vnni else 'no VNNI'}"
    speed = i8["throughput_ips"] / f32["throughput_ips"]
    size = f32["size_bytes"] / i8["size_bytes"] if f32.get("size_bytes") and i8.get("size_bytes") else None
    acc = (
        100 * (i8["accuracy"] - f32["accuracy"])
        if None not in (i8.get("accuracy"), f32.get("accuracy"))
        else None
    )
    verdict = "buys speed" if speed >= 1.1 else "costs speed" if speed <= 0.9 else "is about as fast"
    ips = f"{i8['throughput_ips']:,.0f} vs {f32['throughput_ips']:,.0f} img/s"
    parts = [f"{speed:.2f}x float32's batched throughput ({ips})"]
    if size:
        parts.append(f"{size:.1f}x smaller")
    if acc is not None:
        parts.append(f"{acc:+.2f} accuracy points")
    return f"int8 on this CPU ({cpu}) {verdict}: " + ", ".join(parts) + "."


def finetune_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What fine-tuned rows mean, from a run's rows: pruning shrinks only the zipped size.

    Returns:
        Notes for the report (none when no row was fine-tuned).
    """
    tuned = [r for r in rows if r.get("training") and r.get("status") == "ok"]
    if not tuned:
        return []
    notes = [
        f"{', '.join(r['name'] for r in tuned)}: fine-tuned from the Keras model (same seed and "
        "training split; 'fine-tune (s)' is model.fit in the tf_keras child), so 'agrees w/ Keras' "
        "compares with the model before fine-tuning."
    ]
    pruned = [r for r in tuned if r.get("training") == "prune"]
    base = next((r for r in rows if r.get("name") == "int8" and r.get("status") == "ok"), None)
    if pruned and base is not None:
        sizes = "; ".join(_size_phrase(r) for r in [*pruned, base])
        notes.append(
            f"pruning: {sizes}. Zeros are still stored and multiplied: pruning pays off only compressed "
            "(downloads, OTA updates, compressed storage) or with sparse kernels, which neither "
            "LiteRT's CPU path nor TFLM has for these int8 ops. The converter's EXPERIMENTAL_SPARSITY "
            "only stores weights sparsely and adds DENSIFY ops that rebuild them dense before the "
            "dense kernels run; XNNPACK refuses that graph and TFLM "
            "has no DENSIFY. So flash, arena and latency stay those of int8."
        )
    return notes


def _size_phrase(row: dict[str, Any]) -> str:
    zeros = f" ({100 * row['sparsity']:.0f} % zeros)" if row.get("sparsity") else ""
    return f"{row['name']}{zeros} {row['size_bytes']:,} bytes, zipped {row.get('zip_bytes', 0):,}"
