"""``mnist-tflite serve``: a draw-a-digit page and a JSON API running the deployed ``.tflite``.

The page and the API use the same preprocessing (``preprocess.to_mnist``) and LiteRT runner
(``infer.TfliteModel``) as ``predict``; no TensorFlow is imported. Nothing from a request is
written to disk: bodies are read into memory up to a cap and parsed there.

API (OpenAPI at ``/docs``):
    POST /api/predict   an image (multipart field ``image``, or a raw ``image/*`` body), or JSON
                        ``{"pixels": [[0..255, ...], ...]}``: 28x28 is taken as MNIST format
                        (white on black, used as is), any other H x W grayscale goes through
                        ``to_mnist``. ``?model=<variant>`` picks a variant listed by /api/models.
                        Answers ``{label, class_name, probabilities, input, latency_ms,
                        inference_ms, model}``; ``input`` is the 28x28 the model saw, 0..255.
    GET  /api/models    the variants served, their recipe, size and report figures.
    GET  /healthz       liveness.
Errors are JSON ``{"error": code, "detail": message}``: 400 unreadable body or image, 404
unknown variant, 413 body or pixel count over the limit, 415 unsupported content type,
422 well-formed but unusable input (wrong array shape, a blank image: ``"error": "blank"``).
"""

# no `from __future__ import annotations`: FastAPI resolves the route annotations at runtime
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.edge import preprocess
from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.errors import MnistTfliteError, fail
from mnist_tflite.serve.parsing import ApiError, image_to_mnist, pixels_to_uint8, read_body, split_request

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "create_app", "serve"]

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # whole request body
MAX_PIXELS = 16_000_000  # a 12-megapixel phone photo fits; a decompression bomb does not
STATIC = Path(__file__).parent / "static"
PREFERRED_ORDER = ("float32", "float16", "dynamic", "int8", "int16x8")
DEFAULT_VARIANT = "int8"
INLINE_BYTES = 16 * 1024  # JSON bodies this small are answered without a worker thread
_CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'"
VARIANT_KEYS = ("recipe", "accuracy", "agreement", "max_prob_diff", "latency_us", "size_ratio")


@dataclass
class _Variant:
    """One served model. ``TfliteModel`` is thread-safe: each call borrows an interpreter
    from the model's pool (LiteRT interpreters themselves are not)."""

    name: str
    model: TfliteModel
    info: dict[str, Any]


@dataclass
class _Served:
    variants: dict[str, _Variant]
    default: str
    unavailable: list[dict[str, str]]
    report: dict[str, Any] | None
    max_upload_bytes: int
    max_pixels: int
    # decoding a big photo takes a few hundred MB; at most one per core at a time
    decode_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(os.cpu_count() or 1)
    )


def _report_rows(run_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """report.json (or report.md) of a run folder -> per-variant figures and a display table."""
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    if json_path.is_file():
        try:
            rows = json.loads(json_path.read_text(encoding="utf-8")).get("variants") or []
            rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("name"), str)]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise fail(
                json_path, f"unreadable report ({exc}); expected report.json written by mnist-tflite"
            ) from None
        from mnist_tflite.report.tables import table_cells

        headers, table = table_cells(rows)
        report = {"source": json_path.name, "headers": headers, "rows": table}
        return {r["name"]: r for r in rows}, report
    if md_path.is_file():
        return {}, {"source": md_path.name, "markdown": md_path.read_text(encoding="utf-8", errors="replace")}
    return {}, None


def _load_variants(
    target: Path, allow_modified: bool
) -> tuple[dict[str, _Variant], list[dict[str, str]], dict[str, Any] | None]:
    """A .tflite file or a run folder -> loaded variants (by name), failures, report table."""
    if not target.exists():
        raise fail(target, "no such file or directory; expected a .tflite model or a run folder")
    if target.is_dir():
        figures, report = _report_rows(target)
        paths = sorted(target.glob("*.tflite"))
        rank = {n: i for i, n in enumerate(list(figures) + list(PREFERRED_ORDER))}
        paths.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
        if not paths:
            raise fail(
                target, "no .tflite files in this folder; expected a run folder from `mnist-tflite run`"
            )
    else:
        figures, report, paths = {}, None, [target]
    variants: dict[str, _Variant] = {}
    unavailable: list[dict[str, str]] = []
    for path in paths:
        try:
            # a pool of one single-threaded interpreter per core: concurrent requests run side by side
            model = TfliteModel(path, num_threads=os.cpu_count(), allow_modified=allow_modified)
        except MnistTfliteError as exc:
            if not target.is_dir():
                raise
            unavailable.append({"name": path.stem, "error": str(exc).replace(str(path), path.name)})
            continue
        desc = model.describe()
        row = figures.get(path.stem, {})
        info = {
            "name": path.stem,
            "file": path.name,
            "size_bytes": model.size_bytes,
            "input_dtype": desc["input"]["dtype"],
            "output_dtype": desc["output"]["dtype"],
            "class_names": list(model.class_names),
            **{k: row.get(k) for k in VARIANT_KEYS},
        }
        info["recipe"] = desc["recipe"] or info["recipe"]
        variants[path.stem] = _Variant(path.stem, model, info)
    if not variants:
        problems = "; ".join(f"{u['name']}: {u['error']}" for u in unavailable)
        raise fail(target, f"no model in this folder could be loaded ({problems})")
    return variants, unavailable, report


def _predict(served: _Served, variant: _Variant, kind: str, payload: Any) -> dict[str, Any]:
    """One request's work (in a worker thread, or inline for a small JSON body): preprocess, infer."""
    start = time.perf_counter()
    try:
        if kind == "pixels":
            x = preprocess.to_mnist(pixels_to_uint8(payload, served.max_pixels))
        else:
            x = image_to_mnist(payload, served.max_pixels, served.decode_slots)
        if not x.any():  # an all-black 28x28 passes to_mnist untouched; no digit to classify
            raise preprocess.BlankImageError("all 28x28 pixels are 0: no digit to classify")
    except preprocess.BlankImageError as exc:
        raise ApiError(422, "blank", str(exc)) from None
    t_infer = time.perf_counter()
    probs = variant.model.predict_proba(x[None])[0]  # thread-safe: borrows a pooled interpreter
    end = time.perf_counter()
    label = int(np.argmax(probs))
    return {
        "label": label,
        "class_name": variant.model.class_names[label],
        "probabilities": [round(float(p), 6) for p in probs],
        # 0..255 (x 255, rounded): integers serialize ~8x faster than floats and are exactly
        # what an int8 model with input scale 1/255 sees
        "input": np.rint(x * 255).astype(np.uint8).tolist(),
        "latency_ms": round((end - start) * 1000, 3),
        "inference_ms": round((end - t_infer) * 1000, 3),
        "model": variant.name,
    }


def create_app(
    model_or_run_dir: str | os.PathLike[str],
    *,
    allow_modified: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
):
    """Build the FastAPI app serving one ``.tflite`` or every variant of a run folder.

    Args:
        model_or_run_dir: a ``.tflite`` file, or a folder from ``mnist-tflite run`` (its
            ``*.tflite`` become selectable variants; ``report.json`` adds their figures).
        allow_modified: serve a model whose SHA-256 differs from its sidecar.
        max_upload_bytes: request bodies over this are refused with 413.
        max_pixels: images or arrays with more pixels are refused with 413.

    Returns:
        A ``fastapi.FastAPI`` application.

    Raises:
        MnistTfliteError: when the path holds no loadable model.

    Example:
        >>> app = create_app("runs/demo")  # then: uvicorn.run(app, host="127.0.0.1")
    """
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline

    from mnist_tflite.serve.parsing import PREDICT_OPENAPI, PredictResult

    variants, unavailable, report = _load_variants(Path(model_or_run_dir), allow_modified)
    default = DEFAULT_VARIANT if DEFAULT_VARIANT in variants else next(iter(variants))
    served = _Served(variants, default, unavailable, report, int(max_upload_bytes), int(max_pixels))
    # FastAPIOffline serves the /docs page's Swagger UI assets from the package: no CDN, works offline
    app = FastAPIOffline(
        title="mnist-tflite",
        summary="Draw a digit; the deployed .tflite model answers.",
        version=__import__("mnist_tflite").__version__,
    )
    app.state.served = served

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # our bug, not the user's: the traceback goes to the server log, the page gets JSON
        logging.getLogger("mnist_tflite.serve.app").error(
            "%s %s failed", request.method, request.url.path, exc_info=exc
        )
        return JSONResponse(
            {"error": "internal", "detail": f"server bug: {type(exc).__name__}"}, status_code=500
        )

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={
                "Content-Security-Policy": _CSP,
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "variants": list(served.variants)}

    @app.get("/api/models", summary="Variants served, with their recipe, size and report figures")
    def models() -> dict[str, Any]:
        return {
            "default": served.default,
            "variants": [v.info for v in served.variants.values()],
            "unavailable": served.unavailable,
            "report": served.report,
            "limits": {"max_upload_bytes": served.max_upload_bytes, "max_pixels": served.max_pixels},
        }

    @app.post(
        "/api/predict",
        summary="Classify one digit: an image upload or a JSON pixel array",
        response_model=PredictResult,
        openapi_extra=PREDICT_OPENAPI,
    )
    async def predict(request: Request) -> Response:
        # `?model=` is read by hand (and documented in PREDICT_OPENAPI): FastAPI's parameter
        # machinery costs more than the inference on this hot path
        body = await read_body(request, served.max_upload_bytes)
        kind, payload, body_model = split_request(request.headers.get("content-type", ""), body)
        name = request.query_params.get("model") or body_model or served.default
        variant = served.variants.get(name)
        if variant is None:
            raise ApiError(
                404, "unknown_model", f"no variant {name[:64]!r}; served: {sorted(served.variants)}"
            )
        if kind == "pixels" and len(body) < INLINE_BYTES:
            # a 28x28 array costs ~0.3 ms: cheaper in the event loop than a thread hop
            result = _predict(served, variant, kind, payload)
        else:
            result = await run_in_threadpool(_predict, served, variant, kind, payload)
        return Response(json.dumps(result, separators=(",", ":")), media_type="application/json")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _listen(host: str, port: int):
    """A listening TCP socket on ``host:port`` (port 0: any free one), or a one-line error."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it each response (headers, then body) waits ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MnistTfliteError(f"{host}:{port}: cannot listen ({exc.strerror}); try another --port") from None
    sock.listen(128)
    return sock


def serve(
    model_or_run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_modified: bool = False,
    log=print,
) -> None:
    """Load the model(s), bind ``host:port`` and serve until interrupted.

    Example:
        >>> serve("runs/demo/int8.tflite", port=9000)
    """
    import uvicorn

    app = create_app(model_or_run_dir, allow_modified=allow_modified)
    sock = _listen(host, port)
    served = app.state.served
    shown = f"[{host}]" if ":" in host else host
    log(
        f"serving {', '.join(served.variants)} (default {served.default}) at http://{shown}:{sock.getsockname()[1]}/"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: --host {host} makes the page reachable from other machines")
    config = uvicorn.Config(app, log_level="warning", access_log=False, limit_concurrency=256)
    uvicorn.Server(config).run(sockets=[sock])
