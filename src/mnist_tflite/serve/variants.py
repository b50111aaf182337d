"""The models ``serve`` answers with: one ``.tflite``, or every variant of a run folder.

In a run folder, a variant that cannot be used (bad model, bad or tampered sidecar) is
skipped with a logged one-line reason and listed as unavailable; the others are served.
``report.json`` (or ``report.md``) adds each variant's figures and the page's table.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.edge.infer import TfliteModel

__all__ = ["PREFERRED_ORDER", "Variant", "load_variants"]

LOG = logging.getLogger("mnist_tflite.serve")
PREFERRED_ORDER = ("float32", "float16", "dynamic", "int8", "int16x8")
VARIANT_KEYS = ("recipe", "accuracy", "agreement", "max_prob_diff", "latency_us", "size_ratio")


@dataclass
class Variant:
    """One served model. ``TfliteModel`` is thread-safe: each call borrows an interpreter
    from the model's pool (LiteRT interpreters themselves are not)."""

    name: str
    model: TfliteModel
    info: dict[str, Any]


def _report_rows(run_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """report.json (or report.md) of a run folder -> per-variant figures and a display table.

    An unreadable report is logged and shown as such; the models are served without figures.
    """
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    if json_path.is_file():
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
            rows = doc.get("variants") or []
            rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("name"), str)]
            from mnist_tflite.report.tables import table_cells

            headers, table = table_cells(rows)
        except (
            OSError,
            UnicodeDecodeError,
            ValueError,
            TypeError,
            AttributeError,
            KeyError,
            RecursionError,
        ) as exc:
            problem = (
                f"unreadable report ({type(exc).__name__}: {str(exc)[:200]}); serving the models without it"
            )
            LOG.warning("%s: %s", json_path, problem)
            return {}, {"source": json_path.name, "error": problem}
        report = {"source": json_path.name, "headers": headers, "rows": table}
        return {r["name"]: r for r in rows}, report
    if md_path.is_file():
        return {}, {"source": md_path.name, "markdown": md_path.read_text(encoding="utf-8", errors="replace")}
    return {}, None


def _try_once(model: TfliteModel, path: Path) -> None:
    """One inference at start: a model that fails on every request is refused here, not per request.

    A model can pass every static check and still not run: an output ``shape_signature``
    that disagrees with its shape, say, or a normalization that makes every output NaN.
    """
    stroke = np.zeros((1, 28, 28), np.float32)
    stroke[0, 4:24, 13:16] = 1.0  # a "1"
    try:
        probs = model.predict_proba(stroke)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise fail(path, f"a test inference fails ({type(exc).__name__}: {str(exc)[:160]})") from None
    expected = (1, len(model.class_names))
    if probs.shape != expected or not np.all(np.isfinite(probs)):
        got = f"shape {list(probs.shape)}" if probs.shape != expected else "values that are not finite"
        raise fail(
            path, f"a test inference gives {got}; expected {len(model.class_names)} finite probabilities"
        )


def _load_variant(path: Path, row: dict[str, Any], allow_modified: bool) -> Variant:
    # a pool of one single-threaded interpreter per core: concurrent requests run side by side
    model = TfliteModel(path, num_threads=os.cpu_count(), allow_modified=allow_modified)
    _try_once(model, path)
    desc = model.describe()
    info = {
        "name": path.stem,
        "file": path.name,
        "size_bytes": model.size_bytes,
        "input_dtype": desc["input"]["dtype"],
        "output_dtype": desc["output"]["dtype"],
        "class_names": [str(c) for c in model.class_names],
        **{k: row.get(k) for k in VARIANT_KEYS},
    }
    info["recipe"] = desc["recipe"] or info["recipe"]
    json.dumps(info)  # /api/models must be able to say it
    return Variant(path.stem, model, info)


def load_variants(
    target: Path, allow_modified: bool
) -> tuple[dict[str, Variant], list[dict[str, str]], dict[str, Any] | None]:
    """A .tflite file or a run folder -> loaded variants (by name), skipped ones, report table.

    In a run folder, a variant that cannot be used (bad model, bad or tampered sidecar) is
    skipped with a logged one-line reason and listed as unavailable; the others are served.
    """
    if not target.exists():
        raise fail(target, "no such file or directory; expected a .tflite model or a run folder")
    if target.is_dir():
        figures, report = _report_rows(target)
        paths = sorted(target.glob("*.tflite"))
        rank = {n: i for i, n in enumerate(list(figures) + list(PREFERRED_ORDER))}
        paths.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
        if not paths:
            raise fail(
                target, "no .tflite files in this folder; expected a run folder from `mnist-tflite run`"
            )
    else:
        figures, report, paths = {}, None, [target]
    variants: dict[str, Variant] = {}
    unavailable: list[dict[str, str]] = []
    for path in paths:
        row = figures.get(path.stem)
        try:
            variants[path.stem] = _load_variant(path, row if isinstance(row, dict) else {}, allow_modified)
        except Exception as exc:
            if not target.is_dir():
                if isinstance(exc, MnistTfliteError):
                    raise
                raise fail(path, f"unusable model or sidecar ({type(exc).__name__}: {exc})") from None
            problem = (
                str(exc)
                if isinstance(exc, MnistTfliteError)
                else f"{path.stem}.json or the model is unusable ({type(exc).__name__}: {exc})"
            )
            # file names only: the page and the API never show server paths
            problem = " ".join(problem.replace(str(path.parent) + os.sep, "").split())[:300]
            LOG.warning("skipping %s: %s", path.name, problem)
            unavailable.append({"name": path.stem, "error": problem})
    if not variants:
        problems = "; ".join(f"{u['name']}: {u['error']}" for u in unavailable)
        raise fail(target, f"no model in this folder could be loaded ({problems})")
    return variants, unavailable, report
