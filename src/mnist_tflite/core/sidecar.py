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
import math
import os
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic
from mnist_tflite.core.data import PIXEL_SCALE
from mnist_tflite.core.errors import fail, first_line, os_error
from mnist_tflite.core.values import MAX_IMAGES, SEED_MAX

# --- the declared schema ------------------------------------------------------------
# The declared shape of a metadata sidecar, as data, and the check that applies it.
#
# ``SCHEMA`` maps a key (dotted for nested objects: ``normalization.pixel_scale``) to a
# :class:`Rule`: what the value must be, in words for the error message and as a predicate.
# Keys not listed are allowed (newer writers may add some); listed keys that are present must
# match. ``sha256`` is checked by ``check_hash`` below instead, so that
# ``--allow-modified`` can skip it.

_INT_LIMIT = 2**63


@dataclass(frozen=True)
class Rule:
    expected: str  # for the message: "a string", "an integer >= 0"...
    test: Callable[[Any], bool]
    required: bool = False


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -_INT_LIMIT < v < _INT_LIMIT


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _between(low: float, high: float, *, integer: bool = False) -> Callable[[Any], bool]:
    """A number (an integer if ``integer``) in ``[low, high]``: every field has a sane range."""
    return lambda v: (_int(v) if integer else _num(v)) and low <= v <= high


def _range_pair(v: Any) -> bool:
    return _list_of(_between(-1e6, 1e6), 2, 2)(v) and v[0] < v[1]


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


def _list_of(item: Callable[[Any], bool], low: int = 0, high: int = 10_000) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and low <= len(v) <= high and all(item(x) for x in v)


def _or_null(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def _str_values(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in string.hexdigits for c in v)


_DIM = _between(-1, 2**31 - 1, integer=True)  # -1: any size (a batch axis)
_TENSOR = {
    "": Rule("an object with dtype, shape, scale and zero_point", _obj),
    ".dtype": Rule("a dtype name such as 'int8'", _name),
    ".shape": Rule(
        "a list of 1 to 8 integers in -1..2**31-1", _list_of(_between(-1, 2**31 - 1, integer=True), 1, 8)
    ),
    ".scale": Rule("a number in [0, 1e6] (0: not quantized)", _between(0, 1e6)),
    ".zero_point": Rule("an integer in -2**31..2**31-1", _between(-(2**31), 2**31 - 1, integer=True)),
}

SCHEMA: dict[str, Rule] = {
    "format": Rule("the string 'mnist-tflite-metadata/1'", _str, required=True),
    "model": Rule("the model's file name (a string)", _str),
    "size_bytes": Rule("an integer in 0..2**31", _between(0, 2**31, integer=True)),
    "recipe": Rule("an object with the recipe's name and settings", _obj),
    "recipe.name": Rule("a recipe name (a non-empty string)", _name),
    "recipe.description": Rule("a string", _str),
    "recipe.optimizations": Rule("a list of strings", _list_of(_str)),
    "recipe.supported_types": Rule("a list of strings", _list_of(_str)),
    "recipe.supported_ops": Rule("a list of strings", _list_of(_str)),
    "recipe.inference_input_type": Rule("a dtype name (a string)", _str),
    "recipe.inference_output_type": Rule("a dtype name (a string)", _str),
    "recipe.needs_calibration": Rule("true or false", _bool),
    "recipe.training": Rule("a training method name (a string)", _str),
    "recipe.output_logits": Rule("true or false", _bool),
    "class_names": Rule("a list of 1 to 1,000 class names (strings)", _list_of(_name, 1, 1000)),
    "normalization": Rule("an object with pixel_scale, pixel_offset and polarity", _obj),
    "normalization.pixel_scale": Rule("a number in (0, 1]", lambda v: _between(0, 1)(v) and v > 0),
    "normalization.pixel_offset": Rule("a number in [-1, 1]", _between(-1, 1)),
    "normalization.input_range": Rule(
        "a list [low, high] of numbers in [-1e6, 1e6], low < high", _range_pair
    ),
    "normalization.layout": Rule("a string", _str),
    "normalization.polarity": Rule("a string such as 'white digit on black background'", _str),
    **{f"input{k}": v for k, v in _TENSOR.items()},
    **{f"output{k}": v for k, v in _TENSOR.items()},
    # informative: the runner reads the kind from the model itself (edge.infer._output_kind)
    "output_kind": Rule("'logits' or 'probabilities'", lambda v: v in ("logits", "probabilities")),
    "host_postprocess": Rule("'softmax' or 'none'", lambda v: v in ("softmax", "none")),
    "data_source": Rule("a string", _str),
    "calibration": Rule("null or an object with images, seed and from", _or_null(_obj)),
    "calibration.images": Rule(f"an integer in 0..{MAX_IMAGES:,}", _between(0, MAX_IMAGES, integer=True)),
    "calibration.seed": Rule(f"an integer in 0..{SEED_MAX}", _between(0, SEED_MAX, integer=True)),
    "versions": Rule("an object of package -> version strings", _str_values),
    "architecture": Rule("an architecture name (a string)", _str),
    "seed": Rule(f"an integer in 0..{SEED_MAX}", _between(0, SEED_MAX, integer=True)),
    "converted_from": Rule("a path (a string)", _str),
    "sparsity": Rule("a number in [0, 1]", lambda v: _num(v) and 0 <= v <= 1),
}


# What every command feeds a model: pixel / 255, white digit on black (edge.preprocess makes
# it, core.data.normalize too). A sidecar that states another normalization is refused by
# ``read`` rather than applied by some commands and ignored by others.
STANDARD_NORMALIZATION: dict[str, Any] = {
    "pixel_scale": PIXEL_SCALE,
    "pixel_offset": 0.0,
    "input_range": [0.0, 1.0],
    "polarity": "white digit on black background",
}


def normalization_problem(meta: dict[str, Any]) -> str | None:
    """Why the sidecar's normalization is not the one every command applies, or None."""
    norm = meta.get("normalization") or {}
    for key, standard in STANDARD_NORMALIZATION.items():
        if key not in norm:
            continue
        value = norm[key]
        if key == "polarity":
            same = str(value).lower().startswith("white")
        else:
            same = bool(np.allclose(value, standard, rtol=1e-6, atol=1e-12))
        if not same:
            return (
                f"metadata key 'normalization.{key}' is {found(value)}; expected {standard!r}: mnist-tflite "
                "feeds every model pixel/255 with a white digit on black (predict, evaluate and serve alike)"
            )
    return None


def found(value: Any) -> str:
    """A short description of a value for a message: ``int 5``, ``null``, ``list [1, 2]``."""
    if value is None:
        return "null"
    kind = {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    else:
        text = repr(value)
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


def _lookup(meta: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key; absent when a parent is absent or not an object."""
    node: Any = meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise a one-line error naming ``path``, the key, what was found and what was expected."""
    for key, rule in SCHEMA.items():
        present, value = _lookup(meta, key)
        if not present:
            if rule.required:
                raise fail(path, f"metadata sidecar has no {key!r}; expected {rule.expected}")
            continue
        if not rule.test(value):
            raise fail(path, f"metadata key {key!r} is {found(value)}; expected {rule.expected}")
    problem = normalization_problem(meta)
    if problem:
        raise fail(path, problem)


# --- reading and writing sidecars ----------------------------------------------------

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
        raise fail(path, f"unreadable metadata sidecar ({first_line(exc)}); expected {expected}") from None
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
