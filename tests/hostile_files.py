"""Hostile files, as data: corrupted models, sidecars of every wrong type, broken arrays and
images, and run reports that are not what ``run`` writes.

Each entry is a :class:`~tests.hostile_cases.Case` plus the files it needs (path relative
to the workspace -> bytes, or a special marker), written by :func:`write_files`.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mnist_tflite.core.sidecar import SCHEMA
from tests.hostile_cases import MODELS, Case

Files = dict[str, Any]  # relative path -> bytes | "dir" | "fifo" | ("symlink", target)
FileCase = tuple[Case, Callable[[np.ndarray], Files]]


def write_files(w: Path, files: Files) -> None:
    for rel, content in files.items():
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "dir":
            path.mkdir()
        elif content == "fifo":
            os.mkfifo(path)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_bytes(content)


# -- corrupted models --------------------------------------------------------------------


def model_variants(data: bytes, seed: int) -> dict[str, bytes]:
    """Deterministic corruptions of a real flatbuffer: cuts, bad identifiers and offsets,
    flipped bytes, zeroed regions, inflated length fields, junk."""
    n, rng = len(data), np.random.default_rng(seed)
    v = {f"cut{c}": data[:c] for c in (1, 4, 7, 8, 12, 16, 32, 64, 256, 1024, n // 4, n // 2)}
    v["cut-last"] = data[: n - 1]
    v["id-TFL2"] = data[:4] + b"TFL2" + data[8:]
    v["id-zero"] = data[:4] + b"\0\0\0\0" + data[8:]
    v["root-ffff"] = b"\xff\xff\xff\xff" + data[4:]
    v["root-past-end"] = struct.pack("<I", n + 4) + data[4:]
    v["root-zero"] = b"\0\0\0\0" + data[4:]
    v["root-odd"] = struct.pack("<I", 3) + data[4:]
    for i in range(8):
        b = bytearray(data)
        for j in rng.integers(8, n, 4):
            b[j] ^= int(rng.integers(1, 256))
        v[f"flip{i}"] = bytes(b)
    for i in range(4):
        b = bytearray(data)
        start = int(rng.integers(8, n - 256))
        b[start : start + 256] = bytes(256)
        v[f"zeroed{i}"] = bytes(b)
    words = [i for i in range(8, n - 4, 4) if 16 < struct.unpack_from("<I", data, i)[0] < n]
    for i in range(4):  # a length or offset field made enormous
        b = bytearray(data)
        for j in rng.choice(words, 3, replace=False):
            struct.pack_into("<I", b, int(j), 0x7FFFFFF0)
        v[f"inflated{i}"] = bytes(b)
    v["random-body"] = data[:8] + rng.bytes(n - 8)
    v["all-ff-body"] = data[:8] + b"\xff" * (n - 8)
    v["doubled"] = data + data
    v["junk-tail"] = data + b"junk" * 1000
    return v


def model_cases() -> list[FileCase]:
    cases: list[FileCase] = []
    int8 = (MODELS / "int8.tflite").read_bytes()
    f32 = (MODELS / "float32.tflite").read_bytes()
    sidecar = (MODELS / "int8.json").read_bytes()
    for model, data, seed in (("int8", int8, 1), ("float32", f32, 2)):
        for label, blob in model_variants(data, seed).items():
            rel = f"models/{model}-{label}/{model}.tflite"
            argv = ("predict", f"{{W}}/{rel}", "{W}/digit.png")
            # no sidecar: any MNIST-shaped model is allowed, so a harmless flip may still run
            cases.append(
                (Case(f"model-{model}-{label}", argv, frozenset({0, 2}), f"{{W}}/{rel}"), _files(rel, blob))
            )
            if model == "int8":  # with its sidecar: the hash catches every change
                rel2 = f"models/signed-{label}/int8.tflite"
                case = Case(
                    f"signed-{label}", ("predict", f"{{W}}/{rel2}", "{W}/digit.png"), name=f"{{W}}/{rel2}"
                )
                cases.append((case, _files(rel2, blob, {rel2[:-7] + ".json": sidecar})))
    variants = model_variants(int8, 1)
    for label in ("cut8", "cut64", "cut1024", "id-TFL2", "root-ffff", "root-past-end", "cut-last", "flip0"):
        rel = f"models/int8-{label}/int8.tflite"
        argv = ("evaluate", f"{{W}}/{rel}", "--data", "embedded", "--latency-samples", "0")
        cases.append(
            (Case(f"evaluate-{label}", argv, frozenset({0, 2}), f"{{W}}/{rel}"), _files(rel, variants[label]))
        )
    for label in ("cut8", "cut64", "cut1024", "id-TFL2", "root-ffff", "root-past-end", "id-zero", "cut4"):
        rel, out = f"models/int8-{label}/int8.tflite", f"{{W}}/out/micro-{label}"
        argv = ("export-micro", f"{{W}}/{rel}", "--out", out)
        cases.append(
            (Case(f"micro-{label}", argv, frozenset({2}), f"{{W}}/{rel}", out), _files(rel, variants[label]))
        )
    return cases


def _files(rel: str, blob: bytes, extra: Files | None = None) -> Callable[[np.ndarray], Files]:
    return lambda digits: {rel: blob, **(extra or {})}


# -- sidecars ----------------------------------------------------------------------------

WRONG = [None, 5, "x", [], {}, True, 1.5, -1, 10**40, [1, "a"], math.nan, math.inf]


def _set(meta: dict, key: str, value: Any) -> dict:
    meta = json.loads(json.dumps(meta))
    node = meta
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return meta


def _delete(meta: dict, key: str) -> dict:
    meta = json.loads(json.dumps(meta))
    node = meta
    *parents, last = key.split(".")
    for p in parents:
        node = node.get(p, {})
    node.pop(last, None)
    return meta


def sidecar_cases() -> list[FileCase]:
    base = json.loads((MODELS / "int8.json").read_text())
    model = (MODELS / "int8.tflite").read_bytes()
    cases: list[FileCase] = []

    def add(tag: str, sidecar: bytes | str | tuple, codes=frozenset({2}), name: str = "", flags=()):
        rel = f"side/{tag}/int8.tflite"
        argv = ("predict", f"{{W}}/{rel}", "{W}/digit.png", *flags)
        files = {rel: model, rel[:-7] + ".json": sidecar}
        cases.append(
            (Case(f"sidecar-{tag}", argv, codes, name.replace("@", f"{{W}}/side/{tag}/")), _files_of(files))
        )

    for key, rule in SCHEMA.items():
        wrong = [v for v in WRONG if not rule.test(v)][:5]
        for i, value in enumerate(wrong):
            expect = "@int8.json: " + ("not an mnist-tflite" if key == "format" else f"metadata key {key!r}")
            add(f"{key}-{i}", _dump(_set(base, key, value)), name=expect)
        if not rule.required and "." not in key:  # every optional key may be absent
            add(f"{key}-absent", _dump(_delete(base, key)), frozenset({0}))
    sha = base["sha256"]
    for tag, value in {"int": 5, "null": None, "empty": "", "short": sha[:63], "not-hex": "g" * 64}.items():
        add(f"sha-{tag}", _dump(_set(base, "sha256", value)), name="@int8.json: sha256")
        add(
            f"sha-{tag}-allowed",
            _dump(_set(base, "sha256", value)),
            frozenset({0}),
            flags=("--allow-modified",),
        )
    add("sha-missing", _dump(_delete(base, "sha256")), name="@int8.json: no sha256")
    add("sha-missing-allowed", _dump(_delete(base, "sha256")), frozenset({0}), flags=("--allow-modified",))
    add("sha-other", _dump(_set(base, "sha256", "ab" * 32)), name="@int8.tflite: SHA-256")
    add("sha-upper", _dump(_set(base, "sha256", sha.upper())), frozenset({0}))
    add("unknown-key", _dump({**base, "zzz": [1, {"a": None}]}), frozenset({0}))
    add(
        "class-names-3", _dump({**base, "class_names": ["a", "b", "c"]}), name="@int8.json: class_names has 3"
    )
    huge = json.dumps(base)[:-1] + ', "seed": ' + "9" * 5000 + "}"
    unreadable = "@int8.json: unreadable metadata sidecar"
    add("5000-digit-int", huge.encode(), name=unreadable)
    add(
        "deep-nesting",
        b'{"format": "mnist-tflite-metadata/1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        name="@int8.json: metadata sidecar nested too deeply",
    )
    add("invalid-utf8", b'{"format": "\xff\xfe"}', name=unreadable)
    add("not-json", b"hello", name=unreadable)
    add("empty", b"", name=unreadable)
    add("bom", b"\xef\xbb\xbf" + _dump(base), name=unreadable)
    add("top-list", b"[]", name="@int8.json: not an mnist-tflite")
    add("top-string", b'"x"', name="@int8.json: not an mnist-tflite")
    add("top-nan", b"NaN", name="@int8.json: not an mnist-tflite")
    add("5MB", _dump(base)[:-1] + b" " * (5 << 20) + b"}", name="@int8.json: metadata sidecar larger than")
    add("a-directory", "dir", name="@int8.json: not a regular file")
    add("dev-zero", ("symlink", "/dev/zero"), name="@int8.json: not a regular file")
    add("fifo", "fifo", name="@int8.json: not a regular file")
    return cases


def _dump(meta: Any) -> bytes:
    return json.dumps(meta).encode()


def _files_of(files: Files) -> Callable[[np.ndarray], Files]:
    return lambda digits: files


def _made_dir(rel: str, make: Callable[[np.ndarray], dict[str, bytes]]) -> Callable[[np.ndarray], Files]:
    return lambda digits: {f"{rel}/{k}": v for k, v in make(digits).items()}


def _made(rel: str, make: Callable[[np.ndarray], bytes]) -> Callable[[np.ndarray], Files]:
    return lambda digits: {rel: make(digits)}


# -- arrays and images -------------------------------------------------------------------


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype == object)
    return buf.getvalue()


def _img(a: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def _idx(a: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def input_cases() -> list[FileCase]:
    """(name, bytes-maker, allowed exit codes): 1 = this input failed, 2 = nothing to classify."""

    def nan(d):
        a = d[:3].astype(np.float32) / 255
        a[1, 3, 3] = np.nan
        return _npy(a)

    def inf(d, sign=1.0):
        a = d[:3].astype(np.float32) / 255
        a[2, 9, 9] = sign * np.inf
        return _npy(a)

    big_png = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    )
    specs: dict[str, tuple[Callable[[np.ndarray], bytes], set[int]]] = {
        "nan.npy": (nan, {1}),
        "inf.npy": (inf, {1}),
        "neginf.npy": (lambda d: inf(d, -1.0), {1}),
        "object.npy": (lambda d: _npy(np.array([[1, "a"]], dtype=object)), {1}),
        "complex.npy": (lambda d: _npy(d[:2].astype(np.complex64)), {1}),
        "strings.npy": (lambda d: _npy(np.full((2, 28, 28), "x")), {1}),
        "structured.npy": (lambda d: _npy(np.zeros((2, 28, 28), dtype=[("a", "u1"), ("b", "f4")])), {1}),
        "27x27.npy": (lambda d: _npy(d[:2, :27, :27]), {1}),
        "3x28x27.npy": (lambda d: _npy(d[:3, :, :27]), {1}),
        "5d.npy": (lambda d: _npy(d[:2].reshape(1, 2, 28, 28, 1)), {1}),
        "0d.npy": (lambda d: _npy(np.array(3)), {1}),
        "1d.npy": (lambda d: _npy(np.arange(784)), {1}),
        "no-rows.npy": (lambda d: _npy(d[:0]), {2}),
        "truncated.npy": (lambda d: _npy(d[:4])[:2000], {1}),
        "header-only.npy": (lambda d: _npy(d[:4])[:128], {1}),
        "bad-magic.npy": (lambda d: b"\x93NUMPX" + _npy(d[:2])[6:], {1}),
        "huge-shape.npy": (lambda d: _npy(d[:1]).replace(b"(1, 28, 28)", b"(99999999999, 28, 28)"), {1}),
        "blank-rows.npy": (lambda d: _npy(np.stack([np.zeros_like(d[0]), d[1], np.zeros_like(d[0])])), {1}),
        "fortran.npy": (lambda d: _npy(np.asfortranarray(d[:3])), {0}),
        "bool.npy": (lambda d: _npy(d[:3] > 128), {0}),
        "uint16.npy": (lambda d: _npy(d[:3].astype(np.uint16) * 257), {0}),
        "int64-big.npy": (lambda d: _npy(d[:3].astype(np.int64) * 10**12), {0}),
        "float16.npy": (lambda d: _npy(d[:3].astype(np.float16) / 255), {0}),
        "idx/bad-magic/t10k-images-idx3-ubyte": (lambda d: b"\x01\x02" + _idx(d[:3])[2:], {1}),
        "idx/short-header/t10k-images-idx3-ubyte": (lambda d: _idx(d[:3])[:9], {1}),
        "idx/truncated/t10k-images-idx3-ubyte": (lambda d: _idx(d[:3])[:-5], {1}),
        "idx/trailing/t10k-images-idx3-ubyte": (lambda d: _idx(d[:3]) + b"xx", {1}),
        "idx/bad-dtype/t10k-images-idx3-ubyte": (lambda d: _idx(d[:3], 0x0F), {1}),
        "idx/ndim0/t10k-images-idx3-ubyte": (lambda d: b"\0\0\x08\0", {1}),
        "idx/huge-count/t10k-images-idx3-ubyte": (
            lambda d: _idx(d[:3])[:4] + struct.pack(">I", 2**31) + _idx(d[:3])[8:],
            {1},
        ),
        "idx/labels/t10k-images-idx3-ubyte": (lambda d: _idx(np.arange(10, dtype=np.uint8)), {1}),
        "idx/bad-gzip/t10k-images-idx3-ubyte.gz": (lambda d: b"\x1f\x8b" + b"\0" * 40, {1}),
        "idx/cut-gzip/t10k-images-idx3-ubyte.gz": (lambda d: gzip.compress(_idx(d[:3]))[:-12], {1}),
        "idx/ok/t10k-images-idx3-ubyte": (lambda d: _idx(d[:3]), {0}),
        "cut.png": (lambda d: _img(d[0])[:-30], {1}),
        "header-only.png": (lambda d: _img(d[0])[:16], {1}),
        "soi-only.jpg": (lambda d: b"\xff\xd8\xff", {1}),
        "garbage.png": (lambda d: bytes(range(256)) * 4, {1}),
        "text.png": (lambda d: b"this is not a picture\n", {1}),
        "empty.png": (lambda d: b"", {1}),
        "gif-header.gif": (lambda d: b"GIF89a" + b"\0" * 7, {1}),
        "bmp-huge.bmp": (
            lambda d: b"BM" + struct.pack("<IHHIIiiHHII", 0, 0, 0, 54, 40, 10**6, 10**6, 1, 24, 0, 0),
            {1},
        ),
        "bomb.png": (lambda d: big_png, {1}),
        "white.png": (lambda d: _img(np.full((40, 40), 255, np.uint8)), {1}),
        "black.png": (lambda d: _img(np.zeros((40, 40), np.uint8)), {1}),
        "1x1.png": (lambda d: _img(np.full((1, 1), 128, np.uint8)), {0, 1}),
        "tiff-garbage.tif": (lambda d: b"II*\0" + b"\xff" * 60, {1}),
        "webp-garbage.webp": (lambda d: b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8, {1}),
        "digit.jpg": (lambda d: _img(d[0], "JPEG"), {0}),
        "digit-rgba.png": (lambda d: _img(np.dstack([d[0]] * 3 + [np.full_like(d[0], 255)])), {0}),
        "digit-16bit.png": (lambda d: _img(d[0].astype(np.uint16) * 257), {0}),
    }
    cases: list[FileCase] = []
    for rel, (make, codes) in specs.items():
        path = f"{{W}}/inputs/{rel}"
        case = Case(
            f"input-{rel.replace('/', '-')}", ("predict", "{M}/int8.tflite", path), frozenset(codes), path
        )
        cases.append((case, _made(f"inputs/{rel}", make)))
    return cases


# -- run reports (pareto) ----------------------------------------------------------------


def report_cases() -> list[FileCase]:
    ok = {"name": "int8", "status": "ok", "size_bytes": 42080, "accuracy": 0.98}
    base = {"format": "mnist-tflite-report/1", "train": {"config": {"arch": "seed"}}, "variants": [ok]}
    specs: dict[str, Any] = {
        "deep": b'{"variants": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "5000-digits": json.dumps(base)[:-1].encode() + b', "seed": ' + b"7" * 5000 + b"}",
        "no-variants": _dump({"format": "x"}),
        "variants-string": _dump({**base, "variants": "x"}),
        "variant-int": _dump({**base, "variants": [5]}),
        "size-string": _dump({**base, "variants": [{**ok, "size_bytes": "big"}]}),
        "accuracy-bool": _dump({**base, "variants": [{**ok, "accuracy": True}]}),
        "accuracy-nan": _dump({**base, "variants": [{**ok, "accuracy": math.nan}]}),
        "accuracy-list": _dump({**base, "variants": [{**ok, "accuracy": [1]}]}),
        "train-int": _dump({**base, "train": 5}),
        "config-list": _dump({**base, "train": {"config": []}}),
        "not-json": b"hello",
        "empty": b"",
        "binary": bytes(range(256)),
        "top-list": b"[]",
        "is-a-dir": "dir",
        "dev-zero": ("symlink", "/dev/zero"),
    }
    cases: list[FileCase] = []
    for tag, content in specs.items():
        run, out = f"{{W}}/reports/{tag}", f"{{W}}/out/pareto-{tag}"
        name = run if tag in ("is-a-dir", "dev-zero") else f"{run}/report.json"
        case = Case(f"report-{tag}", ("pareto", run, "--out", out), frozenset({2}), name, out)
        cases.append((case, _files_of({f"reports/{tag}/report.json": content})))
    return cases


# -- data sets (--data) --------------------------------------------------------------------


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def data_cases() -> list[FileCase]:
    """Bad ``--data`` files for every command that loads data before its real work."""

    def mnist(d, **override):
        x, y = d[:20], np.arange(20, dtype=np.uint8) % 10
        return _npz(**{"x_train": x, "y_train": y, "x_test": x, "y_test": y, **override})

    def idx_dir(d, images=None, labels=None):
        x, y = d[:6], np.arange(6, dtype=np.uint8)
        return {
            "train-images-idx3-ubyte": _idx(x),
            "train-labels-idx1-ubyte": _idx(y),
            "t10k-images-idx3-ubyte": images if images is not None else _idx(x),
            "t10k-labels-idx1-ubyte": labels if labels is not None else _idx(y),
        }

    npz_specs: dict[str, Callable[[np.ndarray], bytes]] = {
        "one-array.npz": lambda d: _npy(d[:3]),
        "text.npz": lambda d: b"hello",
        "cut.npz": lambda d: mnist(d)[: len(mnist(d)) // 2],
        "empty-zip.npz": lambda d: _zip({}),
        "garbage-members.npz": lambda d: _zip(
            {f"{k}.npy": b"\x93NUMPY junk" for k in ("x_train", "y_train")}
        ),
        "no-y_test.npz": lambda d: _npz(x_train=d[:5], y_train=np.zeros(5, np.uint8), x_test=d[:5]),
        "float-images.npz": lambda d: mnist(d, x_train=d[:20].astype(np.float32)),
        "27x27.npz": lambda d: mnist(d, x_test=d[:20, :27, :27]),
        "labels-12.npz": lambda d: mnist(d, y_test=np.full(20, 12, np.uint8)),
        "labels-count.npz": lambda d: mnist(d, y_train=np.zeros(3, np.uint8)),
        "labels-float.npz": lambda d: mnist(d, y_test=np.zeros(20, np.float32)),
        "pickle.npz": lambda d: b"\x80\x04\x95" + b"\0" * 30,
    }
    dir_specs: dict[str, Callable[[np.ndarray], dict[str, bytes]]] = {
        "idx-cut": lambda d: idx_dir(d, images=_idx(d[:6])[:-10]),
        "idx-count-mismatch": lambda d: idx_dir(d, labels=_idx(np.arange(4, dtype=np.uint8))),
        "idx-label-99": lambda d: idx_dir(d, labels=_idx(np.full(6, 99, np.uint8))),
        "idx-no-test": lambda d: {k: v for k, v in idx_dir(d).items() if k.startswith("train")},
    }
    files: dict[str, Callable[[np.ndarray], Files]] = {}
    for name, make in npz_specs.items():
        files[f"{{W}}/data/{name}"] = _made(f"data/{name}", make)
    for name, make in dir_specs.items():
        files[f"{{W}}/data/{name}"] = _made_dir(f"data/{name}", make)
    cases: list[FileCase] = []
    for path, make in files.items():
        tag = path.rsplit("/", 1)[1]
        for command in ("evaluate", "train", "run", "export-micro"):
            out = {"train": f"{{W}}/out/dt-{tag}.keras", "run": f"{{W}}/out/dr-{tag}"}.get(command)
            out = f"{{W}}/out/dm-{tag}" if command == "export-micro" else out
            argv = {
                "evaluate": ("evaluate", "{M}/int8.tflite", "--data", path),
                "train": ("train", "--epochs", "1", "--data", path, "--out", out),
                "run": ("run", "--epochs", "1", "--data", path, "--out", out),
                "export-micro": ("export-micro", "{M}/int8.tflite", "--verify", "--data", path, "--out", out),
            }[command]
            cases.append((Case(f"data-{command}-{tag}", argv, frozenset({2}), path, out), make))
    return cases
