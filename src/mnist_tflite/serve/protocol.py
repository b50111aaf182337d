"""Connection-level guards for ``serve``: every byte a connection makes us hold is bounded.

uvicorn's httptools protocol has neither a limit on the size of a request's headers (50 MB
of headers were parsed and answered 200) nor a timeout for receiving them: its keep-alive
timer is cancelled by every byte that arrives, so a client trickling a header line every
few seconds holds its connection for ever, and its ``limit_concurrency`` counts those
connections, turning the requests of everyone else into 503s. It also keeps a chunked
body's trailers (150 MB of ``a:b`` lines grew the server by 3.3 GB) and parses every
pipelined request of a read at once. ASGI middleware cannot help: it runs only once the
headers are complete. So this subclass of uvicorn's protocol feeds the parser in slices
of ``SLICE`` bytes and:

- counts the bytes of each request's head (request line and headers) and answers 431 and
  closes the connection past ``max_header_bytes``; a chunked body's trailers get the same
  limit (and are dropped: no ASGI application sees request trailers);
- gives each request ``header_timeout`` seconds (less a random share of up to a quarter, so
  that a crowd of slow clients cut off together does not come back as one wave), from the
  moment the connection (or the previous request) was ready for it, to complete its head,
  then answers 408 and closes;
- stops parsing a read's pipelined requests once ``MAX_PIPELINED`` wait for an answer, and
  goes on as they are answered (the rest of the read waits, unparsed);
- parks a request with a body until the body has arrived (up to ``max_body_bytes``, 413
  past it; ``body_timeout`` less a random share of up to a quarter, 408 after;
  ``PARKED_BUDGET`` for all parked bodies together, past which the app reads them as they
  come): a client trickling its body costs a few
  objects and a timer, not a running request, and whole requests reach the app first;
- caps open connections at ``max_connections``: a new one past the cap closes the
  connection that has waited longest for bytes it is owed (a request head, or the rest
  of a body: a slow client, or an idle keep-alive), so a request that arrives whole is
  admitted ahead of those still trickling; a connection whose request is complete and
  being answered is never the one closed.

The app keeps its own body cap and deadline (``read_body``) for the requests not parked
(``Expect: 100-continue``, or past the budget). Errors are JSON like the API's.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT = 10.0  # seconds to send a request line and headers
MAX_HEADER_BYTES = 32 * 1024  # request line + headers (nginx's default buffers hold 32 KB)
# open connections: at ~20 KB each (a parked request, its task and buffers) 4,096 idle ones
# hold ~80 MB; a slow-loris crowd of 2,000 fits without anyone being shed
MAX_CONNECTIONS = 4096
SLICE = 4096  # bytes fed to the parser at a time: heads and trailers are counted to this
MAX_PIPELINED = 64  # requests parsed ahead of their answer on one connection
MAX_UNPARSED = 1024 * 1024  # bytes of a connection's reads waiting to be parsed
PARKED_BUDGET = 64 * 1024 * 1024  # bodies held for parked requests; past it, the app reads them


def _max_connections_for_fd_limit(wanted: int) -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - 64))  # leave descriptors for model files, logs, threads


def json_error(status: int, reason: str, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, with a JSON body."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True)
class Limits:
    """What one connection may make the server hold, and for how long."""

    header_timeout: float = HEADER_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int = MAX_CONNECTIONS
    max_body_bytes: int = 5 * 1024 * 1024  # the app's MAX_UPLOAD_BYTES
    body_timeout: float = 30.0  # the app's BODY_TIMEOUT
    parked_budget: int = PARKED_BUDGET


class _Shared:
    """State shared by a server's connections (event loop only)."""

    def __init__(self) -> None:
        # connections owed bytes (a request head, or the rest of a body), the longest-waiting
        # first: the ones to shed at the cap
        self.owing: OrderedDict[Any, None] = OrderedDict()
        self.parked_bytes = 0  # body bytes held for parked requests, all connections together
        self.jitter = random.Random()  # deadlines only: nothing computed depends on it


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above; :func:`guarded_protocol` sets its limits."""

    limits = Limits()
    shared = _Shared()
    _head_timer: Any = None
    _head_bytes = 0
    _reading_head = False
    _in_body = False  # headers complete, message not yet
    _after_chunk_header = False  # a chunk's size line was read, none of its data yet
    _trailer_bytes = 0
    _unparsed = b""  # the part of a read not yet fed (pipelined requests over the limit)
    _parked: Any = None  # (cycle, app) of a request waiting for the rest of its body
    _parked_held = 0
    _body_timer: Any = None

    # -- the head phase: from ready-for-a-request to headers complete ----------------

    def _start_head(self) -> None:
        self._stop_head()
        self._reading_head, self._head_bytes = True, 0
        if self.cycle is None or self.cycle.response_complete:
            self.shared.owing[self] = None
        deadline = self.limits.header_timeout * (1 - self.shared.jitter.random() / 4)
        self._head_timer = self.loop.call_later(deadline, self._head_timed_out)

    def _stop_head(self) -> None:
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # still answering the previous request: the clock starts once it is sent
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
            return
        self._refuse(
            408,
            "Request Timeout",
            "timeout",
            f"request line and headers not received within {self.limits.header_timeout:g} s",
            log=False,
        )

    # -- parking: a request with a body reaches the app once the body has arrived ------

    def _park(self, cycle: Any, app: Any) -> bool:
        """Hold ``cycle`` until its body is complete, if it has one that is worth waiting for."""
        headers = dict(cycle.scope["headers"])
        declared = headers.get(b"content-length", b"")
        chunked = b"transfer-encoding" in headers
        if not (chunked or (declared.isdigit() and 0 < int(declared) <= self.limits.max_body_bytes)):
            return False  # no body, or one the app refuses before reading (413, 400)
        if cycle.waiting_for_100_continue or self.shared.parked_bytes >= self.limits.parked_budget:
            return False  # the app reads it as it comes (its own deadline and budget)
        self._parked = (cycle, app)
        deadline = self.limits.body_timeout * (1 - self.shared.jitter.random() / 4)  # no waves
        self._body_timer = self.loop.call_later(deadline, self._body_timed_out)
        return True

    def _unpark(self) -> Any:
        parked, self._parked = self._parked, None
        self.shared.parked_bytes -= self._parked_held
        self._parked_held = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        return parked

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._parked is not None and not self.transport.is_closing():
            held = self._parked_held
            self._refuse(
                408, "Request Timeout", "timeout",
                f"the body did not arrive within {self.limits.body_timeout:g} s ({held:,} bytes received)",
                log=False,
            )  # fmt: skip

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if cycle.more_body and self._park(cycle, app):
            return
        super()._start_asgi_task(cycle, app)

    def _refuse(self, status: int, reason: str, code: str, detail: str, log: bool = True) -> None:
        self._stop_head()
        self._unpark()
        self.shared.owing.pop(self, None)
        self._unparsed = b""
        if log:
            self.logger.warning("%s %s", status, detail)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(json_error(status, reason, code, detail))
        elif self._in_body and not cycle.response_started and not self.pipeline:
            # the app is still reading this request's body: we answer, it is told the
            # client went away (its own answer is dropped)
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(json_error(status, reason, code, detail))
        # else: an answer in progress cannot be followed by another
        self.transport.close()

    # -- feeding the parser ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._unparsed:
            if len(self._unparsed) > MAX_UNPARSED:  # a client that ignores our pace
                self._refuse(503, "Service Unavailable", "busy", "too many pipelined requests", log=False)
                return
            data, self._unparsed = self._unparsed + data, b""
        view = memoryview(data)
        while view:
            if len(self.pipeline) >= MAX_PIPELINED:
                # enough parsed ahead: the rest waits until answers go out
                self._unparsed = bytes(view)
                self.flow.pause_reading()
                return
            if self._reading_head:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(
                        431,
                        "Request Header Fields Too Large",
                        "headers_too_large",
                        f"request line and headers over {self.limits.max_header_bytes:,} bytes",
                    )
                    return
                piece = view[: min(room, SLICE)]
                self._head_bytes += len(piece)
            else:
                piece = view[:SLICE]
            view = view[len(piece) :]
            super().data_received(bytes(piece))
            if self.transport is None or self.transport.is_closing():
                return
            if self._after_chunk_header:  # bytes after a size line and no data: trailers
                self._trailer_bytes += len(piece)
                if self._trailer_bytes > self.limits.max_header_bytes:
                    self._refuse(
                        431,
                        "Request Header Fields Too Large",
                        "trailers_too_large",
                        f"chunked body trailers over {self.limits.max_header_bytes:,} bytes",
                    )
                    return

    def _feed_unparsed(self) -> None:
        if self._unparsed and self.transport is not None and not self.transport.is_closing():
            self.data_received(b"")
            if not self._unparsed and not self.pipeline:
                self.flow.resume_reading()

    # -- uvicorn hooks -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            victim = next(iter(self.shared.owing), None)
            if victim is not None:
                victim._refuse(
                    503,
                    "Service Unavailable",
                    "busy",
                    "too many connections: the one waiting longest for bytes is closed",
                    log=False,  # a flood of connections must not become a flood of log lines
                )
            else:
                self._refuse(503, "Service Unavailable", "busy", "too many connections; retry")
                return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        self._unpark()
        self.shared.owing.pop(self, None)
        self._unparsed = b""
        super().connection_lost(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_body:  # trailers are counted in data_received and dropped
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head()
        self._in_body, self._trailer_bytes = True, 0
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._after_chunk_header = True

    def on_body(self, body: bytes) -> None:
        self._after_chunk_header, self._trailer_bytes = False, 0
        if self._parked is None:
            super().on_body(body)
            return
        # parked: held here (no app reads it yet), so no pause for the app to catch up
        if self._parked_held + len(body) > self.limits.max_body_bytes:
            self._refuse(
                413,
                "Content Too Large",
                "too_large",
                f"body is over the limit of {self.limits.max_body_bytes:,} bytes",
            )
            return
        self.cycle.body += body
        self._parked_held += len(body)
        self.shared.parked_bytes += len(body)

    def on_chunk_complete(self) -> None:
        self._after_chunk_header, self._trailer_bytes = False, 0

    def on_message_complete(self) -> None:
        self._in_body = self._after_chunk_header = False
        self.shared.owing.pop(self, None)  # owed nothing until its answer is out
        super().on_message_complete()
        if self._parked is not None:  # the body is all here: now the app may have it
            super()._start_asgi_task(*self._unpark())
        if not self.transport.is_closing():
            self._start_head()  # the next request on this connection

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._reading_head and self.cycle.response_complete:
            self.shared.owing[self] = None  # waiting for the next request head, from now
            self.shared.owing.move_to_end(self)
            if self._head_timer is not None:
                # the next request's clock starts when this answer is out, not before
                self._head_timer.cancel()
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        if self._unparsed:  # parse the waiting requests before reading more
            self.flow.pause_reading()
            self.loop.call_soon(self._feed_unparsed)

    def shutdown(self) -> None:
        if self._parked is not None:  # its app never started: nothing to finish, close now
            self._unpark()
            self.shared.owing.pop(self, None)
            self.transport.close()
            return
        super().shutdown()

    def _unsupported_upgrade_warning(self) -> None:
        # no WebSocket here: the request is answered as plain HTTP; uvicorn's advice to
        # install a WebSocket library would only mislead whoever reads the log
        self.logger.debug("upgrade request answered as plain HTTP")

    def send_400_response(self, msg: str) -> None:
        self._stop_head()
        self.shared.owing.pop(self, None)
        self._unparsed = b""
        if not self.transport.is_closing():
            self.transport.write(json_error(400, "Bad Request", "bad_http", msg))
            self.transport.close()


def guarded_protocol(
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
    max_body_bytes: int = Limits.max_body_bytes,
    body_timeout: float = Limits.body_timeout,
    parked_budget: int = PARKED_BUDGET,
) -> type:
    """A uvicorn ``http`` protocol class for one server: the guards above with these limits.

    ``max_body_bytes`` and ``body_timeout`` are the app's body limits, applied here to a
    request parked until its body has arrived.
    """
    limits = Limits(
        header_timeout=header_timeout,
        max_header_bytes=max_header_bytes,
        max_connections=_max_connections_for_fd_limit(max_connections),
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        parked_budget=parked_budget,
    )
    return type(
        "GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "shared": _Shared()}
    )
