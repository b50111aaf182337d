"""Request plumbing for ``serve``: capped body reading, in-memory parsing, decoding to 28x28.

Starlette's form parser spools uploads over 1 MB to a temporary file; ours never touches
disk: the body is read into memory (refused past the cap while it streams in, whatever
Content-Length claims) and multipart is parsed from those bytes.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from typing import Any

import numpy as np
from pydantic import BaseModel

from mnist_tflite.edge import preprocess
from mnist_tflite.errors import MnistTfliteError

MAX_PARTS = 8
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


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
        }
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
                            "description": "H x W grayscale 0..255; 28x28 = MNIST format (white on black)",
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
        "400": {"description": "unreadable body or broken image"},
        "404": {"description": "unknown variant"},
        "413": {"description": "body over the size cap, or too many pixels"},
        "415": {"description": "content type other than multipart, JSON or image"},
        "422": {"description": "unusable input: wrong array shape or values, blank image"},
    },
}


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or 413 as soon as more than ``limit`` bytes have arrived."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length {declared[:32]!r} is not a number") from None
        if too_big:
            raise ApiError(
                413, "too_large", f"body of {int(declared):,} bytes is over the limit of {limit:,}"
            )
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:  # chunked or lying about its length
            raise ApiError(413, "too_large", f"body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _multipart(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """Parse a multipart/form-data body held in memory -> parts with name, filename, type, data."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, data=[])
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, "bad_multipart", f"more than {MAX_PARTS} parts")

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
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({exc})") from None
    return parts


def split_request(content_type: str, body: bytes) -> tuple[str, Any, str | None]:
    """(content type, body) -> ("image", bytes | "pixels", nested list; model name or None)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parts = _multipart(content_type, body)
        model = next(
            (p["data"].decode("utf-8", "replace").strip() for p in parts if p["name"] == "model"), None
        )
        image = next((p for p in parts if p["name"] == "image"), None) or next(
            (p for p in parts if p["filename"]), None
        )
        if image is None:
            raise ApiError(422, "no_image", "multipart body has no `image` file field")
        if image["type"] and not image["type"].startswith(RAW_IMAGE_TYPES):
            raise ApiError(415, "unsupported_type", f"file of type {image['type']!r}; expected an image")
        return "image", image["data"], model or None
    if ctype == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON ({str(exc)[:120]})") from None
        if not isinstance(doc, dict) or "pixels" not in doc:
            raise ApiError(422, "no_pixels", 'expected a JSON object {"pixels": [[...], ...]}')
        model = doc.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(422, "bad_model", "model must be a string (a variant name from /api/models)")
        return "pixels", doc["pixels"], model
    if ctype.startswith(RAW_IMAGE_TYPES):
        return "image", body, None
    raise ApiError(
        415,
        "unsupported_type",
        f"content type {ctype or 'none'!r}; expected multipart/form-data (field `image`), "
        'application/json ({"pixels": ...}) or image/*',
    )


def pixels_to_uint8(pixels: Any, max_pixels: int) -> np.ndarray:
    """JSON ``pixels`` -> uint8 (H, W), or an ApiError saying what was expected."""
    expected = "expected an H x W array of grayscale values 0..255 (28 x 28: MNIST format, white on black)"
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise ApiError(
            422, "bad_pixels", f"pixels is not a rectangular array of numbers; {expected}"
        ) from None
    if a.ndim != 2 or 0 in a.shape:
        raise ApiError(422, "bad_pixels", f"pixels has shape {list(a.shape)}; {expected}")
    if a.size > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{a.shape[1]}x{a.shape[0]} pixels is over {max_pixels:,}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise ApiError(422, "bad_pixels", f"pixels has values outside 0..255; {expected}")
    return np.rint(a).astype(np.uint8)


def image_to_mnist(data: bytes, max_pixels: int, slots: threading.BoundedSemaphore) -> np.ndarray:
    """Uploaded bytes -> the model's 28x28 input (413 for a pixel bomb, 400 for a broken file)."""
    from PIL import Image

    too_many = f"image is over the limit of {max_pixels:,} pixels"
    try:  # header only: refuse a pixel bomb with 413 before anything is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as peek:
                width, height = peek.size
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", too_many) from None
    except Exception:  # load_image below says precisely what is wrong with it
        width = height = 0
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{width}x{height} {too_many}")
    with slots:
        try:
            image = preprocess.load_image(data, name="upload", max_pixels=max_pixels)
        except MnistTfliteError as exc:
            raise ApiError(400, "bad_image", str(exc)) from None
        return preprocess.to_mnist(image)
