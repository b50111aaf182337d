"""Admission control for ``serve``: which requests get a worker thread, and when to say 503.

A request to ``/api/predict`` goes through three gates, cheapest first:

1. before its body is read, a full queue refuses it at once (503 ``busy``, ``Retry-After``),
   so a crowd of uploads is not read into memory only to wait;
2. its body is read under a byte budget shared by all requests (``BodyBudget``), within a
   deadline and a size cap (:func:`mnist_tflite.serve.parsing.read_body`);
3. with the body in hand it takes a place in the queue of a bounded pool of worker threads,
   where all CPU work (parsing, decoding, preprocessing, inference) runs, never on the
   event loop; the queue is checked again, since other bodies may have arrived meanwhile.

Requests still trickling their body hold no place in the queue: the connection layer
(:mod:`mnist_tflite.serve.protocol`) parks a request until its body has arrived, so a
request that arrives whole is admitted ahead of those still trickling, and at the
connection cap the trickling ones are shed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mnist_tflite.serve.parsing import ApiError, BodyBudget, read_body

__all__ = ["BODY_BUDGET", "BODY_TIMEOUT", "MAX_WAITING", "Admission"]

BODY_TIMEOUT = 30.0  # seconds for a request body to arrive (5 MiB at 175 KB/s)
MAX_WAITING = 64  # requests queued for a worker beyond this get a 503 at once
BODY_BUDGET = 128 * 1024 * 1024  # request bodies held in memory at once, all requests together


class Admission:
    """A bounded pool of worker threads with a bounded queue and a shared body budget.

    Args:
        max_upload_bytes: one request's body over this is refused with 413.
        body_timeout: a body still arriving after this many seconds is refused with 408.
        workers: threads doing CPU work (default: one per core).
        max_waiting: requests waiting for a worker beyond this are refused with 503.
        budget_bytes: bodies held in memory by all requests together; past it, 503.

    Example:
        >>> admission = Admission(5 * 1024 * 1024)
        >>> answer = await admission.answer(request, work)  # work(content_type, body) -> bytes
    """

    def __init__(
        self,
        max_upload_bytes: int,
        *,
        body_timeout: float = BODY_TIMEOUT,
        workers: int | None = None,
        max_waiting: int = MAX_WAITING,
        budget_bytes: int = BODY_BUDGET,
    ) -> None:
        self.max_upload_bytes = int(max_upload_bytes)
        self.body_timeout = float(body_timeout)
        # one thread per core: measured with photo uploads at concurrency 16 on 2 cores, two
        # per core cost 15-30 % more CPU per request (GIL hand-offs) and raised p99 by ~15 %
        self.workers = int(workers or os.cpu_count() or 1)
        self.max_waiting = int(max_waiting)
        self.budget = BodyBudget(budget_bytes)
        # a FIFO queue of threads, whatever event loop asks: the test client runs one loop
        # per request, uvicorn one for all
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mnist-tflite-worker")
        self._queued = 0  # jobs submitted and not finished
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """Jobs running or waiting, at most."""
        return self.workers + self.max_waiting

    def _busy(self) -> ApiError:
        return ApiError(503, "busy", "server busy: too many requests waiting; retry", {"Retry-After": "1"})

    def _job(self, work: Callable[[str, bytes], bytes], ctype: str, body: bytes) -> bytes:
        # the place is given back by the thread, when the work is done: a client that hangs
        # up does not free it while its job still runs
        try:
            return work(ctype, body)
        finally:
            with self._lock:
                self._queued -= 1

    async def answer(self, request: Any, work: Callable[[str, bytes], bytes]) -> bytes:
        """Read ``request``'s body and run ``work(content_type, body)`` in a worker thread.

        Raises:
            ApiError: 503 when the queue or the body budget is full, 408/413/400 from
                reading the body, or whatever ``work`` raises.
        """
        if self._queued >= self.limit:  # refuse before reading the body
            raise self._busy()
        body = await read_body(request, self.max_upload_bytes, self.budget, self.body_timeout)
        request.state.body_read = True
        try:
            with self._lock:
                if self._queued >= self.limit:
                    raise self._busy()
                self._queued += 1
            loop = asyncio.get_running_loop()
            ctype = request.headers.get("content-type", "")
            return await loop.run_in_executor(self._pool, self._job, work, ctype, body)
        finally:
            self.budget.give(len(body))
