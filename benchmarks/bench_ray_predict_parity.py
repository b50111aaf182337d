"""``predict --ray`` against local ``predict`` on 20 files with bad rows: the same answers?

The files (tests/bad_rows.py) hold blank, NaN, infinite and null rows and Parquet rows of 783,
785 or 756 values between real MNIST digits, as ``.npy``, IDX and Parquet. For each file and
each output form (text, ``--json``), ``mnist-tflite predict`` runs through ``cli.main`` once
locally and once with ``--ray``; stdout, stderr and the exit status must be identical. Ray is
started once for all 40 Ray runs (``cluster.connected`` is handed the running instance), so
the count is about answers, not start-up time.

Usage: ``PYTHONPATH=src python benchmarks/bench_ray_predict_parity.py``; prints a table and
writes ``benchmarks/results/ray_predict_parity.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.bad_rows

from mnist_tflite import cli  # noqa: E402
from mnist_tflite.core import data  # noqa: E402
from mnist_tflite.scale import cluster  # noqa: E402
from tests.bad_rows import write_bad_row_files  # noqa: E402

MODEL = ROOT / "tests" / "models" / "int8.tflite"
RESULTS = ROOT / "benchmarks" / "results" / "ray_predict_parity.json"


def _run(argv: list[str]) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return out.getvalue(), err.getvalue(), code


def main() -> int:
    ds = data.load("embedded")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, cluster.connected() as ray:
        files = write_bad_row_files(Path(tmp), ds.x_test)
        real = cluster.connected
        cluster.connected = lambda *a, **k: contextlib.nullcontext(ray)  # type: ignore[assignment]
        try:
            for path in files:
                for form in ("text", "json"):
                    argv = ["predict", str(MODEL), str(path), "--top-k", "2"] + (
                        ["--json"] if form == "json" else []
                    )
                    t0 = time.perf_counter()
                    local = _run([*argv, "--single"])  # --ray reads each picture as one digit
                    t1 = time.perf_counter()
                    remote = _run([*argv, "--ray"])
                    t2 = time.perf_counter()
                    rows.append(
                        {
                            "file": path.name,
                            "form": form,
                            "identical": local == remote,
                            "exit": [local[2], remote[2]],
                            "error_lines": local[1].count("\n"),
                            "local_s": round(t1 - t0, 3),
                            "ray_s": round(t2 - t1, 3),
                        }
                    )
        finally:
            cluster.connected = real  # type: ignore[assignment]
    same = sum(r["identical"] for r in rows)
    files_same = sum(all(r["identical"] for r in rows if r["file"] == p.name) for p in files)
    print(f"{'file':<32} {'form':<5} {'same':<5} {'exit':<6} {'errors':>6}")
    for r in rows:
        print(f"{r['file']:<32} {r['form']:<5} {r['identical']!s:<5} {r['exit']!s:<6} {r['error_lines']:>6}")
    print(
        f"\n{files_same}/{len(files)} files identical (text, JSON and exit status); {same}/{len(rows)} runs"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "files": len(files),
                "files_identical": files_same,
                "runs": len(rows),
                "runs_identical": same,
                "model": str(MODEL.relative_to(ROOT)),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if files_same == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
