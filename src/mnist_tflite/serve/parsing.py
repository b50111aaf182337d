"""Request plumbing for ``serve``: capped body reading, in-memory parsing, decoding to 28x28.

Starlette's form parser spools uploads over 1 MB to a temporary file; ours never touches
disk: the body is read into memory (refused past the cap while it streams in, whatever
Content-Length claims) and multipart is parsed from those bytes.

Every parser here is bounded before it builds anything: a JSON body is counted (brackets,
commas, braces, quotes: one C-speed pass each) before ``json.loads`` may create a Python
object per value, an array's shape and element count are checked before NumPy allocates
it, and an image's size and format before a pixel is decoded. So any body up to the cap
costs a few tens of milliseconds of CPU at most, or is refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import warnings
from typing import Any

import numpy as np
from pydantic import BaseModel

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge import preprocess

MAX_PARTS = 8
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
# JSON pixels are for drawings and small arrays; photos come as image files (compressed,
# and decoded at reduced size). 512 x 512 parses in ~15 ms; the cost grows with the count.
MAX_JSON_PIXELS = 512 * 512
MAX_JSON_SIDE = 4096  # rows or columns; a 1 x 4096 strip is fine, 1 x 1,000,000 is not
MAX_JSON_OBJECTS = 16  # {...} in the whole body: {"pixels": ..., "model": ...} needs one
MAX_JSON_STRINGS = 32  # quoted strings (keys included)
# Decoding cost: a baseline JPEG is decoded at 1/2 to 1/8 scale (draft mode), ~10 ms per MB
# of file; other formats are decoded in full, so they get a lower pixel limit (3 MP PNG RGBA:
# ~35 ms; 16 MP: ~200 ms); a progressive JPEG costs ~35 ms per MB of file whatever its size.
MAX_FULL_DECODE_PIXELS = 3_000_000
MAX_PROGRESSIVE_JPEG_BYTES = 1024 * 1024
_EXPECTED_PIXELS = (
    "expected an H x W array of grayscale values 0..255 (28 x 28: MNIST format, white on black)"
)


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


class PredictResult(BaseModel):
    """The answer of ``POST /api/predict``."""

    label: int
    class_name: str
    probabilities: list[float]
    input: list[list[int]]  # the 28x28 the model saw, white on black, 0..255 (divide by 255)
    latency_ms: float  # preprocessing + inference, on the server
    inference_ms: float
    model: str


PREDICT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "variant name from /api/models (default: int8 when served)",
        },
        {
            "name": "number",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "enum": [0, 1]},
            "description": "1: also read the number (several digits, lines): number, uncertain, digits "
            "with their boxes; costs a segmentation of the picture, so only when asked",
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                    },
                    "required": ["image"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "pixels": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                            "description": "H x W grayscale 0..255; 28x28 = MNIST format (white on black); "
                            f"at most {MAX_JSON_PIXELS:,} values and {MAX_JSON_SIDE:,} per side",
                        },
                        "model": {"type": "string"},
                    },
                    "required": ["pixels"],
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "400": {"description": "unreadable body, JSON or image"},
        "404": {"description": "unknown variant"},
        "408": {"description": "the body did not arrive in time"},
        "413": {"description": "body over the size cap, or too many pixels"},
        "415": {"description": "content type other than multipart, JSON or image"},
        "422": {"description": "unusable input: wrong array shape or values, blank image (no ink)"},
        "503": {"description": "server busy: too many requests waiting; retry"},
    },
}


class BodyBudget:
    """Bytes of request bodies held in memory by all requests together (event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = int(limit), 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise ApiError(
                503,
                "busy",
                "server busy: too many uploads in progress; retry in a moment",
                {"Retry-After": "1"},
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


async def read_body(
    request: Any, limit: int, budget: BodyBudget | None = None, timeout: float = 30.0
) -> bytes:
    """The request body, or 413 as soon as more than ``limit`` bytes have arrived.

    The bytes held count against ``budget`` (released by the caller with ``budget.give``
    on the length returned, or here on failure); a body still arriving after ``timeout``
    seconds is a 408.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            raise ApiError(400, "bad_request", f"Content-Length {declared[:32]!r} is not a number")
        if int(declared) > limit:
            raise ApiError(
                413, "too_large", f"body of {int(declared):,} bytes is over the limit of {limit:,}"
            )
    chunks, total = [], 0
    deadline = time.monotonic() + timeout
    stream = request.stream().__aiter__()
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(left, 0.001))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ApiError(
                    408, "timeout", f"the body did not arrive within {timeout:g} s ({total:,} bytes received)"
                ) from None
            except ClientDisconnect:
                raise ApiError(400, "disconnected", "the client went away before sending the body") from None
            if not chunk:
                continue
            total += len(chunk)
            if total > limit:  # chunked or lying about its length
                raise ApiError(413, "too_large", f"body is over the limit of {limit:,} bytes")
            if budget is not None:
                budget.take(len(chunk))
            chunks.append(chunk)
    except BaseException:
        if budget is not None:
            budget.give(sum(len(c) for c in chunks))
        raise
    return b"".join(chunks)


def _multipart(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """Parse a multipart/form-data body held in memory -> parts with name, filename, type, data.

    python-multipart bounds the header count and size of each part; we bound the parts.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    if len(boundary) > 200:
        raise ApiError(400, "bad_multipart", "multipart boundary longer than 200 characters")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, "bad_multipart", f"more than {MAX_PARTS} parts")
        cur.clear()
        cur.update(headers={}, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][header[0].lower().decode("latin-1")] = header[1].decode("latin-1")
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].append(data[start:end])

    def on_part_end() -> None:
        _, disp = parse_options_header(cur["headers"].get("content-disposition", ""))
        parts.append(
            {
                "name": disp.get(b"name", b"").decode("utf-8", "replace"),
                "filename": disp.get(b"filename", b"").decode("utf-8", "replace") or None,
                "type": cur["headers"].get("content-type", "").split(";")[0].strip().lower(),
                "data": b"".join(cur["data"]),
            }
        )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({str(exc)[:160]})") from None
    if not parts:
        raise ApiError(400, "bad_multipart", "multipart body without a complete part")
    return parts


def split_request(
    content_type: str, body: bytes, max_pixels: int = MAX_JSON_PIXELS
) -> tuple[str, Any, str | None]:
    """(content type, body) -> ("image", bytes | "pixels", uint8 array; model name or None).

    CPU-bound for big bodies: called from a worker thread, never on the event loop.
    """
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parts = _multipart(content_type, body)
        model = next((p["data"] for p in parts if p["name"] == "model"), None)
        if model is not None:
            try:
                model = model.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ApiError(422, "bad_model", "model must be UTF-8 text (a variant name)") from None
        image = next((p for p in parts if p["name"] == "image"), None) or next(
            (p for p in parts if p["filename"]), None
        )
        if image is None:
            raise ApiError(422, "no_image", "multipart body has no `image` file field")
        if image["type"] and not image["type"].startswith(RAW_IMAGE_TYPES):
            raise ApiError(415, "unsupported_type", f"file of type {image['type'][:64]!r}; expected an image")
        return "image", image["data"], model or None
    if ctype == "application/json":
        pixels, model = json_pixels(body, max_pixels)
        return "pixels", pixels, model
    if ctype.startswith(RAW_IMAGE_TYPES):
        return "image", body, None
    raise ApiError(
        415,
        "unsupported_type",
        f"content type {ctype[:64] or 'none'!r}; expected multipart/form-data (field `image`), "
        'application/json ({"pixels": ...}) or image/*',
    )


def _prescan(body: bytes, max_pixels: int) -> None:
    """Bound what ``json.loads`` could build, from byte counts, before it builds anything.

    Every value after the first in an array or object follows a comma, so commas +
    brackets + braces bound the number of Python objects; brackets also bound the depth.
    """
    if body.count(b"{") > MAX_JSON_OBJECTS:
        raise ApiError(
            422,
            "bad_pixels",
            f"more than {MAX_JSON_OBJECTS} JSON objects; pixel values must be numbers; {_EXPECTED_PIXELS}",
        )
    if body.count(b'"') > 2 * MAX_JSON_STRINGS:
        raise ApiError(
            422,
            "bad_pixels",
            f"more than {MAX_JSON_STRINGS} strings; pixel values must be numbers; {_EXPECTED_PIXELS}",
        )
    rows = body.count(b"[")
    if rows > MAX_JSON_SIDE + 1:
        raise ApiError(413, "too_many_pixels", f"more than {MAX_JSON_SIDE:,} rows (or nesting that deep); "
                       f"{_EXPECTED_PIXELS}; send a bigger picture as an image file")  # fmt: skip
    values = body.count(b",") + 1
    if values > max_pixels + rows + MAX_JSON_STRINGS:
        raise ApiError(413, "too_many_pixels", f"about {values:,} values is over the limit of {max_pixels:,} "
                       "pixels for JSON; send a bigger picture as an image file (PNG, JPEG)")  # fmt: skip


def json_pixels(body: bytes, max_pixels: int = MAX_JSON_PIXELS) -> tuple[np.ndarray, str | None]:
    """A JSON body ``{"pixels": [[...]], "model": ...}`` -> (uint8 (H, W), model or None).

    Shape, element count and value types are checked before the array is allocated.
    """
    max_pixels = min(max_pixels, MAX_JSON_PIXELS)
    _prescan(body, max_pixels)
    try:
        doc = json.loads(body)
    except RecursionError:
        raise ApiError(400, "bad_json", "JSON nested too deeply") from None
    except (ValueError, TypeError) as exc:  # includes UnicodeDecodeError and > 4300-digit integers
        raise ApiError(400, "bad_json", f"body is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict) or "pixels" not in doc:
        raise ApiError(422, "no_pixels", 'expected a JSON object {"pixels": [[...], ...]}')
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "bad_model", "model must be a string (a variant name from /api/models)")
    return _pixel_array(doc["pixels"], body, max_pixels), model


def _pixel_array(rows: Any, body: bytes, max_pixels: int) -> np.ndarray:
    """A parsed ``pixels`` value -> uint8 (H, W), or an ApiError saying what was expected."""

    def bad(problem: str, status: int = 422, code: str = "bad_pixels") -> ApiError:
        return ApiError(status, code, f"pixels {problem}; {_EXPECTED_PIXELS}")

    if type(rows) is not list or not rows:
        raise bad("must be a non-empty list of rows")
    if not all(type(r) is list for r in rows):
        raise bad("must be a list of rows, each a list of numbers (found a row that is not a list)")
    h, w = len(rows), len(rows[0])
    if any(len(r) != w for r in rows):
        raise bad("is ragged: rows of different lengths")
    if w == 0:
        raise bad("has empty rows")
    if h > MAX_JSON_SIDE or w > MAX_JSON_SIDE or h * w > max_pixels:
        raise bad(
            f"is {h} x {w}: over the limit of {max_pixels:,} values and {MAX_JSON_SIDE:,} per side for JSON "
            "(send a bigger picture as an image file)",
            413,
            "too_many_pixels",
        )
    try:
        a = np.array(rows)  # no dtype: numbers give a numeric array, anything else does not
    except (ValueError, TypeError, OverflowError):
        raise bad("holds values that are not numbers") from None
    if a.shape != (h, w) or a.dtype.kind not in "iuf":
        raise bad("holds values that are not numbers (strings, booleans, null, lists or objects)")
    if (b"true" in body or b"false" in body) and any(type(v) is bool for r in rows for v in r):
        raise bad("holds booleans, not numbers")
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
        raise bad("has values outside 0..255 (or NaN / Infinity)")
    return np.rint(a).astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)


def decode_upload(data: bytes, max_pixels: int) -> Any:
    """Uploaded bytes -> the decoded picture, decoded once for the digit and the number
    (413 for a pixel bomb, 400 for a broken file)."""
    from PIL import Image

    too_many = f"image is over the limit of {max_pixels:,} pixels"
    fmt, progressive = None, False
    try:  # header only: refuse a pixel bomb with 413 before anything is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as peek:
                width, height = peek.size
                fmt = peek.format
                progressive = bool(peek.info.get("progressive") or peek.info.get("progression"))
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", too_many) from None
    except Exception:  # load_image below says precisely what is wrong with it
        width = height = 0
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{width}x{height} {too_many}")
    full = min(max_pixels, MAX_FULL_DECODE_PIXELS)
    if fmt != "JPEG" and width * height > full:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{width}x{height} {fmt or 'image'} is over the limit of {full:,} pixels for formats decoded "
            f"in full (JPEG: {max_pixels:,}); send it smaller or as a JPEG",
        )
    if fmt == "JPEG" and progressive and len(data) > MAX_PROGRESSIVE_JPEG_BYTES:
        raise ApiError(
            413,
            "too_large",
            f"progressive JPEG of {len(data):,} bytes is over the limit of {MAX_PROGRESSIVE_JPEG_BYTES:,} "
            "for progressive JPEGs (slow to decode); send a baseline JPEG or a smaller file",
        )
    try:
        return preprocess.load_image(data, name="upload", max_pixels=max_pixels)
    except MnistTfliteError as exc:
        raise ApiError(400, "bad_image", str(exc)) from None
