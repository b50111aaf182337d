"""``mnist-tflite predict --ray``: the same classification as the local runner, on Ray Data.

The pipeline: a directory listing (and the array files' row counts) made here becomes a
dataset of work units of at most ``--batch-size`` images each; ``map_batches`` hands the
units to :class:`ModelActor` actors, one per CPU of the cluster, each holding a
single-threaded :class:`~mnist_tflite.edge.predict.Classifier`. An actor reads its units
(image files, or row ranges of ``.npy``/IDX/Parquet arrays), preprocesses them with the
local runner's code (:mod:`mnist_tflite.edge.preprocess`) and classifies them, so the
answers are the local ones. Order is preserved; results are printed like the local
runner's, or written to one ``.parquet`` / ``.csv`` file.

The model travels to the actors as bytes (with its sidecar), so workers on other hosts need
no copy of it; the inputs must be readable at the same path on every node.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import sidecar
from mnist_tflite.core.errors import PROG, MnistTfliteError, fail

OUTPUT_SUFFIXES = (".parquet", ".csv")
TEMP_PREFIX = "mnist-tflite-ray"  # an actor's copy of the model: <prefix>-<pid>-*, swept when the pid is gone


def work_units(paths: list[Path], batch_size: int) -> Iterator[dict[str, Any]]:
    """Work units in input order: ``{"kind", "path", "paths", "start", "stop", "error"}``.

    Image files are grouped ``batch_size`` to a unit; an array file (``.npy``, IDX,
    Parquet) is cut into row ranges of ``batch_size``; an array file that cannot be read
    is a unit carrying its error (the local runner's message).
    """
    from mnist_tflite.edge import preprocess
    from mnist_tflite.edge.predict import expand_inputs

    pending: list[str] = []

    def unit(
        kind: str,
        path: str = "",
        paths: list[str] | None = None,
        start: int = 0,
        stop: int = 0,
        error: str = "",
    ) -> dict[str, Any]:
        return {
            "kind": kind,
            "path": path,
            "paths": paths or [],
            "start": start,
            "stop": stop,
            "error": error,
        }

    def flush() -> Iterator[dict[str, Any]]:
        if pending:
            yield unit("images", paths=list(pending))
            pending.clear()

    for p in expand_inputs(paths):
        if not preprocess.is_array_file(p):
            pending.append(str(p))
            if len(pending) >= batch_size:
                yield from flush()
            continue
        yield from flush()
        try:
            n = len(preprocess.open_array_file(p))
        except MnistTfliteError as exc:
            yield unit("error", path=str(p), error=str(exc))
            continue
        for start in range(0, n, batch_size):
            yield unit("array", path=str(p), start=start, stop=min(n, start + batch_size))
    yield from flush()


class ModelActor:
    """A Ray Data actor: one single-threaded classifier; a unit of work in, result rows out."""

    def __init__(
        self, model_bytes: bytes, sidecar_doc: dict[str, Any] | None, top_k: int, allow_modified: bool
    ) -> None:
        from mnist_tflite.core.procs import sweep_temp
        from mnist_tflite.edge.predict import Classifier

        sweep_temp(TEMP_PREFIX)  # the folders of actors that were killed
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}-{os.getpid()}-")
        path = Path(self._tmp.name) / "model.tflite"
        path.write_bytes(model_bytes)
        if sidecar_doc is not None:
            sidecar.write(path, {k: v for k, v in sidecar_doc.items() if k != "format"})
        self.clf = Classifier(path, allow_modified=allow_modified, num_threads=1)
        self.top_k = top_k
        self._arrays: dict[str, Any] = {}

    def _array(self, path: str) -> Any:
        from mnist_tflite.edge import preprocess

        if path not in self._arrays:
            if len(self._arrays) > 4:
                self._arrays.clear()
            self._arrays[path] = preprocess.open_array_file(path)
        return self._arrays[path]

    def _items(self, unit: dict[str, Any]) -> Iterator[tuple[str, np.ndarray | str]]:
        """(source, 28x28 image) or (source, problem), exactly as ``Classifier._items`` makes them."""
        from mnist_tflite.edge import preprocess

        if unit["kind"] == "error":
            yield unit["path"], unit["error"]
        elif unit["kind"] == "images":
            for path in unit["paths"]:
                try:
                    yield path, self.clf.preprocess(path)
                except MnistTfliteError as exc:
                    yield path, str(exc)
        else:
            raw = self._array(unit["path"])
            yield from preprocess.array_rows(raw, unit["path"], int(unit["start"]), int(unit["stop"]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items: list[tuple[str, np.ndarray | str]] = []
        for i in range(len(batch["kind"])):
            unit = {k: batch[k][i] for k in batch}
            unit["paths"] = list(unit["paths"])
            items.extend(self._items(unit))
        good = [(s, x) for s, x in items if not isinstance(x, str)]
        preds = iter(self.clf.classify(np.stack([x for _, x in good]), [s for s, _ in good]) if good else [])
        rows: dict[str, list[Any]] = {k: [] for k in result_columns(self.top_k)}
        for source, x in items:
            rows["file"].append(source)
            if isinstance(x, str):
                rows["label"].append("")
                rows["confidence"].append(float("nan"))
                rows["error"].append(x)
                for k in range(2, self.top_k + 1):
                    rows[f"label_{k}"].append("")
                    rows[f"probability_{k}"].append(float("nan"))
                continue
            p = next(preds)
            top = p.top(self.top_k)
            rows["label"].append(p.label)
            rows["confidence"].append(p.confidence)
            rows["error"].append("")
            for k in range(2, self.top_k + 1):
                name, prob = top[k - 1] if k - 1 < len(top) else ("", float("nan"))
                rows[f"label_{k}"].append(name)
                rows[f"probability_{k}"].append(prob)
        return {
            k: np.asarray(
                v, dtype=object if k in ("file", "label", "error") or k.startswith("label_") else np.float64
            )
            for k, v in rows.items()
        }


def result_columns(top_k: int) -> list[str]:
    cols = ["file", "label", "confidence", "error"]
    for k in range(2, top_k + 1):
        cols += [f"label_{k}", f"probability_{k}"]
    return cols


def predict_ray(
    model: Path,
    inputs: list[Path],
    *,
    ray: Any,
    top_k: int = 1,
    batch_size: int = 256,
    allow_modified: bool = False,
    actors: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Result rows in input order (``file``, ``label``, ``confidence``, ``error``, ``label_2``...).

    ``ray`` is an initialized Ray module (see ``cluster.connected``).

    Example:
        >>> with connected() as ray:
        ...     rows = list(predict_ray(Path("int8.tflite"), [Path("scans/")], ray=ray))
    """
    from mnist_tflite.edge.infer import read_model_bytes
    from mnist_tflite.edge.predict import Classifier
    from mnist_tflite.scale.cluster import cluster_cpus

    Classifier(model, allow_modified=allow_modified, num_threads=1)  # a bad model: one line, here
    data, sidecar_doc, _ = read_model_bytes(model, allow_modified=True)
    units = list(work_units(inputs, batch_size))
    if not units:
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal", "ray.data.context"):
        logging.getLogger(name).setLevel(logging.ERROR)
    n = max(1, min(actors or cluster_cpus(ray), len(units)))
    ds = ray.data.from_items(units, override_num_blocks=min(len(units), 4 * n))
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={
            "model_bytes": data,
            "sidecar_doc": sidecar_doc,
            "top_k": top_k,
            "allow_modified": allow_modified,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=1,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        cols = list(batch)
        for i in range(len(batch["file"])):
            yield {c: _plain(batch[c][i]) for c in cols}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def write_results(rows: Iterator[dict[str, Any]], path: Path, top_k: int) -> tuple[int, int]:
    """Write the rows to one ``.parquet`` or ``.csv`` file (atomically); returns (classified, failed)."""
    from mnist_tflite.core.atomic import atomic_path

    cols = result_columns(top_k)
    ok = failed = 0
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                for r in rows:
                    failed += bool(r["error"])
                    ok += not r["error"]
                    w.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [
                    (c, pa.float64() if c == "confidence" or c.startswith("probability_") else pa.string())
                    for c in cols
                ]
            )
            with pq.ParquetWriter(tmp, schema) as writer:
                chunk: list[dict[str, Any]] = []
                for r in rows:
                    failed += bool(r["error"])
                    ok += not r["error"]
                    chunk.append(r)
                    if len(chunk) >= 8192:
                        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                        chunk = []
                if chunk or not (ok + failed):
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return ok, failed


def cmd_predict_ray(args: argparse.Namespace) -> int:
    """``predict --ray``: exit 0 all classified, 1 some inputs failed, 2 usage or model error."""
    from mnist_tflite.scale.cluster import connected, require_ray

    require_ray()
    if args.show_input:
        raise MnistTfliteError("--show-input is not available with --ray")
    out = args.output
    if out is not None:
        check_output(out)  # before the job: a bad --output must not cost the whole run
    t0 = time.perf_counter()
    with connected(args.address, temp_prefixes=(TEMP_PREFIX,)) as ray:  # swept even after kill -9
        rows = predict_ray(
            args.model,
            list(args.inputs),
            ray=ray,
            top_k=args.top_k,
            batch_size=args.buffer_size,
            allow_modified=args.allow_modified,
        )
        if out is not None:
            ok, failed = write_results(_report_failures(rows), out, args.top_k)
        else:
            ok, failed = _print(rows, args)
    if not ok + failed:
        names = ", ".join(str(p) for p in args.inputs)
        raise MnistTfliteError(
            f"{names}: no input found; expected image files (PNG, JPEG, BMP, GIF, WebP, TIFF), "
            ".npy, IDX or Parquet files, or directories holding them"
        )
    if out is not None:
        print(
            f"wrote {ok + failed:,} results ({failed:,} failed) to {out} in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 1 if failed else 0


def check_output(out: Path) -> None:
    """Refuse an ``--output`` that could not be written: wrong type, a directory, a path under
    a file, a read-only place (one line, exit 2)."""
    from mnist_tflite.core.values import check_out_dir

    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise fail(out, f"unsupported --output type {out.suffix or '(none)'!r}; expected .parquet or .csv")
    if out.is_dir():
        raise fail(out, "--output is a directory; expected a file path such as results.parquet")
    if out.exists() or out.is_symlink():  # never replaced: it may be the user's (or a file of a run)
        raise fail(out, "--output already exists; expected a new file name (predict never replaces a file)")
    check_out_dir(out.parent)


def _report_failures(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for r in rows:
        if r["error"]:
            print(f"{PROG}: error: {r['error']}", file=sys.stderr)
        yield r


def _print(rows: Iterator[dict[str, Any]], args: argparse.Namespace) -> tuple[int, int]:
    """The local runner's output: one line per image, or one JSON document."""
    ok = failed = 0
    results = []
    for r in _report_failures(rows):
        if r["error"]:
            failed += 1
            if args.json:
                results.append({"file": r["file"], "error": r["error"]})
            continue
        ok += 1
        top = [(r["label"], r["confidence"])] + [
            (r[f"label_{k}"], r[f"probability_{k}"]) for k in range(2, args.top_k + 1) if r.get(f"label_{k}")
        ]
        if args.json:
            results.append(
                {
                    "file": r["file"],
                    "label": r["label"],
                    "confidence": round(r["confidence"], 6),
                    "top": [{"label": n, "probability": round(p, 6)} for n, p in top],
                }
            )
        else:
            nxt = ", ".join(f"{n} {p:.1%}" for n, p in top[1:])
            print(f"{r['file']}: {r['label']} ({r['confidence']:.1%})" + (f"  next: {nxt}" if nxt else ""))
    if args.json and ok + failed:
        doc = {"model": str(args.model), "classified": ok, "failed": failed}
        print(json.dumps({**doc, "results": results}, indent=2))
    return ok, failed
