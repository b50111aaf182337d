"""Try a model in a throwaway child process: a corrupt flatbuffer may crash the interpreter.

LiteRT verifies the flatbuffer's structure, but a structurally valid file with bad tensor
indices or shapes can still take the process down with a signal. A forked child pays
that price instead of the caller.
"""

from __future__ import annotations

import os
import select
import signal
import time

import numpy as np

from mnist_tflite.core.errors import first_line

PROBE_TIMEOUT_S = 30.0


def _load_and_invoke(data: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from mnist_tflite.edge.quiet import stderr_silenced

    with stderr_silenced():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" banner: not ours
        interp = Interpreter(model_content=data)
        interp.allocate_tensors()
        for det in interp.get_input_details():
            interp.set_tensor(det["index"], np.zeros(det["shape"], dtype=det["dtype"]))
        interp.invoke()
        for det in interp.get_output_details():
            interp.get_tensor(det["index"])


def probe(data: bytes, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Load, allocate and invoke the model in a child; None if it worked, else why not."""
    if not hasattr(os, "fork"):  # pragma: no cover - Windows: trust LiteRT's own verifier
        return None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one line, never return into the caller's code
        os.close(read_fd)
        code = 0
        try:
            _load_and_invoke(data)
        except BaseException as exc:
            os.write(write_fd, first_line(exc, 2000).encode("utf-8", "replace")[:2000])
            code = 1
        os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"the interpreter did not finish loading it within {timeout_s:.0f} s"
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"corrupt model: the TFLite interpreter crashed ({name}) while loading it"
    if os.WEXITSTATUS(status) != 0:
        return b"".join(chunks).decode("utf-8", "replace") or "the interpreter rejected it"
    return None
