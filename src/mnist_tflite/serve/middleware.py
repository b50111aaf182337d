"""ASGI middleware of ``serve``: the ``Host`` allow-list, and HEAD answered like GET.

DNS rebinding: a web page on ``evil.example`` whose name is made to resolve to 127.0.0.1
can drive a server on loopback from the user's browser, but the browser still sends
``Host: evil.example``. So a server bound to a loopback address answers only requests
naming a loopback host (``127.0.0.1``, ``localhost``, ``[::1]``, any port); one bound to a
specific address also that address; one bound to every interface (``0.0.0.0``, ``::``)
cannot know its names and takes any (``serve`` warns about that binding).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Guard", "allowed_hosts"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def allowed_hosts(bind: str) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``bind`` answers to (None: any).

    Example:
        >>> sorted(allowed_hosts("127.0.0.1"))
        ['127.0.0.1', '::1', 'localhost']
    """
    host = bind.strip("[]").lower()
    if host in ("0.0.0.0", "::", ""):
        return None
    return LOOPBACK_NAMES | {host}


def host_name(value: str) -> str:
    """A ``Host`` header value -> its name, without a port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name if port.isdigit() or not port else value


def _refusal(status: int, code: str, detail: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the body, if any, was not read
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class Guard:
    """ASGI middleware: refuse a ``Host`` outside ``hosts`` (400 ``bad_host``), answer HEAD as GET.

    Example:
        >>> app.add_middleware(Guard, hosts=allowed_hosts("127.0.0.1"))
    """

    def __init__(self, app: Any, hosts: frozenset[str] | None = None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            value = next((v for k, v in scope["headers"] if k == b"host"), None)
            if value is not None and host_name(value.decode("latin-1")) not in self.hosts:
                shown = value.decode("latin-1")[:100]
                start, body = _refusal(
                    400,
                    "bad_host",
                    f"Host {shown!r} is not served here; this server answers to "
                    f"{', '.join(sorted(self.hosts))} (another name reaching it is refused: DNS rebinding)",
                )
                await send(start)
                await send(body)
                return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: dict[str, Any]) -> None:
            # the GET answer's status and headers (its Content-Length included), no body
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
