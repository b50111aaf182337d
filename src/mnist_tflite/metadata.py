"""The sidecar ``<name>.json`` that travels with every ``.tflite`` this tool writes.

It records what a deployer needs (recipe, class labels, input normalization, input/output
scale and zero point, data source, versions) and the file's SHA-256, which ``predict`` and
``serve`` check: corrupted weights load and run silently in LiteRT and TFLM alike.
No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnist_tflite import atomic
from mnist_tflite.errors import fail, os_error
from mnist_tflite.sidecar_schema import SCHEMA, found, is_sha256, validate

FORMAT = "mnist-tflite-metadata/1"
MAX_SIDECAR_BYTES = 4 << 20  # ours are ~2 KB; a bound keeps /dev/zero or a huge file from hanging us

__all__ = ["FORMAT", "SCHEMA", "check_hash", "read", "sha256_bytes", "sidecar_path", "validate", "write"]


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``runs/demo/int8.tflite`` -> ``runs/demo/int8.json``."""
    return Path(model_path).with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pending_path(model_path: str | os.PathLike[str]) -> Path:
    """``runs/demo/int8.tflite`` -> ``runs/demo/.int8.tflite.writing``: exists while the pair is written."""
    model = Path(model_path)
    return model.with_name(f".{model.name}.writing")


@contextlib.contextmanager
def writing(model_path: str | os.PathLike[str]) -> Iterator[None]:
    """Mark a model and its sidecar as being written; a kill inside leaves the mark for ``read``.

    The writer replaces the sidecar, then the model, inside this block: any state a kill can
    leave (old pair, new sidecar with old model, new pair) carries the mark, so a reader says
    "incomplete write" instead of "modified", and never uses a model unchecked. A write that
    fails (rather than being killed) removes the mark unless it left a new sidecar beside the
    old model.
    """
    model = Path(model_path)
    marker = pending_path(model)
    try:
        marker.touch()  # empty: needs no free block, so a full disk fails on the files themselves
    except OSError as exc:
        raise os_error(exc, model) from None
    try:
        yield
    except BaseException:
        _settle_failed_write(model, marker)
        raise
    marker.unlink()


def _settle_failed_write(model: Path, marker: Path) -> None:
    sidecar = sidecar_path(model)
    try:
        if not model.exists():
            sidecar.unlink(missing_ok=True)  # it would vouch for a model that was never written
        elif sidecar.exists():
            recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("sha256")
            if recorded != sha256_bytes(model.read_bytes()):
                return  # a new sidecar beside the old model: keep the mark
        marker.unlink()
    except (OSError, ValueError, AttributeError):
        return


def read(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``model_path``, validated against ``SCHEMA``; None when there is none.

    A model without a sidecar is any MNIST-shaped ``.tflite`` from elsewhere; a sidecar
    that exists but is not what mnist-tflite writes is an error naming the file and key.
    """
    marker = pending_path(model_path)
    if marker.exists():
        raise fail(
            model_path,
            f"incomplete write: the process writing this model and its sidecar stopped before it "
            f"finished ({marker.name} is still there); write it again (or delete {marker.name} "
            "if you know the pair is whole)",
        )
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    expected = "JSON written by mnist-tflite"
    try:
        if not path.is_file():
            raise fail(path, f"not a regular file; expected {expected}")
        with open(path, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        raise fail(path, f"unreadable metadata sidecar ({exc.strerror}); expected {expected}") from None
    if len(raw) > MAX_SIDECAR_BYTES:
        raise fail(path, f"metadata sidecar larger than {MAX_SIDECAR_BYTES:,} bytes; expected {expected}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise fail(path, f"metadata sidecar nested too deeply to read; expected {expected}") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError; ints over 4,300 digits
        problem = str(exc).splitlines()[0][:200]
        raise fail(path, f"unreadable metadata sidecar ({problem}); expected {expected}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise fail(path, f'not an mnist-tflite metadata sidecar; expected "format": "{FORMAT}"')
    validate(meta, path)
    return meta


def write(model_path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    path = sidecar_path(model_path)
    atomic.write_json(path, {"format": FORMAT, **meta})
    return path


def check_hash(model_path: str | os.PathLike[str], data: bytes, meta: dict[str, Any] | None) -> bool:
    """True if ``meta`` vouches for exactly these bytes; raise if it does not.

    Returns False when there is no sidecar (a model from elsewhere: nothing to check). A
    sidecar without a valid ``sha256`` is an error: deleting the hash must not be a way
    round the check (``--allow-modified`` skips this function).
    """
    if meta is None:
        return False
    side = sidecar_path(model_path)
    recorded = meta.get("sha256")
    if not isinstance(recorded, str) or not is_sha256(recorded):
        what = "no sha256" if "sha256" not in meta else f"sha256 {found(recorded)}"
        raise fail(
            side,
            f"{what}; expected 64 hex digits, the SHA-256 of {Path(model_path).name} "
            "(pass --allow-modified to use the model unchecked)",
        )
    actual = sha256_bytes(data)
    if actual != recorded.lower():
        raise fail(
            model_path,
            f"SHA-256 {actual[:16]}... does not match {recorded[:16]}... recorded in "
            f"{side.name}: the model was modified or corrupted "
            "(pass --allow-modified to use it anyway)",
        )
    return True
