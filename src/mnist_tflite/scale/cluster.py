"""Connecting to Ray: a local instance by default, a cluster with ``--address``.

Ray is an optional extra (``pip install 'mnist-tflite[scale]'``); without it, or with an
address where no cluster answers, the user gets one line, fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from mnist_tflite.core.errors import MnistTfliteError, first_line
from mnist_tflite.core.reaper import reaping

INSTALL_HINT = "pip install 'mnist-tflite[scale]'"
CONNECT_TIMEOUT_S = 4.0
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# C++ log lines of Ray's that say nothing to a user of this tool
NOISE = (
    "has constructor arguments in the object store and max_restarts > 0",  # Ray Data's own actor settings
    "Failed to determine local IP via external connectivity",  # a host (or namespace) without a route out
)


_GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # every Ray GCS answers it
_START_HINT = "start one with `ray start --head --port PORT`, or leave out --address to run on this machine"
# HTTP/2 client connection preface + an empty SETTINGS frame
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def require_ray() -> None:
    """Raise a one-line error naming the pip command unless Ray is installed (without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MnistTfliteError(f"this command needs Ray, which is not installed: {INSTALL_HINT}")


def _import_ray(local: bool) -> Any:
    """Import Ray; for a private local instance, make it use loopback addresses.

    Ray replaces 127.0.0.1 by the host's network address unless multi-node clusters are
    switched off (its switch for Windows and macOS); a private instance has one node, so
    its processes then talk over loopback only.
    """
    if local:
        os.environ.setdefault(_SINGLE_NODE_ENV, "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        require_ray()
        raise
    if local and os.environ.get(_SINGLE_NODE_ENV) == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS address (None for ``auto``, which Ray resolves itself)."""
    if address == "auto":
        return None
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise MnistTfliteError(
            f"--address {address!r}: expected HOST:PORT of a Ray head (as printed by `ray start --head`)"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line error unless something accepts TCP connections at ``address``.

    Ray's own connection attempt retries for a minute or more; this answers in seconds.
    """
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            # Ray's GCS speaks gRPC: an HTTP/2 server answers the client preface with a SETTINGS
            # frame. Anything else (a web server, a database) would leave ray.init retrying for minutes.
            sock.sendall(_H2_PREFACE)
            reply = sock.recv(9)
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
        problem = f"--address {address}: no Ray cluster reachable ({why}); {_START_HINT}"
        raise MnistTfliteError(problem) from None
    if len(reply) < 9 or reply[3] != 0x4:  # frame type 4: SETTINGS
        raise MnistTfliteError(
            f"--address {address}: something answers there, but not a Ray cluster (no gRPC); {_START_HINT}"
        )
    why = _not_ray_gcs(hp, timeout_s)
    if why:
        raise MnistTfliteError(
            f"--address {address}: something answers there, but not a Ray cluster ({why}); {_START_HINT}"
        )


def _not_ray_gcs(host_port: tuple[str, int], timeout_s: float) -> str | None:
    """Why the gRPC server at ``host_port`` is not Ray's GCS, or None when it answers as one.

    A proxy or another gRPC server also speaks HTTP/2 (this network's egress proxy answers
    every address); ray.init would then retry for 20 s or more. A GCS answers the call
    ``GetClusterId``, possibly refusing a missing token (then it is still a GCS).
    """
    import grpc

    host, port = host_port
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(_GCS_PROBE, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                return f"gRPC {code.name.lower()}: {first_line(str(exc.details()), 80)}"  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no gRPC answer within {timeout_s:g} s"
    return None


@contextlib.contextmanager
def connected(
    address: str | None = None, *, num_cpus: int | None = None, temp_prefixes: tuple[str, ...] = ()
) -> Iterator[Any]:
    """Ray, initialized: the cluster at ``address``, or a private local instance; shut down after.

    Even after ``kill -9`` of this process, what Ray started here ends within a second or two
    and the temp folders ``<prefix>-<pid>-*`` of the workers are swept (:mod:`core.reaper`).
    Yields the ``ray`` module.
    """
    require_ray()
    if address:
        check_reachable(address)
    with reaping(temp_prefixes):
        yield from _connected(address, num_cpus)


def _connected(address: str | None, num_cpus: int | None) -> Iterator[Any]:
    ray = _import_ray(local=not address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's start-up chatter ("Started a local Ray instance", deprecation notes) is not ours
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if address:
        kwargs.pop("include_dashboard")
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    ours = signal.getsignal(signal.SIGTERM)
    with stderr_filtered():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # "local": a new private instance, even when `ray start` left a cluster on this machine
                ray.init(address=address or "local", **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MnistTfliteError(
                    f"--address {address}: cannot connect to Ray ({first_line(exc, 160)})"
                ) from None
        _take_back_sigterm(ours)
        try:
            yield ray
        finally:
            ray.shutdown()


def _take_back_sigterm(ours: Any) -> None:
    """``ray.init`` replaces the SIGTERM handler twice (its C++ core: dump a stack and abort, exit
    -6; its Python side: ``sys.exit``); put back the one we had (the CLI's: clean up, exit 130)."""
    if ours is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, ours)


@contextlib.contextmanager
def stderr_filtered(drop: tuple[str, ...] = NOISE) -> Iterator[None]:
    """Pass this process's fd 2 through a filter that drops lines containing any of ``drop``.

    Ray's C++ core worker logs harmless warnings straight to fd 2 (not through Python's
    logging), e.g. about Ray Data's own actor settings; they are not the user's problem.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as src:
            for line in src:
                if not any(d.encode() in line for d in drop):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(saved)


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
