"""Check a model in TensorFlow Lite Micro: what TFLM lacks, the smallest arena, agreement.

Agreement with LiteRT is stated as a count of identical output rows ("9,963/10,000 rows
identical"), never as a blanket word. One rule decides the exit code of both ``run`` and
``export-micro --verify`` (``disagreement``): an integer output that differs from LiteRT's
builtin kernels by more than one quantization step in any row is a failure (exit 1, after
every file is written, so the report shows the counts).

Why one step is allowed: TFLM implements TFLite's reference integer arithmetic (double
rounding: SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT) exactly, while
LiteRT 2.3's builtin kernels round the last requantization differently on a few rows. An
int8 softmax output hid that (it saturates); int8 logits show it: about 0.4 % of rows
differ by one step in one logit, and a NumPy transcription of the reference arithmetic
agrees with TFLM on every row. A wrong kernel, arena or weight is off by far more.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail, plural
from mnist_tflite.edge.flatbuffer import ModelInfo, parse
from mnist_tflite.micro.tflm.interpreter import (
    ChildResult,
    map_in_children,
    recorded_total,
    run_batch,
    search_arena,
)

MAX_STEPS = 1  # TFLM vs LiteRT builtin kernels, integer outputs: see the module docstring
ARENA_MARGIN = 0.10  # CMSIS-NN and other optimized kernels ask for scratch the reference ones do not
ARENA_ROUND = 1024
MARGIN_TEXT = f"+{ARENA_MARGIN:.0%} for optimized kernels' scratch buffers, rounded up to {ARENA_ROUND} bytes"


def load(path: str | os.PathLike[str], *, allow_modified: bool = False) -> tuple[bytes, ModelInfo]:
    """Read, hash-check (against the sidecar) and parse a ``.tflite`` file."""
    from mnist_tflite.edge.infer import read_model_bytes

    data, _, _ = read_model_bytes(path, allow_modified=allow_modified)
    return data, parse(data, path)


def int8_problem(info: ModelInfo) -> str | None:
    """Why the model is not fully int8 (None if it is): export-micro's default contract."""
    floats = info.float_tensors()
    if info.input.dtype == "INT8" and info.output.dtype == "INT8" and not floats:
        return None
    kinds = sorted({t.dtype.lower() for t in floats})
    return (
        f"not a fully int8 model: input {info.input.dtype.lower()}, output {info.output.dtype.lower()}, "
        f"{len(floats)} {'/'.join(kinds) or 'float'} tensors; export-micro expects int8 in, int8 out and "
        "int8 weights (recipe int8); pass --allow-float to export it anyway"
    )


def tflm_problem(res: ChildResult, info: ModelInfo, data: bytes | None = None) -> str:
    """One line naming the op or type TFLM lacks, from what the TFLM child printed or died of."""
    text = res.stderr
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)'", text)
    if missing:
        return f"TFLM has no kernel for op {missing.group(1)} (model ops: {', '.join(info.ops)})"
    custom = re.search(r"Didn't find op for custom opcode '([^']+)'", text)
    if custom:
        return f"TFLM has no kernel for custom op {custom.group(1)!r}"
    node = re.search(r"Node (\S+) \(number (\d+)\) failed to (prepare|invoke)", text)
    if node:
        op, index, stage = node.group(1), int(node.group(2)), node.group(3)
        before = [ln.strip() for ln in text[: node.start()].splitlines() if ln.strip()]
        why = re.sub(r"^\S+\.cc(:\d+)?\s*", "", before[-1]) if before else "no reason given"
        types = info.node_input_types(index)
        if "FLOAT16" in types:
            return (
                f"TFLM lacks float16 support: {op} (node {index}) gets a float16 input; use the int8 recipe"
            )
        if "Hybrid" in why:
            return (
                f"TFLM does not run hybrid (dynamic-range) models: {op} (node {index}) mixes int8 "
                "weights with float32 activations; use the int8 recipe"
            )
        return f"TFLM cannot {stage} {op} (node {index}, inputs {'/'.join(types).lower()}): {why}"
    if res.signal:
        from mnist_tflite.edge.probe import probe

        litert = probe(data) if data else None
        if not data or litert:
            extra = f"; LiteRT rejects it too: {litert}" if litert else ""
            return f"corrupt model: the TFLM interpreter crashed ({res.signal}) while loading it{extra}"
        return (
            f"the TFLM interpreter crashed ({res.signal}) while loading it, though LiteRT loads and "
            "runs it: a model this TFLM build cannot run, not a damaged file"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"TFLM cannot run it: {lines[-1] if lines else res.error}"


def _arena_report(res: ChildResult) -> dict[str, Any]:
    low = res.value["min_bytes"]
    steps = res.value["steps"]
    return {
        "min_bytes": low,
        "recommended_bytes": math.ceil(low * (1 + ARENA_MARGIN) / ARENA_ROUND) * ARENA_ROUND,
        "margin": MARGIN_TEXT,
        "search": {
            "method": "bisection on [0, cap]: a fresh TFLM interpreter allocates and invokes at each size",
            "probes": len(steps),
            "last_failing_bytes": max((s for s, ok in steps if not ok), default=0),
            "recorded_total_bytes": recorded_total(res.stderr),
            "steps": [{"bytes": s, "ok": ok} for s, ok in steps],
        },
        "host": "measured on a 64-bit host; 32-bit MCUs need slightly less (smaller pointers)",
    }


def measure_arena(data: bytes, info: ModelInfo, path: object) -> dict[str, Any]:
    """The smallest TFLM arena (exact, by bisection) and the size to allocate; raises if TFLM can't."""
    res = map_in_children(search_arena, [(data,)])[0]
    if not res.ok:
        raise fail(path, tflm_problem(res, info, data))
    return _arena_report(res)


def _compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {
        "rows_differing": int((diff.max(axis=1) > 0).sum()),
        "predictions_differing": int((a.argmax(axis=1) != b.argmax(axis=1)).sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,  # quantization steps for int outputs
    }


def verify(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    arena_bytes: int,
    allow_modified: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every image through TFLM and through LiteRT (builtin kernels and XNNPACK); compare.

    Args:
        path: the ``.tflite`` model.
        images: uint8 (N, 28, 28); labels: (N,).
        arena_bytes: the arena TFLM gets (the exported size, so the check proves it is enough).
        workers: TFLM children running in parallel (default: one per core).
        log: where progress lines go (every 10 % or 5 s; the full set takes 13-50 s).

    Returns:
        Accuracy, TFLM seconds, and for each LiteRT path the rows, predictions that differ
        and the largest difference (in output quantization steps for int8).

    Example:
        >>> verify("int8.tflite", ds.x_test, ds.y_test, arena_bytes=33792)["vs_litert_builtin"]
    """
    from mnist_tflite.core.data import normalize
    from mnist_tflite.edge.infer import TfliteModel

    x = normalize(images)
    builtin = TfliteModel(path, kernels="builtin", allow_modified=allow_modified)
    xnnpack = TfliteModel(path, kernels="default", allow_modified=allow_modified)
    data, info = load(path, allow_modified=allow_modified)
    q = builtin.quantize_input(x)  # both runtimes get the very same input tensor
    workers = max(1, min(workers or os.cpu_count() or 1, len(q)))
    t = time.perf_counter()
    results = map_in_children(
        run_batch,
        [(data, arena_bytes, c) for c in np.array_split(q, workers)],
        progress=_progress_lines(len(q), log) if log else None,
    )
    seconds = time.perf_counter() - t
    for res in results:
        if not res.ok:
            raise fail(path, tflm_problem(res, info, data))
    tflm = np.concatenate([r.value for r in results])
    ref_builtin, ref_xnnpack = builtin.run_raw(x), xnnpack.run_raw(x)
    labels = np.asarray(labels)
    return {
        "images": len(x),
        "accuracy": float((tflm.argmax(axis=1) == labels).mean()),
        "litert_accuracy": float((ref_xnnpack.argmax(axis=1) == labels).mean()),
        "output_dtype": tflm.dtype.name,
        "arena_bytes": arena_bytes,
        "tflm_seconds": seconds,
        "workers": workers,
        "vs_litert_builtin": _compare(tflm, ref_builtin),
        "vs_litert_xnnpack": _compare(tflm, ref_xnnpack),
    }


def _progress_lines(total: int, log: Callable[[str], None]) -> Callable[[int], None]:
    """A ``progress`` callback that logs a line at every 10 % step, or after 5 s of silence."""
    start = last_time = time.monotonic()
    last_step = 0

    def report(done: int) -> None:
        nonlocal last_time, last_step
        now, step = time.monotonic(), 10 * done // max(total, 1)
        if done < total and (step > last_step or now - last_time >= 5.0):
            pct, secs = 100 * done / total, now - start
            log(f"      TFLM check: {done:,}/{total:,} images ({pct:.0f} %), {secs:.0f} s")
            last_time, last_step = now, step

    return report


def images_phrase(v: dict[str, Any]) -> str:
    """``"10,000 test images"`` or ``"200 of 10,000 test images"`` when a subset was checked."""
    n, total = v["images"], v.get("of_images") or v["images"]
    return f"{n:,} of {total:,} test images" if n < total else f"{n:,} test images"


def disagreement(v: dict[str, Any] | None) -> str | None:
    """The exit rule of ``run`` and ``export-micro``: why TFLM disagrees with LiteRT, or None.

    Integer outputs must match LiteRT's builtin kernels within one quantization step in every
    row (see the module docstring); float outputs may differ in the last bits (summation
    order) and never fail.
    """
    if not v or not v["output_dtype"].startswith(("int", "uint")):
        return None
    b = v["vs_litert_builtin"]
    if b["max_abs_diff"] <= MAX_STEPS:
        return None
    return (
        f"TFLM and LiteRT's builtin kernels differ by up to {b['max_abs_diff']:g} steps "
        f"({b['rows_differing']:,} of {v['images']:,} {v['output_dtype']} output rows differ); "
        f"expected at most {MAX_STEPS} step"
    )


def first_disagreement(checked: Mapping[object, dict[str, Any] | None]) -> str | None:
    """The exit rule of ``run`` and ``export-micro`` over their models: ``FILE: why`` or None.

    ``checked`` maps each model file to its verification (or None when it was not checked);
    the first that ``disagreement`` fails is named.
    """
    for path, v in checked.items():
        problem = disagreement(v)
        if problem:
            return f"{path}: {problem}"
    return None


def verification_line(name: str, v: dict[str, Any]) -> str:
    """One line for a report: TFLM accuracy and agreement with both LiteRT paths, as counts."""
    b, x, n = v["vs_litert_builtin"], v["vs_litert_xnnpack"], v["images"]
    integer = v["output_dtype"].startswith(("int", "uint"))

    def most(d: float) -> str:  # "1 step", "2 steps"; float outputs differ by a plain number
        return plural(float(d), "step") if integer else f"{d:g}"

    differ = (
        f" ({b['rows_differing']:,} differ by at most {most(b['max_abs_diff'])}, "
        f"{plural(b['predictions_differing'], 'prediction')})"
        if b["rows_differing"]
        else ""
    )
    return (
        f"{name} in TFLM: {100 * v['accuracy']:.2f} % on {images_phrase(v)} ({v['tflm_seconds']:.1f} s); "
        f"vs LiteRT builtin kernels: {n - b['rows_differing']:,}/{n:,} output rows identical{differ}; "
        f"vs LiteRT XNNPACK: {plural(x['rows_differing'], 'row')} differ (max {most(x['max_abs_diff'])}), "
        f"{plural(x['predictions_differing'], 'prediction')} differ"
    )


def deployer_columns(
    rows: Sequence[Any],
    images: np.ndarray,
    labels: np.ndarray,
    log: Callable[[str], None] = print,
    verify_name: str = "int8",
    of_images: int | None = None,
) -> dict[str, Any]:
    """Add flash_bytes, arena_bytes, macs and ops to each evaluated row; TFLM-verify the int8 one.

    Args:
        rows: ``evaluate.VariantResult`` rows; those with status ok and a path get the columns
            in ``row.extra`` (``arena_bytes`` only where TFLM runs the model).
        images: uint8 test images (N, 28, 28); labels: (N,).
        verify_name: the variant run through TFLM on ``images`` (else the first fully int8 one).
        of_images: the size of the test set ``images`` was cut from (for "200 of 10,000").

    Returns:
        ``{"variants": {name: {"arena": ...} or {"problem": ...}}, "verification": {...}, "notes": [...]}``
    """
    report: dict[str, Any] = {"variants": {}, "verification": {}, "notes": []}
    items = []
    for row in rows:
        if row.status != "ok" or not row.path:
            continue
        try:
            data, info = load(row.path)
        except MnistTfliteError as exc:
            report["variants"][row.name] = {"problem": str(exc)}
            continue
        row.extra.update(flash_bytes=len(data), macs=info.macs, ops=info.ops)
        items.append((row, data, info))
    t = time.perf_counter()
    for (row, data, info), res in zip(
        items, map_in_children(search_arena, [(d,) for _, d, _ in items]), strict=True
    ):
        if res.ok:
            report["variants"][row.name] = {"arena": _arena_report(res)}
            row.extra["arena_bytes"] = res.value["min_bytes"]
        else:
            problem = tflm_problem(res, info, data)
            report["variants"][row.name] = {"problem": problem}
            report["notes"].append(f"{row.name}: not in TFLM: {problem}")
            log(f"      {row.name:<10} not in TFLM: {problem}")
    log(f"      TFLM arena search for {len(items)} variants: {time.perf_counter() - t:.1f} s")
    runnable = [(row, info) for row, _, info in items if "arena_bytes" in row.extra]
    chosen = next((row for row, _ in runnable if row.name == verify_name), None) or next(
        (row for row, info in runnable if int8_problem(info) is None), None
    )
    if chosen is not None:
        _verify_in_tflm(chosen, report, images, labels, log, of_images)
    report["notes"].append(
        "flash = model bytes; TFLM arena = the smallest tensor arena in which the TFLM interpreter "
        f"allocates and runs the model (bisection, 64-bit host); export-micro adds {MARGIN_TEXT[1:]}"
    )
    return report


def _verify_in_tflm(
    chosen: Any,
    report: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    log: Callable[[str], None],
    of_images: int | None = None,
) -> None:
    """Run one variant through TFLM on the test images and record how its rows compare with LiteRT."""
    arena = report["variants"][chosen.name]["arena"]["recommended_bytes"]
    try:
        v = verify(chosen.path, images, labels, arena_bytes=arena, log=log)
    except MnistTfliteError as exc:
        report["notes"].append(f"{chosen.name}: TFLM check failed: {exc}")
        log(f"      {chosen.name:<10} TFLM check failed: {exc}")
        return
    v["of_images"] = of_images or v["images"]
    report["verification"][chosen.name] = v
    chosen.extra["tflm_accuracy"] = v["accuracy"]
    chosen.extra["tflm_images"] = v["images"]
    chosen.extra["tflm_check"] = (
        f"{100 * v['accuracy']:.2f} % on {images_phrase(v).removesuffix(' test images')}; "
        f"{v['images'] - v['vs_litert_builtin']['rows_differing']:,}/{v['images']:,} rows = LiteRT"
    )
    report["notes"].append(verification_line(chosen.name, v))
    log(f"      {verification_line(chosen.name, v)}")
