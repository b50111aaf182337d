"""Load test of ``mnist-tflite serve`` on loopback: requests/s, p50/p99 latency, errors, server RSS.

Starts the real server (``mnist-tflite serve MODEL --port 0``) in a subprocess bound to
127.0.0.1 (the only address this script talks to), sends a bounded number of
``POST /api/predict`` requests at a fixed concurrency over keep-alive connections, and reads
the server's VmRSS from /proc before and after. Every answer is also checked against the
same model run directly with LiteRT in this process.

The default client is a minimal HTTP/1.1 client on asyncio streams: on a 2-core machine a
heavier client (``--client httpx``) competes with the server for CPU and inflates latency.

Payloads: ``json`` (a 28x28 pixel array), ``png`` (a 56x56 scan-like PNG), ``photo`` (the
realistic photo files of ``make_photo_digits.py``: 60-600 px, JPEG/PNG/WebP/TIFF/BMP, paper
or board, uneven light; uploaded as multipart like the page does).

``--mode slow-clients`` measures the server under a slowloris-style load instead: it
opens ``--slow`` connections that each trickle a header line every ``--trickle`` seconds,
and meanwhile times ``GET /healthz`` one request at a time and sends good predictions;
it also sends 50 MB of headers on one connection and records the answer.

Usage:
    python benchmarks/bench_serve_load.py                     # 10,000 requests, concurrency 16
    python benchmarks/bench_serve_load.py --payload png --requests 2000
    python benchmarks/bench_serve_load.py --payload photo     # -> results/serve_load_photo.json
    python benchmarks/bench_serve_load.py --mode slow-clients  # -> results/serve_slow_clients.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mnist_tflite.core.atomic import write_json  # temp file + rename: no half-written JSON

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, by construction
POOL = 200  # distinct digits cycled through


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds all processes on this machine have spent busy (from /proc/stat)."""
    v = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _start_server(model: Path, **options) -> tuple[subprocess.Popen, int]:
    if options:  # serve() options the CLI does not take (timeouts for a short benchmark)
        code = (
            "from mnist_tflite.serve.app import serve\n"
            f"serve({str(model)!r}, host={HOST!r}, port=0, log=lambda m: print(m, flush=True),"
            f" **{options!r})\n"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "mnist_tflite.cli", "serve", str(model), "--host", HOST, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/"; "" if it died
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
    return proc, port


def _payloads(kind: str) -> tuple[list[tuple[str, bytes, bytes]], np.ndarray]:
    """(content type, body, image file) for POOL real test digits, and the digits (uint8)."""
    from PIL import Image

    from mnist_tflite.core import data

    d = data.load("embedded")
    x = d.x_test[:POOL]
    out = []
    if kind == "photo":
        import tempfile

        sys.path.insert(0, str(ROOT))
        from benchmarks.make_photo_digits import make

        with tempfile.TemporaryDirectory(prefix="photo_digits_") as tmp:
            made = make(x, d.y_test[:POOL], Path(tmp), count=POOL, seed=0)
            files = [(p.suffix, p.read_bytes()) for p, _ in made]
        boundary = "mnist-tflite-bench-boundary"
        ctype = f"multipart/form-data; boundary={boundary}"
        for suffix, data_ in files:
            body = (
                (
                    f"--{boundary}\r\nContent-Disposition: form-data; "
                    f'name="image"; filename="photo{suffix}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + data_
                + f"\r\n--{boundary}--\r\n".encode()
            )
            out.append((ctype, body, data_))
        return out, x
    for img in x:
        if kind == "json":
            out.append(("application/json", json.dumps({"pixels": img.tolist()}).encode(), b""))
        else:  # a small PNG, dark ink on white like a scan: goes through to_mnist
            buf = io.BytesIO()
            Image.fromarray(255 - img).resize((56, 56)).save(buf, "PNG")
            out.append(("image/png", buf.getvalue(), buf.getvalue()))
    return out, x


class _RawClient:
    """One keep-alive HTTP/1.1 connection; just enough protocol for this server."""

    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def post(self, path: str, ctype: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "connection" and "close" in value.lower():
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.aclose()
        return status, data

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class _HttpxClient:
    def __init__(self, port: int) -> None:
        import httpx

        self.port = port
        self.client = httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30)

    async def post(self, path: str, ctype: str, body: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=body, headers={"content-type": ctype})
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


async def _load(port: int, payloads, expected, n: int, concurrency: int, client_kind: str, time_limit: float):
    latencies = np.full(n, np.nan)
    errors: dict[str, int] = {}
    mismatches = 0
    next_i = 0
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal next_i, mismatches
        client = _RawClient(port) if client_kind == "raw" else _HttpxClient(port)
        try:
            while next_i < n and time.monotonic() < deadline:
                i, next_i = next_i, next_i + 1
                ctype, body, _ = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(client.post("/api/predict", ctype, body), 30)
                except Exception as exc:  # count it, reconnect, go on
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    await client.aclose()
                    continue
                latencies[i] = time.perf_counter() - t0
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                elif json.loads(data)["label"] != expected[i % len(expected)]:
                    mismatches += 1
        finally:
            await client.aclose()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client_cpu = time.process_time() - cpu0
    return time.perf_counter() - t0, latencies, errors, mismatches, next_i, client_cpu


def _machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _request_once(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection -> (status, body); status 0 if closed unanswered."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            s.sendall(raw)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return 0, data
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                 if k.strip().lower() == b"content-length"),
                0,
            )  # fmt: skip
            while len(body) < length and (chunk := s.recv(65536)):
                body += chunk
            return int(head.split()[1]), body
        except (ConnectionResetError, BrokenPipeError):
            return 0, data


def _huge_headers(port: int, total: int = 50_000_000) -> dict:
    """Send up to ``total`` bytes of one header; what did the server do, after how many bytes?"""
    sent, t0 = 0, time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            while sent < total:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        try:
            answer = s.recv(200)
        except OSError:
            answer = b""
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
    return {"attempted_bytes": total, "sent_before_refusal": sent, "status": status,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def _slow_clients(args: argparse.Namespace, out_path: Path) -> int:
    """Slowloris-style: ``--slow`` connections trickling header lines; time /healthz meanwhile."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.slow + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.slow + 1000), hard))
    png = io.BytesIO()
    from PIL import Image

    digit = np.full((112, 112), 255, np.uint8)
    digit[22:90, 49:63] = 0  # a "1", dark on white
    Image.fromarray(digit).save(png, "PNG")
    predict_req = (
        f"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(png.getvalue())}\r\nConnection: close\r\n\r\n"
    ).encode() + png.getvalue()
    healthz_req = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    # the header timeout is longer than the run, so every slow connection stays open throughout
    proc, port = _start_server(args.model, header_timeout=args.duration + 30)
    slow: list[socket.socket] = []
    healthz, predicts, statuses = [], [], {}
    try:
        for _ in range(args.slow):
            s = socket.create_connection((HOST, port), timeout=10)
            s.setblocking(False)
            s.send(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode())
            slow.append(s)
        cpu0 = _cpu_s(proc.pid)
        t_end = time.monotonic() + args.duration
        next_line, k = time.monotonic() + args.trickle, 0
        while time.monotonic() < t_end:  # bounded by --duration
            if time.monotonic() >= next_line:
                k += 1
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.send(f"X-Slow-{k}: {'a' * 20}\r\n".encode())
                next_line += args.trickle
            t0 = time.perf_counter()
            status, _ = _request_once(port, healthz_req)
            healthz.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if len(healthz) % 10 == 0:
                t0 = time.perf_counter()
                status, body = _request_once(port, predict_req)
                label = json.loads(body).get("label") if status == 200 else None
                predicts.append({"status": status, "label": label, "ms": (time.perf_counter() - t0) * 1000})
            time.sleep(0.01)
        server_cpu = _cpu_s(proc.pid) - cpu0

        def still_open(s: socket.socket) -> bool:
            try:
                return s.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                return True
            except OSError:
                return False

        open_at_end = sum(still_open(s) for s in slow)
        huge = _huge_headers(port)
        alive = _request_once(port, healthz_req)[0]
    finally:
        for s in slow:
            s.close()
        proc.terminate()
        proc.wait(10)
    lat = np.array(healthz) * 1000
    good = [p for p in predicts if p["status"] == 200 and p["label"] == 1]
    result = {
        "mode": "slow-clients",
        "model": args.model.name,
        "slow_connections": args.slow,
        "trickle_s": args.trickle,
        "header_lines_per_connection": k,
        "duration_s": args.duration,
        "slow_connections_open_at_end": open_at_end,
        "healthz": {
            "requests": len(lat),
            "statuses": {str(k_): v for k_, v in statuses.items()},
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()),
        },
        "predict": {
            "requests": len(predicts),
            "good": len(good),
            "p50_ms": float(np.percentile([p["ms"] for p in predicts], 50)) if predicts else None,
        },
        "server_cpu_s": server_cpu,
        "huge_headers": huge,
        "healthz_after": alive,
        "load_average_1min_end": os.getloadavg()[0],
        "machine": _machine(),
    }
    print(f"| serve under {args.slow} slow clients on {HOST} | |\n|---|---|")
    for key, value in (
        ("slow connections open at the end", f"{open_at_end} / {args.slow}"),
        ("header lines each, every (s)", f"{k}, {args.trickle:g}"),
        ("/healthz requests, statuses", f"{len(lat)}, {statuses}"),
        (
            "/healthz p50 / p99 / max (ms)",
            "{p50_ms:.1f} / {p99_ms:.1f} / {max_ms:.1f}".format(**result["healthz"]),
        ),
        ("good /api/predict answers", f"{len(good)} / {len(predicts)}"),
        ("50 MB of headers", f"HTTP {huge['status']} after {huge['sent_before_refusal']:,} bytes"),
        ("server CPU during the run (s)", f"{server_cpu:.2f}"),
    ):
        print(f"| {key} | {value} |")
    write_json(out_path, result)
    print(f"wrote {out_path}")
    ok = result["healthz"]["p99_ms"] <= 100 and len(good) == len(predicts) > 0 and huge["status"] in (0, 431)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mode", choices=("load", "slow-clients"), default="load")
    ap.add_argument("--payload", choices=("json", "png", "photo"), default="json")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    ap.add_argument("--slow", type=int, default=500, help="slow-clients mode: slow connections")
    ap.add_argument("--trickle", type=float, default=4.0, help="slow-clients mode: seconds between lines")
    ap.add_argument("--duration", type=float, default=20.0, help="slow-clients mode: seconds to measure")
    ap.add_argument("--workers", type=int, help="server worker threads (default: the server's own)")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/serve_load[_PAYLOAD].json")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        ap.error("--requests must be 1..100000 and --concurrency 1..256")
    if not 1 <= args.slow <= 2000 or not 0.5 <= args.trickle <= 60 or not 1 <= args.duration <= 600:
        ap.error("--slow must be 1..2000, --trickle 0.5..60 and --duration 1..600")
    results = ROOT / "benchmarks" / "results"
    if args.mode == "slow-clients":
        return _slow_clients(args, args.out or results / "serve_slow_clients.json")
    out_path = args.out or results / (
        "serve_load.json" if args.payload == "json" else f"serve_load_{args.payload}.json"
    )

    from mnist_tflite.edge.infer import TfliteModel

    payloads, x = _payloads(args.payload)
    direct = TfliteModel(args.model, num_threads=1)
    if args.payload == "json":
        expected = direct.predict(x.astype(np.float32) / 255.0)
    else:
        from mnist_tflite.edge.preprocess import load_image, to_mnist

        expected = direct.predict(np.stack([to_mnist(load_image(f)) for _, _, f in payloads]))
    proc, port = _start_server(args.model, **({"workers": args.workers} if args.workers else {}))
    try:
        asyncio.run(_load(port, payloads, expected, args.warmup, args.concurrency, args.client, 60))
        rss_before, cpu_before = _rss_kb(proc.pid), _cpu_s(proc.pid)
        load_before, busy_before = os.getloadavg()[0], _busy_s()
        wall, lat, errors, mismatches, sent, client_cpu = asyncio.run(
            _load(port, payloads, expected, args.requests, args.concurrency, args.client, args.time_limit)
        )
        rss_after, cpu_after, busy_after = _rss_kb(proc.pid), _cpu_s(proc.pid), _busy_s()
    finally:
        proc.terminate()
        proc.wait(10)
    done = lat[~np.isnan(lat)] * 1000
    result = {
        "model": args.model.name,
        "payload": args.payload,
        "client": args.client,
        "requests": args.requests,
        "sent": sent,
        "concurrency": args.concurrency,
        "server_workers": args.workers or "default (1 per core)",
        "errors": sum(errors.values()) + (args.requests - sent),
        "error_kinds": errors,
        "wrong_vs_direct_litert": mismatches,
        "seconds": wall,
        "requests_per_s": len(done) / wall,
        "latency_ms": {
            "p50": float(np.percentile(done, 50)),
            "p90": float(np.percentile(done, 90)),
            "p99": float(np.percentile(done, 99)),
            "max": float(done.max()),
            "mean": float(done.mean()),
        },
        "server_cpu_ms_per_request": (cpu_after - cpu_before) * 1000 / max(len(done), 1),
        "client_cpu_ms_per_request": client_cpu * 1000 / max(len(done), 1),
        "load_average_1min_before": load_before,
        # the machine is shared: cores' worth of CPU that other processes used during the run
        "other_processes_cores": (busy_after - busy_before - (cpu_after - cpu_before) - client_cpu) / wall,
        # latency figures compare only between quiet runs; CPU per request holds either way
        "quiet_machine": (busy_after - busy_before - (cpu_after - cpu_before) - client_cpu) / wall < 0.1,
        "server_rss_kb": {"before": rss_before, "after": rss_after, "growth": rss_after - rss_before},
        "machine": _machine(),
    }
    rows = [
        ("requests (sent / asked)", f"{sent:,} / {args.requests:,}"),
        ("concurrency", str(args.concurrency)),
        ("payload / client", f"{args.payload} / {args.client}"),
        ("errors", f"{result['errors']} {errors or ''}".strip()),
        ("answers != direct LiteRT", str(mismatches)),
        ("requests/s", f"{result['requests_per_s']:,.0f}"),
        ("latency p50 / p90 / p99 (ms)", "{p50:.2f} / {p90:.2f} / {p99:.2f}".format(**result["latency_ms"])),
        ("latency max (ms)", f"{result['latency_ms']['max']:.2f}"),
        (
            "CPU per request, server / client (ms)",
            f"{result['server_cpu_ms_per_request']:.2f} / {result['client_cpu_ms_per_request']:.2f}",
        ),
        ("1-min load average before", f"{load_before:.2f}"),
        ("other processes' CPU during the run (cores)", f"{result['other_processes_cores']:.2f}"),
        ("server RSS before -> after (MB)", f"{rss_before / 1024:.1f} -> {rss_after / 1024:.1f}"),
        ("server RSS growth (MB)", f"{(rss_after - rss_before) / 1024:+.2f}"),
    ]
    print(f"| serve load: {args.model.name} on {HOST} | |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    write_json(out_path, result)
    print(f"wrote {out_path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
