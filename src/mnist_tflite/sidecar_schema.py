"""The declared shape of a metadata sidecar, as data, and the check that applies it.

``SCHEMA`` maps a key (dotted for nested objects: ``normalization.pixel_scale``) to a
:class:`Rule`: what the value must be, in words for the error message and as a predicate.
Keys not listed are allowed (newer writers may add some); listed keys that are present must
match. ``sha256`` is checked by ``metadata.check_hash`` instead, so that
``--allow-modified`` can skip it.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnist_tflite.errors import fail

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


def _count(v: Any) -> bool:
    return _int(v) and v >= 0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _num(v) and v > 0


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


_TENSOR = {
    "": Rule("an object with dtype, shape, scale and zero_point", _obj),
    ".dtype": Rule("a dtype name such as 'int8'", _name),
    ".shape": Rule("a list of integers", _list_of(_int, 1, 8)),
    ".scale": Rule("a finite number", _num),
    ".zero_point": Rule("an integer", _int),
}

SCHEMA: dict[str, Rule] = {
    "format": Rule("the string 'mnist-tflite-metadata/1'", _str, required=True),
    "model": Rule("the model's file name (a string)", _str),
    "size_bytes": Rule("an integer >= 0", _count),
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
    "normalization.pixel_scale": Rule("a finite number > 0", _positive),
    "normalization.pixel_offset": Rule("a finite number", _num),
    "normalization.input_range": Rule("a list of 2 finite numbers", _list_of(_num, 2, 2)),
    "normalization.layout": Rule("a string", _str),
    "normalization.polarity": Rule("a string such as 'white digit on black background'", _str),
    **{f"input{k}": v for k, v in _TENSOR.items()},
    **{f"output{k}": v for k, v in _TENSOR.items()},
    # informative: the runner reads the kind from the model itself (edge.infer._output_kind)
    "output_kind": Rule("'logits' or 'probabilities'", lambda v: v in ("logits", "probabilities")),
    "host_postprocess": Rule("'softmax' or 'none'", lambda v: v in ("softmax", "none")),
    "data_source": Rule("a string", _str),
    "calibration": Rule("null or an object with images, seed and from", _or_null(_obj)),
    "calibration.images": Rule("an integer >= 0", _count),
    "calibration.seed": Rule("an integer", _int),
    "versions": Rule("an object of package -> version strings", _str_values),
    "architecture": Rule("an architecture name (a string)", _str),
    "seed": Rule("an integer", _int),
    "converted_from": Rule("a path (a string)", _str),
    "sparsity": Rule("a number in [0, 1]", lambda v: _num(v) and 0 <= v <= 1),
}


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
