"""The draw-a-digit page with the model on the visitor's device (WebAssembly).

``export_site`` (``mnist-tflite export-web``) writes a static folder any static host serves:
the page of ``serve`` (``static/``), the model compiled by ``compile --target wasm`` (plain
and SIMD128 builds and their ES module, in ``wasm/``) and a service worker that keeps every
file for offline use. ``DeviceBuild`` gives ``serve`` the same ``wasm/`` files for its default
variant, compiled on the first request for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mnist_tflite.core import rundir
from mnist_tflite.core.errors import MnistTfliteError, fail

FORMAT = "mnist-tflite-site/1"
MARKER = "site.json"
NAME = "mnist_model"  # the C name of the compiled model: wasm/mnist_model.mjs
WASM_DIR = "wasm"
PAGE_FILES = ("app.js", "device.js", "segment.js", "style.css")
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'"
)
MEDIA_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm", ".bin": "application/octet-stream"}


@dataclass(frozen=True)
class SiteOptions:
    model: Path
    out: Path
    force: bool = False
    images: int = 100  # test images checked in Node against TFLM before the site is written
    data: str = "embedded"


def _static(name: str) -> bytes:
    return (resources.files("mnist_tflite.serve") / "static" / name).read_bytes()


def compiled_files(raw: bytes, label: str) -> tuple[Any, dict[str, bytes]]:
    """Compile a flatbuffer to the browser files (``wasm/<NAME>.mjs``, ``.wasm``, ``.simd.wasm``).

    Raises MnistTfliteError (one line) when the model does not compile or clang/lld are missing.
    """
    from mnist_tflite.core.sidecar import sha256_bytes
    from mnist_tflite.micro.aot import wasm
    from mnist_tflite.micro.aot.compiler import compile_model

    problem = wasm.toolchain_problem()
    if problem:
        raise MnistTfliteError(problem.replace("--target wasm", "the in-browser model"))
    program = compile_model(raw, label)
    with tempfile.TemporaryDirectory(prefix="mnist-tflite-web-") as tmp_name:
        tmp = Path(tmp_name)
        wasm.write_sources(tmp, program, NAME, label, sha256_bytes(raw))
        wasm.build(tmp, NAME)
        whole = wasm.files(NAME)
        plain, simd = ((tmp / whole[k]).read_bytes() for k in ("plain", "simd"))
    f = wasm.shared_files(NAME)
    # the weights are most of each build: the site keeps its data section once, for both
    parts = dict(zip(("plain", "simd", "data"), wasm.split_data(plain, simd), strict=True))
    parts["module"] = wasm.module_source(NAME, program, shared=True).encode()
    return program, {f"{WASM_DIR}/{f[k]}": data for k, data in parts.items()}


class DeviceBuild:
    """``serve``'s in-browser model: one variant compiled to WebAssembly when first asked for.

    ``info()`` says at once whether the variant compiles (the compiler's check, no clang run);
    ``file(name)`` builds on the first call (a second or two; one build, whatever the callers).
    """

    def __init__(self, raw: bytes, variant: str) -> None:
        from mnist_tflite.micro.aot import wasm
        from mnist_tflite.micro.aot.compiler import compile_model

        self.variant, self._raw = variant, raw
        self._files: dict[str, bytes] | None = None
        self._lock = threading.Lock()
        self.problem = wasm.toolchain_problem()
        if self.problem is None:
            try:
                compile_model(raw, f"{variant}.tflite")
            except MnistTfliteError as exc:
                self.problem = str(exc)

    def info(self) -> dict[str, Any]:
        if self.problem:
            return {
                "device": None,
                "device_note": f"{self.variant} is not compiled for the browser: {self.problem}",
            }
        return {"device": {"variant": self.variant, "module": f"{WASM_DIR}/{NAME}.mjs"}}

    def file(self, name: str) -> bytes | None:
        """The bytes of ``wasm/<name>``, or None (unknown file, or the model does not compile)."""
        if self.problem:
            return None
        with self._lock:
            if self._files is None:
                _, self._files = compiled_files(self._raw, f"{self.variant}.tflite")
        return self._files.get(f"{WASM_DIR}/{name}")


def page(model_name: str) -> bytes:
    """The page of ``serve`` as a static site's ``index.html``: no server, its own CSP."""
    html = _static("index.html").decode("utf-8")
    meta = f'  <meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    html = html.replace('  <link rel="stylesheet"', meta + '  <link rel="stylesheet"', 1)
    body = f'<body data-site="static" data-model="{model_name}">'
    if "<body>" not in html or meta not in html:
        raise RuntimeError("static/index.html has no <body> or <link rel=stylesheet> to rewrite")
    return html.replace("<body>", body, 1).encode("utf-8")


def service_worker(files: dict[str, bytes]) -> bytes:
    """``sw.js``: caches every file of the site on install, then answers from the cache first."""
    digest = hashlib.sha256(b"".join(hashlib.sha256(v).digest() for _, v in sorted(files.items())))
    urls = ["./", *sorted(files)]
    return f"""// mnist-tflite export-web: keeps the whole site ({len(files)} files) for offline use.
const CACHE = "mnist-tflite-{digest.hexdigest()[:16]}";
const FILES = {json.dumps(urls)};

self.addEventListener("install", (event) => {{
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
}});

self.addEventListener("activate", (event) => {{
  const old = (k) => k.startsWith("mnist-tflite-") && k !== CACHE;
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter(old).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
}});

self.addEventListener("fetch", (event) => {{
  if (event.request.method !== "GET") return;
  event.respondWith(
    caches.open(CACHE).then((c) => c.match(event.request, {{ ignoreSearch: true }}))
      .then((hit) => hit || fetch(event.request)),
  );
}});
""".encode()


def _check_out(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise fail(out, "exists and is not a directory; expected a new folder for the site")
    try:
        ours = json.loads((out / MARKER).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if any(out.iterdir()) and not ours:
        raise fail(out, f"exists and was not written by export-web (no {MARKER}); not replacing it")
    if ours and not force:
        raise fail(out, "already holds a site (pass --force to replace it)")


def export_site(opts: SiteOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the static draw-a-digit site for ``opts.model`` into ``opts.out``; returns site.json.

    Raises MnistTfliteError (one line, nothing written) for a model that does not compile,
    missing clang/lld, an ``--out`` not written by export-web, or in-page rows that differ
    from TFLM on the checked test images.

    Example:
        >>> export_site(SiteOptions(Path("runs/demo/int8.tflite"), Path("site")))["bytes"]
    """
    from mnist_tflite.core.sidecar import sha256_bytes
    from mnist_tflite.micro.aot.compiler import load_program

    _check_out(Path(opts.out), opts.force)
    raw, _ = load_program(opts.model)  # one line for a float model or an op without a kernel
    model_name = Path(opts.model).stem
    log(f"compiling {Path(opts.model).name} to WebAssembly (plain and SIMD128)")
    program, files = compiled_files(raw, Path(opts.model).name)
    files.update({f"static/{n}": _static(n) for n in PAGE_FILES})
    files["index.html"] = page(model_name)
    check = _check_in_node(files, raw, program, opts, log)
    files["sw.js"] = service_worker(files)
    summary = {
        "format": FORMAT,
        "model": str(opts.model),
        "sha256": sha256_bytes(raw),
        "variant": model_name,
        "files": {name: len(data) for name, data in sorted(files.items())},
        "bytes": sum(len(d) for d in files.values()),
        "verification": check,
    }
    out = Path(opts.out)
    with rundir.transaction(out) as staging:
        _check_out(out, opts.force)  # again, under the lock
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        (staging / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _check_in_node(
    files: dict[str, bytes], raw: bytes, program: Any, opts: SiteOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """The site's own module and SIMD build in Node on test images, against TFLM."""
    from mnist_tflite.core import data as data_mod
    from mnist_tflite.micro.aot import build as aot
    from mnist_tflite.micro.aot import wasm

    problem = wasm.node_problem()
    if problem:
        return {"vs_tflm": problem}
    ds = data_mod.load(opts.data, log=log, test_only=True)
    count = max(1, min(opts.images, len(ds.x_test)))
    inputs = aot.quantize_images(ds.x_test[:count], program.input.scale, program.input.zero_point)
    with tempfile.TemporaryDirectory(prefix="mnist-tflite-web-") as tmp_name:
        tmp = Path(tmp_name)
        f = wasm.shared_files(NAME)
        for name in f.values():
            (tmp / name).write_bytes(files[f"{WASM_DIR}/{name}"])
        log(f"checking the site's model in Node on {count:,} test images against TFLM")
        rows, _ = wasm.run_node(tmp, NAME, f["simd"], inputs, program.output.size, data=f["data"])
    what = f"{WASM_DIR}/{f['simd']} + {f['data']} in Node"
    result = aot.compare(rows, aot.tflm_rows(raw, inputs), ds.y_test, what)
    if result.get("rows_differing"):
        raise fail(
            opts.model, f"the compiled model differs from TFLM on {result['rows_differing']} test images"
        )
    return result


def summary_text(s: dict[str, Any], out: os.PathLike[str] | str) -> str:
    v = s.get("verification") or {}
    check = (
        f"{v['rows_identical']:,}/{v['images']:,} rows identical to TFLM ({v['program']})"
        if "rows_identical" in v
        else str(v.get("vs_tflm"))
    )
    big = ", ".join(f"{n} {b / 1024:.1f} KB" for n, b in s["files"].items() if b > 4096)
    size = f"{len(s['files']) + 1} files, {s['bytes'] / 1024:.1f} KB: {big}"
    return (
        f"{s['variant']}: {s['model']} -> {out}/ ({size})\n"
        f"  check     {check}\n"
        f"  try it    python -m http.server -d {out} 8000   # then open http://127.0.0.1:8000/"
    )
