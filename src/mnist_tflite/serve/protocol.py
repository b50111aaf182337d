"""Connection-level guards for ``serve``: header size and time limits, a connection cap.

uvicorn's httptools protocol has neither a limit on the size of a request's headers (50 MB
of headers were parsed and answered 200) nor a timeout for receiving them: its keep-alive
timer is cancelled by every byte that arrives, so a client trickling a header line every
few seconds holds its connection for ever, and its ``limit_concurrency`` counts those
connections, turning the requests of everyone else into 503s. ASGI middleware cannot help:
it runs only once the headers are complete. So this subclass of uvicorn's protocol:

- counts the bytes of each request's head (request line and headers) as they arrive and
  answers 431 and closes the connection past ``max_header_bytes``;
- gives each request ``header_timeout`` seconds, from the moment the connection (or the
  previous request) was ready for it, to complete its head, then answers 408 and closes;
- caps open connections at ``max_connections``: a new one past the cap closes the
  connection that has waited longest for its request head (a slow client, or an idle
  keep-alive), so clients that send whole requests always get in.

The body has its own deadline in the app (``read_body``). Errors are JSON like the API's.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

HEADER_TIMEOUT = 10.0  # seconds to send a request line and headers
MAX_HEADER_BYTES = 32 * 1024  # request line + headers (nginx's default buffers hold 32 KB)
MAX_CONNECTIONS = 1000


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


def guarded_protocol(
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
) -> type:
    """A uvicorn ``http`` protocol class (httptools) with the guards above."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # connections waiting for a request head, oldest first: the ones to shed at the cap
    waiting: OrderedDict[Any, None] = OrderedDict()
    cap = _max_connections_for_fd_limit(max_connections)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: Any = None
        _head_bytes = 0
        _reading_head = False

        # -- the head phase: from ready-for-a-request to headers complete ----------------

        def _start_head(self) -> None:
            self._stop_head()
            self._reading_head, self._head_bytes = True, 0
            waiting[self] = None
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _stop_head(self) -> None:
            self._reading_head = False
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport is None or self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # still answering the previous request: the clock starts once it is sent
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)
                return
            self._refuse(
                408,
                "Request Timeout",
                "timeout",
                f"request line and headers not received within {header_timeout:g} s",
                log=False,
            )

        def _refuse(self, status: int, reason: str, code: str, detail: str, log: bool = True) -> None:
            self._stop_head()
            if log:
                self.logger.warning("%s %s", status, detail)
            if not self.transport.is_closing():
                # a response in progress on this connection cannot be followed by another
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(json_error(status, reason, code, detail))
                self.transport.close()

        # -- uvicorn hooks -----------------------------------------------------------------

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > cap:
                victim = next(iter(waiting), None)
                if victim is not None:
                    victim._refuse(
                        503,
                        "Service Unavailable",
                        "busy",
                        "too many connections: the oldest idle one is closed",
                        log=False,  # a flood of connections must not become a flood of log lines
                    )
                else:
                    self._refuse(503, "Service Unavailable", "busy", "too many connections; retry")
                    return
            self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._reading_head:
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    # feed what fits: the head may end inside this chunk, its body after it
                    fits = len(data) - (self._head_bytes - max_header_bytes)
                    if fits > 0:
                        super().data_received(data[:fits])
                    if self._reading_head:
                        self._refuse(
                            431,
                            "Request Header Fields Too Large",
                            "headers_too_large",
                            f"request line and headers over {max_header_bytes:,} bytes",
                        )
                        return
                    data = data[max(fits, 0) :]
                    if not data or self.transport.is_closing():
                        return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_head()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if not self.transport.is_closing():
                self._start_head()  # the next request on this connection

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._reading_head and self._head_timer is not None and not self.transport.is_closing():
                # the next request's clock starts when this answer is out, not before
                self._head_timer.cancel()
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _unsupported_upgrade_warning(self) -> None:
            # no WebSocket here: the request is answered as plain HTTP; uvicorn's advice to
            # install a WebSocket library would only mislead whoever reads the log
            self.logger.debug("upgrade request answered as plain HTTP")

        def send_400_response(self, msg: str) -> None:
            self._stop_head()
            if not self.transport.is_closing():
                self.transport.write(json_error(400, "Bad Request", "bad_http", msg))
                self.transport.close()

    return GuardedHttpToolsProtocol
