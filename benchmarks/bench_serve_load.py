"""Load test of ``mnist-tflite serve`` on loopback: requests/s, p50/p99 latency, errors, server RSS.

Starts the real server (``mnist-tflite serve MODEL --port 0``) in a subprocess bound to
127.0.0.1 (the only address this script talks to), sends a bounded number of
``POST /api/predict`` requests at a fixed concurrency over keep-alive connections, and reads
the server's VmRSS from /proc before and after. Every answer is also checked against the
same model run directly with LiteRT in this process.

The default client is a minimal HTTP/1.1 client on asyncio streams: on a 2-core machine a
heavier client (``--client httpx``) competes with the server for CPU and inflates latency.

Usage:
    python benchmarks/bench_serve_load.py                     # 10,000 requests, concurrency 16
    python benchmarks/bench_serve_load.py --payload png --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mnist_tflite.atomic import write_json  # temp file + rename: no half-written JSON

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


def _start_server(model: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "mnist_tflite.cli", "serve", str(model), "--host", HOST, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/"; "" if it died
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
    return proc, port


def _payloads(kind: str) -> tuple[list[tuple[str, bytes]], np.ndarray]:
    """(content type, body) for POOL real test digits, and their 28x28 float inputs."""
    from PIL import Image

    from mnist_tflite import data

    x = data.load("embedded").x_test[:POOL]
    out = []
    for img in x:
        if kind == "json":
            out.append(("application/json", json.dumps({"pixels": img.tolist()}).encode()))
        else:  # a small PNG, dark ink on white like a scan: goes through to_mnist
            buf = io.BytesIO()
            Image.fromarray(255 - img).resize((56, 56)).save(buf, "PNG")
            out.append(("image/png", buf.getvalue()))
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
                ctype, body = payloads[i % len(payloads)]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--payload", choices=("json", "png"), default="json")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        ap.error("--requests must be 1..100000 and --concurrency 1..256")

    from mnist_tflite.edge.infer import TfliteModel

    payloads, x = _payloads(args.payload)
    direct = TfliteModel(args.model, num_threads=1)
    if args.payload == "json":
        expected = direct.predict(x.astype(np.float32) / 255.0)
    else:
        from mnist_tflite.edge.preprocess import load_image, to_mnist

        expected = direct.predict(np.stack([to_mnist(load_image(b)) for _, b in payloads]))
    proc, port = _start_server(args.model)
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
        "server_rss_kb": {"before": rss_before, "after": rss_after, "growth": rss_after - rss_before},
        "machine": {
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
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
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
