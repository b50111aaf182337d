"""Twenty array files whose rows go wrong one at a time: blank, NaN, null, 783 or 785 values.

Each file holds a few real MNIST digits around its bad rows, so an answer for the good rows
and one error line per bad row is what both ``predict`` and ``predict --ray`` must print.
Used by tests/test_scale.py and benchmarks/bench_ray_predict_parity.py.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _idx(images: np.ndarray, type_code: int, dtype: str) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    return bytes([0, 0, type_code, images.ndim]) + dims + images.astype(dtype).tobytes()


def _parquet(path: Path, rows: list, list_type: Callable | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(rows, type=list_type(pa) if list_type else None)
    pq.write_table(pa.table({"image": column}), path)


def write_bad_row_files(directory: Path, digits: np.ndarray) -> list[Path]:
    """Write the 20 files into ``directory``; ``digits``: at least 8 uint8 (28, 28) MNIST images."""
    d = np.asarray(digits[:8], dtype=np.uint8)
    flat = [x.reshape(-1).tolist() for x in d]
    as_float = d.astype(np.float32) / 255
    out: list[Path] = []

    def npy(name: str, a: np.ndarray) -> None:
        np.save(directory / name, a)
        out.append(directory / name)

    def raw(name: str, data: bytes) -> None:
        (directory / name).write_bytes(data)
        out.append(directory / name)

    def parquet(name: str, rows: list, list_type: Callable | None = None) -> None:
        _parquet(directory / name, rows, list_type)
        out.append(directory / name)

    blank = d.copy()
    blank[1] = 0
    npy("01-blank-row.npy", blank)
    white = d.copy()
    white[0] = 255
    npy("02-white-row.npy", white)
    nan = as_float.copy()
    nan[2, 14, 14] = np.nan
    npy("03-nan-pixel.npy", nan)
    inf = as_float.copy()
    inf[5] = np.inf
    npy("04-inf-row.npy", inf)
    mixed = (as_float * 255).astype(np.float64)
    mixed[0, 0, 0], mixed[3] = np.nan, 0.0
    npy("05-nan-and-blank-0-255.npy", mixed)
    npy("06-blank-row-channel-axis.npy", blank[..., None])
    raw("07-blank-row.idx", _idx(blank, 0x08, ">u1"))
    raw("08-blank-rows-idx3-ubyte.gz", gzip.compress(_idx(np.concatenate([blank, white]), 0x08, ">u1")))
    raw("09-nan-row-float.idx", _idx(nan, 0x0D, ">f4"))
    parquet("10-null-first.parquet", [None, *flat[:3]])
    parquet("11-783-values.parquet", [flat[0], flat[1][:783], flat[2]])
    parquet("12-785-values.parquet", [flat[0], [*flat[1], 0], flat[2]])
    parquet("13-null-value.parquet", [flat[0], [None, *flat[1][1:]], flat[2]])
    nested = [x.tolist() for x in d[:4]]
    nested[2] = nested[2][:27]
    parquet("14-nested-27-rows.parquet", nested)
    float_rows = [x.reshape(-1).tolist() for x in as_float[:4]]
    float_rows[1][100] = float("nan")
    parquet("15-nan-value.parquet", float_rows)
    parquet("16-blank-row.parquet", [flat[0], [0] * 784, flat[1]])
    parquet("17-all-null.parquet", [None, None], lambda pa: pa.list_(pa.uint8()))
    parquet("18-every-fault.parquet", [None, flat[0][:783], [*flat[1], 7], [0] * 784, float_rows[2], flat[3]])
    parquet("19-large-list-783.parquet", [flat[0], flat[1][:783]], lambda pa: pa.large_list(pa.int64()))
    parquet("20-fixed-size-null.parquet", [flat[0], None, flat[1]], lambda pa: pa.list_(pa.int64(), 784))
    return out
