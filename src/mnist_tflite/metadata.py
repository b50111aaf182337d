"""The sidecar ``<name>.json`` that travels with every ``.tflite`` this tool writes.

It records what a deployer needs (recipe, class labels, input normalization, input/output
scale and zero point, data source, versions) and the file's SHA-256, which ``predict`` and
``serve`` check: corrupted weights load and run silently in LiteRT and TFLM alike.
No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mnist_tflite import atomic
from mnist_tflite.errors import fail

FORMAT = "mnist-tflite-metadata/1"


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``runs/demo/int8.tflite`` -> ``runs/demo/int8.json``."""
    return Path(model_path).with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``model_path``, or None when there is none (a model from elsewhere)."""
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"unreadable metadata sidecar ({exc}); expected JSON written by mnist-tflite"
        raise fail(path, problem) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise fail(path, f'not an mnist-tflite metadata sidecar; expected "format": "{FORMAT}"')
    return meta


def write(model_path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    path = sidecar_path(model_path)
    atomic.write_json(path, {"format": FORMAT, **meta})
    return path


def check_hash(model_path: str | os.PathLike[str], data: bytes, meta: dict[str, Any] | None) -> bool:
    """True if ``meta`` vouches for exactly these bytes; raise if it vouches for others.

    Returns False when there is no recorded hash (nothing to check against).
    """
    if not meta or "sha256" not in meta:
        return False
    actual = sha256_bytes(data)
    if actual != meta["sha256"]:
        raise fail(
            model_path,
            f"SHA-256 {actual[:16]}... does not match {meta['sha256'][:16]}... recorded in "
            f"{sidecar_path(model_path).name}: the model was modified or corrupted "
            "(pass --allow-modified to use it anyway)",
        )
    return True
