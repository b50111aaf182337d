"""Parquet input: a column of 28x28 images, read so that one bad row fails alone.

``predict`` (local and ``--ray``) reads a Parquet file's ``image`` column (or its only
column): each row a list of 784 numbers, or 28 lists of 28. A null row, a row of 783 or 785
numbers or one holding nulls is an error for that row, named by its index; the other rows
are answered. Needs ``pyarrow`` (``pip install 'mnist-tflite[scale]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail, first_line

__all__ = ["PARQUET_SUFFIXES", "ParquetImages", "is_parquet", "read_parquet"]

PARQUET_SUFFIXES = (".parquet", ".pq")
PIXELS = 28 * 28
_EXPECTED = "expected 28x28 = 784 numbers"


def is_parquet(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


class ParquetImages:
    """The rows of a Parquet image column: ``images[i]`` is a (28, 28) array, or raises
    :class:`MnistTfliteError` saying what is wrong with row ``i``."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, problems: dict[int, str]) -> None:
        self._values, self._offsets, self._problems = values, offsets, problems

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        problem = self._problems.get(i)
        if problem:
            raise MnistTfliteError(problem)
        start = int(self._offsets[i])
        return self._values[start : start + PIXELS].reshape(28, 28)

    def problems(self) -> dict[int, str]:
        """Row index -> what is wrong with it, for the rows that cannot be read."""
        return dict(self._problems)


def read_parquet(path: str | os.PathLike[str]) -> ParquetImages:
    """A Parquet file's images, checked row by row.

    Raises:
        MnistTfliteError: the file cannot be read, has no image column, or the column does not
            hold lists of numbers (a problem of the whole file, not of a row).

    Example:
        >>> images = read_parquet("digits.parquet"); x = images[0]  # (28, 28)
    """
    pa, pc, pq = _pyarrow()
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise fail(path, f"not a readable Parquet file ({first_line(exc, 160)})") from None
    names = table.column_names
    name = "image" if "image" in names else names[0] if len(names) == 1 else None
    if name is None:
        raise fail(path, f"columns {names}; expected an 'image' column (or a single column) of 28x28 arrays")
    col = table.column(name).combine_chunks()
    if not _is_list(pa, col.type):
        raise fail(path, f"column {name!r} holds {col.type}, not lists; {_EXPECTED} per row")
    n = len(col)
    row_of = np.arange(n)
    has_null = ~_valid(col)
    null_rows = has_null.copy()
    while _is_list(pa, col.type):
        row_of = row_of[pc.list_parent_indices(col).to_numpy(zero_copy_only=False)]
        col = col.flatten()  # null lists have no values here: the row comes up short
        np.logical_or.at(has_null, row_of[~_valid(col)], True)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise fail(path, f"column {name!r} holds lists of {col.type}; {_EXPECTED} per row")
    values = col.fill_null(0).to_numpy(zero_copy_only=False)
    counts = np.bincount(row_of, minlength=n)
    offsets = (np.cumsum(counts) - counts).astype(np.int64)
    problems: dict[int, str] = {}
    for i in np.flatnonzero(null_rows):
        problems[int(i)] = f"null row; {_EXPECTED}"
    for i in np.flatnonzero(~null_rows & (counts != PIXELS)):
        problems[int(i)] = f"{counts[i]:,} numbers; {_EXPECTED}"
    for i in np.flatnonzero(~null_rows & (counts == PIXELS) & has_null):
        problems[int(i)] = f"holds nulls; {_EXPECTED}"
    return ParquetImages(values, offsets, problems)


def _pyarrow() -> tuple[Any, Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise MnistTfliteError(
            "reading Parquet needs the Python module 'pyarrow', which is not installed; "
            "install it with: pip install 'mnist-tflite[scale]'"
        ) from None
    return pa, pc, pq


def _is_list(pa: Any, t: Any) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _valid(col: Any) -> np.ndarray:
    return np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
