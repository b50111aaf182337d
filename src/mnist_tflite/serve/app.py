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
unknown variant or path, 408 a body (or request head) that does not arrive in time, 413
body or pixel count over the limit, 415 unsupported content type, 422 well-formed but
unusable input (wrong array shape, a blank image: ``"error": "blank"``, the rule ``predict``
uses too), 431 request headers over 32 KB, 503 too many requests waiting.

Hostile clients: all CPU work (parsing, decoding, preprocessing, inference) runs in a
bounded pool of worker threads, never on the event loop, and every parser is bounded
before it allocates (:mod:`mnist_tflite.serve.parsing`); slow or oversized request heads
are cut off at the connection (:mod:`mnist_tflite.serve.protocol`). One bad model or
sidecar in a run folder is skipped with a logged reason; the others are served.
"""

# no `from __future__ import annotations`: FastAPI resolves the route annotations at runtime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge import preprocess
from mnist_tflite.edge.predict import number_fields
from mnist_tflite.serve import middleware
from mnist_tflite.serve.admission import BODY_TIMEOUT, MAX_WAITING, Admission
from mnist_tflite.serve.parsing import ApiError, decode_upload, split_request
from mnist_tflite.serve.protocol import HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES
from mnist_tflite.serve.variants import Variant, load_variants
from mnist_tflite.serve.web import MEDIA_TYPES, DeviceBuild

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "create_app", "serve"]

LOG = logging.getLogger("mnist_tflite.serve")
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # whole request body
MAX_PIXELS = 16_000_000  # a 12-megapixel phone photo fits; a decompression bomb does not
STATIC = Path(__file__).parent / "static"
DEFAULT_VARIANT = "int8"
_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' data: blob:; object-src 'none'"
)


@dataclass
class _Served:
    variants: dict[str, Variant]
    default: str
    unavailable: list[dict[str, str]]
    report: dict[str, Any] | None
    max_upload_bytes: int
    max_pixels: int


def _answer(
    served: _Served, content_type: str, body: bytes, query_model: str | None, number: bool = False
) -> bytes:
    """One request's CPU work, in a worker thread: parse, preprocess, infer, serialize; with
    ``number``, the digits of the number in the picture too (issue 22)."""
    start = time.perf_counter()
    kind, payload, body_model = split_request(content_type, body, served.max_pixels)
    name = query_model or body_model or served.default
    variant = served.variants.get(name)
    if variant is None:
        raise ApiError(404, "unknown_model", f"no variant {name[:64]!r}; served: {sorted(served.variants)}")
    picture = payload if kind == "pixels" else decode_upload(payload, served.max_pixels)
    try:
        x = preprocess.to_mnist(picture)
    except preprocess.BlankImageError as exc:
        raise ApiError(422, "blank", str(exc)) from None
    except MnistTfliteError as exc:
        raise ApiError(422, "bad_pixels", str(exc)) from None
    t_infer = time.perf_counter()
    probs = variant.model.predict_proba(x[None])[0]  # thread-safe: borrows a pooled interpreter
    end = time.perf_counter()
    label = int(np.argmax(probs))
    result = {
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
    if number:  # the digits of a number (boxes, labels): edge.predict.number_fields documents them
        result.update(number_fields(picture, variant.model, max_pixels=served.max_pixels))
    return json.dumps(result, separators=(",", ":")).encode()


def create_app(
    model_or_run_dir: str | os.PathLike[str],
    *,
    allow_modified: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    body_timeout: float = BODY_TIMEOUT,
    workers: int | None = None,
    max_waiting: int = MAX_WAITING,
    allowed_hosts: frozenset[str] | None = None,
):
    """Build the FastAPI app serving one ``.tflite`` or every variant of a run folder.

    Args:
        model_or_run_dir: a ``.tflite`` file, or a folder from ``mnist-tflite run`` (its
            ``*.tflite`` become selectable variants; ``report.json`` adds their figures).
        allow_modified: serve a model whose SHA-256 differs from its sidecar.
        max_upload_bytes: request bodies over this are refused with 413.
        max_pixels: images or arrays with more pixels are refused with 413.
        body_timeout: a body still arriving after this many seconds is refused with 408.
        workers: threads doing CPU work (default: one per core).
        max_waiting: requests waiting for a worker beyond this are refused with 503.
        allowed_hosts: ``Host`` names answered (``middleware.allowed_hosts``); others get
            400 ``bad_host``. None: any (``serve`` derives them from ``--host``).

    Returns:
        A ``fastapi.FastAPI`` application.

    Raises:
        MnistTfliteError: when the path holds no loadable model.

    Example:
        >>> app = create_app("runs/demo")  # then: uvicorn.run(app, host="127.0.0.1")
    """
    from fastapi_offline import FastAPIOffline

    variants, unavailable, report = load_variants(Path(model_or_run_dir), allow_modified)
    default = DEFAULT_VARIANT if DEFAULT_VARIANT in variants else next(iter(variants))
    served = _Served(variants, default, unavailable, report, int(max_upload_bytes), int(max_pixels))
    admission = Admission(
        served.max_upload_bytes, body_timeout=body_timeout, workers=workers, max_waiting=max_waiting
    )
    # FastAPIOffline serves the /docs page's Swagger UI assets from the package: no CDN, works offline
    app = FastAPIOffline(
        title="mnist-tflite",
        summary="Draw a digit; the deployed .tflite model answers.",
        version=__import__("mnist_tflite").__version__,
    )
    app.state.served, app.state.admission = served, admission
    _add_error_handlers(app)
    device = DeviceBuild(served.variants[default].model._data, default)  # the page's in-browser model
    _add_routes(app, served, admission, device)
    app.add_middleware(middleware.Guard, hosts=allowed_hosts)  # Host allow-list; HEAD answered like GET
    return app


def _add_error_handlers(app: Any) -> None:
    """Every error as JSON ``{"error": code, "detail": message}``; a bug as a JSON 500."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def _error(
        request: Request, status: int, code: str, detail: str, headers: dict[str, str]
    ) -> JSONResponse:
        headers = dict(headers)
        if request.method not in ("GET", "HEAD") and not getattr(request.state, "body_read", False):
            # the body was not read: close rather than parse the rest of it as the next request
            headers["Connection"] = "close"
        return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request, exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown paths (404), wrong methods (405), static files: the same JSON as the API
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return _error(request, exc.status_code, code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # our bug, not the user's: the traceback goes to the server log, the page gets JSON
        logging.getLogger("mnist_tflite.serve.app").error(
            "%s %s failed", request.method, request.url.path, exc_info=exc
        )
        return JSONResponse(
            {"error": "internal", "detail": f"server bug: {type(exc).__name__}"}, status_code=500
        )


def _add_routes(app: Any, served: _Served, admission: Admission, device: DeviceBuild) -> None:
    """The page, /healthz, /api/models, /wasm/ (the in-browser build), /api/predict, static files."""
    import asyncio

    from fastapi import Request
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from mnist_tflite.serve.parsing import PREDICT_OPENAPI, PredictResult

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}
        return FileResponse(STATIC / "index.html", headers=headers)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        # async: answered on the event loop, so it stays fast whatever the workers are doing
        return {"status": "ok", "variants": list(served.variants)}

    @app.get("/api/models", summary="Variants served, with their recipe, size and report figures")
    async def models() -> dict[str, Any]:
        return {
            "default": served.default,
            "variants": [v.info for v in served.variants.values()],
            "unavailable": served.unavailable,  # skipped variants, each with the reason
            "report": served.report,
            "limits": {"max_upload_bytes": served.max_upload_bytes, "max_pixels": served.max_pixels},
            **device.info(),
        }

    @app.get("/wasm/{name}", include_in_schema=False)
    async def device_file(name: str) -> Response:
        # compiled on the first request (a second or two), in a thread: the event loop stays free
        data = await asyncio.get_running_loop().run_in_executor(None, device.file, name)
        if data is None:
            raise StarletteHTTPException(404)
        return Response(
            data, media_type=MEDIA_TYPES[Path(name).suffix], headers={"Cache-Control": "no-cache"}
        )

    @app.post(
        "/api/predict",
        summary="Classify one digit: an image upload or a JSON pixel array",
        response_model=PredictResult,
        openapi_extra=PREDICT_OPENAPI,
    )
    async def predict(request: Request) -> Response:
        # `?model=` is read by hand (and documented in PREDICT_OPENAPI): FastAPI's parameter
        # machinery costs more than the inference on this hot path
        query_model = request.query_params.get("model") or None
        number = request.query_params.get("number") == "1"
        if query_model is not None and query_model not in served.variants:
            raise ApiError(
                404, "unknown_model", f"no variant {query_model[:64]!r}; served: {sorted(served.variants)}"
            )
        content = await admission.answer(
            request, lambda ctype, body: _answer(served, ctype, body, query_model, number)
        )
        return Response(content, media_type="application/json")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


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
    sock.listen(2048)  # a burst of connections waits in the kernel, not in SYN retries
    return sock


def serve(
    model_or_run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_modified: bool = False,
    log=print,
    header_timeout: float = HEADER_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
    **app_options: Any,
) -> None:
    """Load the model(s), bind ``host:port`` and serve until interrupted.

    Args:
        header_timeout: seconds a client has to send a request's line and headers (408 after).
        max_header_bytes: request line + headers over this are refused with 431.
        max_connections: open connections; past it the one idle longest is closed.
        app_options: passed to :func:`create_app` (limits, timeouts, workers).

    Example:
        >>> serve("runs/demo/int8.tflite", port=9000)
    """
    import uvicorn

    from mnist_tflite.serve.protocol import guarded_protocol

    app_options.setdefault("allowed_hosts", middleware.allowed_hosts(host))
    app = create_app(model_or_run_dir, allow_modified=allow_modified, **app_options)
    sock = _listen(host, port)
    served = app.state.served
    shown = f"[{host}]" if ":" in host else host
    log(
        f"serving {', '.join(served.variants)} (default {served.default}) at http://{shown}:{sock.getsockname()[1]}/"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: --host {host} makes the page reachable from other machines")
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        # no limit_concurrency: it counts open connections, so slow clients holding them
        # turned everyone else's requests into 503s; the guards below bound connections,
        # request heads and waiting work instead
        http=guarded_protocol(
            header_timeout=header_timeout,
            max_header_bytes=max_header_bytes,
            max_connections=max_connections,
            max_body_bytes=served.max_upload_bytes,
            body_timeout=app.state.admission.body_timeout,
        ),
        ws="none",
        lifespan="off",
        timeout_keep_alive=5,
    )
    server = _server_class()(config)
    server.run(sockets=[sock])
    if server.signalled:
        # uvicorn raises the signal again once it has shut down, but asyncio's runner turns a
        # late Ctrl-C into a cancel of a task that may already be finishing: then run() returns
        # as if nothing happened (exit 0). Ctrl-C and `kill` always end as interrupted (130).
        raise KeyboardInterrupt


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering the signals that stopped it."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.signalled: list[int] = []

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.signalled.append(sig)
            super().handle_exit(sig, frame)

    return Server
