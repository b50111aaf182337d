"""Measure a ``.tflite`` variant: accuracy, size, agreement with a reference, latency, throughput.

No TensorFlow: the reference probabilities are passed in (computed once from Keras by the
pipeline, or from another ``.tflite`` by the ``evaluate`` command).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mnist_tflite.core.data import normalize
from mnist_tflite.core.errors import MnistTfliteError, fail, printable
from mnist_tflite.core.sidecar import sidecar_path
from mnist_tflite.edge.infer import TfliteModel

LATENCY_SAMPLES = 200


@dataclass
class VariantResult:
    """One row of the comparison table. ``status`` is ``ok`` or ``failed`` (with ``error``)."""

    name: str
    path: str | None = None
    status: str = "ok"
    error: str | None = None
    recipe: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    agreement: float | None = None  # top-1 agreement with the reference (Keras) model
    max_prob_diff: float | None = None  # largest |p - p_ref| over all images and classes
    latency_us: float | None = None  # batch 1, median
    latency_us_p90: float | None = None
    throughput_ips: float | None = None  # batched, images per second
    input_dtype: str | None = None
    output_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def batch1_latency_us(
    model_path: str | os.PathLike[str], x: np.ndarray, samples: int, **kw: Any
) -> tuple[float, float]:
    """Median and p90 wall time of one ``invoke`` on one image (a fresh batch-1 interpreter)."""
    single = TfliteModel(model_path, batch_size=1, **kw)
    n = min(samples, len(x))
    times = np.empty(n)
    single.predict_proba(x[:1])  # warm-up: first invoke allocates and packs weights
    for i in range(n):
        t = time.perf_counter()
        single.predict_proba(x[i : i + 1])
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6), float(np.percentile(times, 90) * 1e6)


def evaluate_model(
    model_path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    reference_probs: np.ndarray | None = None,
    name: str | None = None,
    latency_samples: int = LATENCY_SAMPLES,
    allow_modified: bool = False,
    class_names: Sequence[str] | None = None,
) -> tuple[VariantResult, np.ndarray]:
    """Evaluate one model on uint8 images (N, 28, 28); returns the row and its probabilities.

    ``class_names`` are the data's: a model whose sidecar names other classes is refused
    (its accuracy would count matching indices of different things).

    Example:
        >>> row, probs = evaluate_model("int8.tflite", ds.x_test, ds.y_test)
    """
    x = normalize(images)
    model = TfliteModel(model_path, allow_modified=allow_modified)
    _check_classes(model, class_names)
    model.predict_proba(x[:1])  # warm-up outside the timed pass
    t = time.perf_counter()
    probs = model.predict_proba(x)
    seconds = time.perf_counter() - t
    pred = probs.argmax(axis=1)
    row = VariantResult(
        name=name or model.path.stem,
        path=str(model_path),
        recipe=(model.metadata or {}).get("recipe", {}).get("name"),
        size_bytes=model.size_bytes,
        accuracy=float((pred == labels).mean()),
        throughput_ips=float(len(x) / seconds) if seconds > 0 else None,
        input_dtype=model.input.dtype.name,
        output_dtype=model.output.dtype.name,
    )
    if reference_probs is not None:
        row.agreement = float((pred == reference_probs.argmax(axis=1)).mean())
        row.max_prob_diff = float(np.abs(probs - reference_probs).max())
    if latency_samples:
        row.latency_us, row.latency_us_p90 = batch1_latency_us(
            model_path, x, latency_samples, allow_modified=allow_modified
        )
    return row, probs


def _check_classes(model: TfliteModel, class_names: Sequence[str] | None) -> None:
    stated = (model.metadata or {}).get("class_names")
    if class_names is None or stated is None or list(stated) == list(class_names):
        return
    raise fail(
        sidecar_path(model.path),
        f"class_names {_names(stated)} are not the data's {_names(class_names)}; "
        "evaluate a model on data of the classes it was trained on",
    )


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(printable(n) for n in list(names)[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}]"


def compare_models(
    paths: Sequence[str | os.PathLike[str]],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    reference: str | os.PathLike[str] | None = None,
    latency_samples: int = LATENCY_SAMPLES,
    allow_modified: bool = False,
    class_names: Sequence[str] | None = None,
) -> list[VariantResult]:
    """``mnist-tflite evaluate``: several models, each compared with a reference ``.tflite``.

    Args:
        paths: the models, evaluated in order.
        reference: whose answers the agreement columns compare with (default: the first model;
            without TensorFlow there is no Keras model to compare with).
        class_names: the data's classes; a model whose sidecar names others is refused.

    Example:
        >>> rows = compare_models(["float32.tflite", "int8.tflite"], ds.x_test, ds.y_test)
    """
    if latency_samples < 0:
        raise MnistTfliteError(f"--latency-samples must be >= 0, received: {latency_samples}")
    ref_probs = None
    if reference is not None:
        _, ref_probs = evaluate_model(
            reference,
            images,
            labels,
            latency_samples=0,
            allow_modified=allow_modified,
            class_names=class_names,
        )
    rows = []
    for path in paths:
        row, probs = evaluate_model(
            path,
            images,
            labels,
            reference_probs=ref_probs,
            latency_samples=latency_samples,
            allow_modified=allow_modified,
            class_names=class_names,
        )
        if ref_probs is None:  # the first model is the reference
            ref_probs = probs
            row.agreement, row.max_prob_diff = 1.0, 0.0
        rows.append(row)
    return rows
