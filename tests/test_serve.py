"""``mnist-tflite serve``: the JSON API with FastAPI's test client, on real digits and bad inputs."""

from __future__ import annotations

from tests.conftest import require

require("fastapi", "uvicorn")  # before the imports that need them

import io
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.edge.preprocess import load_image, to_mnist
from mnist_tflite.serve.app import MAX_UPLOAD_BYTES, create_app
from tests.conftest import MODELS, run_cli


def make_run_dir(dest: Path, names: tuple[str, ...] = ("float32", "int8")) -> Path:
    """A run folder like `mnist-tflite run` writes: models, sidecars and a report.json."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        for suffix in (".tflite", ".json"):
            shutil.copyfile(MODELS / f"{name}{suffix}", dest / f"{name}{suffix}")
        size = (dest / f"{name}.tflite").stat().st_size
        rows.append(
            {"name": name, "status": "ok", "recipe": name, "size_bytes": size, "accuracy": 0.98 + i / 1000}
        )
    (dest / "report.json").write_text(json.dumps({"format": "mnist-tflite-report/1", "variants": rows}))
    return dest


def png_bytes(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def scan_of(digit: np.ndarray, size: int = 112) -> bytes:
    """An MNIST digit as a 'scan': dark ink on white paper, upscaled, PNG-encoded."""
    return png_bytes(np.asarray(Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BILINEAR)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def client(run_dir) -> TestClient:
    return TestClient(create_app(run_dir))


@pytest.fixture(scope="module")
def int8() -> TfliteModel:
    return TfliteModel(MODELS / "int8.tflite", num_threads=1)


def test_health_models_and_report(client, run_dir):
    assert client.get("/healthz").json()["status"] == "ok"
    resp = client.get("/api/models")
    doc = resp.json()
    assert doc["default"] == "int8"
    assert [v["name"] for v in doc["variants"]] == ["float32", "int8"]
    by_name = {v["name"]: v for v in doc["variants"]}
    assert by_name["int8"]["recipe"] == "int8" and by_name["int8"]["input_dtype"] == "int8"
    assert by_name["int8"]["accuracy"] == pytest.approx(0.981)
    assert by_name["float32"]["size_bytes"] == (run_dir / "float32.tflite").stat().st_size
    assert doc["report"]["headers"][0] == "variant"
    assert [r[0] for r in doc["report"]["rows"]] == ["float32", "int8"]
    assert str(run_dir) not in resp.text  # file names only, never server paths


def test_single_model_file():
    c = TestClient(create_app(MODELS / "float32.tflite"))
    doc = c.get("/api/models").json()
    assert [v["name"] for v in doc["variants"]] == ["float32"] and doc["report"] is None


def test_json_28x28_is_the_model_input(client, int8, test_images):
    x, y = test_images[0][:40], test_images[1][:40]
    expected = int8.predict_proba(x.astype(np.float32) / 255.0)
    labels = []
    for img, probs in zip(x, expected, strict=True):
        r = client.post("/api/predict", json={"pixels": img.tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "int8" and len(body["probabilities"]) == 10
        np.testing.assert_allclose(body["probabilities"], probs, atol=2e-6)
        np.testing.assert_array_equal(body["input"], img)
        assert body["class_name"] == str(body["label"]) and body["latency_ms"] >= body["inference_ms"] > 0
        labels.append(body["label"])
    assert np.mean(np.array(labels) == y) >= 0.95


@pytest.mark.parametrize("how", ["multipart", "raw_png", "jpeg"])
def test_image_upload_uses_predicts_preprocessing(client, int8, test_images, how):
    x, y = test_images[0][:12], test_images[1][:12]
    correct = 0
    for img, label in zip(x, y, strict=True):
        data = (
            scan_of(img)
            if how != "jpeg"
            else png_bytes(255 - np.kron(img, np.ones((4, 4), np.uint8)), "JPEG")
        )
        if how == "raw_png":
            r = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
        else:
            r = client.post("/api/predict", files={"image": ("digit", data, "image/png")})
        assert r.status_code == 200, r.text
        seen = to_mnist(load_image(data))
        np.testing.assert_array_equal(r.json()["input"], np.rint(seen * 255))
        np.testing.assert_allclose(r.json()["probabilities"], int8.predict_proba(seen[None])[0], atol=2e-6)
        correct += r.json()["label"] == label
    assert correct >= 11


def test_image_sized_array_goes_through_to_mnist(client, test_images):
    img = 255 - np.kron(test_images[0][0], np.ones((3, 3), np.uint8))  # 84x84, dark on light
    r = client.post("/api/predict", json={"pixels": img.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(r.json()["input"], np.rint(to_mnist(img) * 255))
    assert r.json()["label"] == test_images[1][0]


def test_variant_selection(client, test_images):
    img = test_images[0][3].tolist()
    by_query = client.post("/api/predict?model=float32", json={"pixels": img}).json()
    by_json = client.post("/api/predict", json={"pixels": img, "model": "float32"}).json()
    by_form = client.post(
        "/api/predict",
        files={"image": ("d.png", scan_of(test_images[0][3]), "image/png")},
        data={"model": "float32"},
    ).json()
    default = client.post("/api/predict", json={"pixels": img}).json()
    assert by_query["model"] == by_json["model"] == by_form["model"] == "float32"
    assert default["model"] == "int8"
    assert by_query["probabilities"] == by_json["probabilities"]
    assert by_query["probabilities"] != default["probabilities"]  # really another model
    assert by_query["label"] == default["label"] == test_images[1][3]


@pytest.mark.parametrize(
    "name", ["../int8", "int8.tflite", str(MODELS / "int8.tflite"), "dynamic", "../../tests/models/float16"]
)
def test_only_served_variants_can_be_selected(client, name):
    r = client.post("/api/predict", params={"model": name}, json={"pixels": [[0] * 28] * 28})
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost nothing: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


JSON_TYPE = {"content-type": "application/json"}
PNG_TYPE = {"content-type": "image/png"}
NO_BOUNDARY = {"content-type": "multipart/form-data"}
WHITE = png_bytes(np.full((280, 280), 255, np.uint8))
BOMB = _png_header_only(100_000, 100_000)
BAD_REQUESTS = [
    # (what, request kwargs, status, error code)
    ("text body", {"content": b"seven", "headers": {"content-type": "text/plain"}}, 415, "unsupported_type"),
    ("no content type", {"content": b"\x89PNG"}, 415, "unsupported_type"),
    ("text file part", {"files": {"image": ("a.txt", b"seven", "text/plain")}}, 415, "unsupported_type"),
    ("not an image", {"files": {"image": ("a.png", b"definitely not a png", "image/png")}}, 400, "bad_image"),
    ("empty file", {"files": {"image": ("a.png", b"", "image/png")}}, 400, "bad_image"),
    ("no image field", {"files": {"other": (None, b"x")}}, 422, "no_image"),
    ("multipart, no boundary", {"content": b"x", "headers": NO_BOUNDARY}, 400, "bad_multipart"),
    ("broken json", {"content": b'{"pixels": [[1, 2', "headers": JSON_TYPE}, 400, "bad_json"),
    ("json without pixels", {"json": {"image": [[0]]}}, 422, "no_pixels"),
    ("json array at top", {"json": [[0] * 28] * 28}, 422, "no_pixels"),
    ("ragged pixels", {"json": {"pixels": [[0] * 28, [0] * 27]}}, 422, "bad_pixels"),
    ("3-d pixels", {"json": {"pixels": [[[0] * 3] * 28] * 28}}, 422, "bad_pixels"),
    ("pixels over 255", {"json": {"pixels": [[300] * 28] * 28}}, 422, "bad_pixels"),
    ("negative pixels", {"json": {"pixels": [[-1] * 28] * 28}}, 422, "bad_pixels"),
    ("words as pixels", {"json": {"pixels": [["a"] * 28] * 28}}, 422, "bad_pixels"),
    ("model not a string", {"json": {"pixels": [[0] * 28] * 28, "model": 3}}, 422, "bad_model"),
    ("all-black 28x28", {"json": {"pixels": [[0] * 28] * 28}}, 422, "blank"),
    ("blank canvas", {"files": {"image": ("c.png", WHITE, "image/png")}}, 422, "blank"),
    ("pixel bomb", {"files": {"image": ("b.png", BOMB, "image/png")}}, 413, "too_many_pixels"),
    ("big body", {"content": b"\0" * (MAX_UPLOAD_BYTES + 1), "headers": PNG_TYPE}, 413, "too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "kwargs", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_json_error(client, what, kwargs, status, code):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["detail"]


def test_a_server_bug_is_a_json_500_not_a_crash(caplog):
    app = create_app(MODELS / "int8.tflite")

    def broken(images):
        raise RuntimeError("simulated bug")

    app.state.served.variants["int8"].model.predict_proba = broken
    c = TestClient(app, raise_server_exceptions=False)
    r = c.post("/api/predict", json={"pixels": [[0] * 10 + [255] * 8 + [0] * 10] * 28})
    assert r.status_code == 500 and r.json() == {"error": "internal", "detail": "server bug: RuntimeError"}
    assert "simulated bug" in caplog.text
    assert c.get("/healthz").status_code == 200  # and the server goes on


def test_truncated_png_is_a_400(client, test_images):
    data = scan_of(test_images[0][0])
    r = client.post("/api/predict", files={"image": ("t.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 400 and "truncated" in r.json()["detail"]


def test_limits_are_enforced_while_reading():
    c = TestClient(create_app(MODELS / "int8.tflite", max_upload_bytes=10_000, max_pixels=4_000))

    def chunked():  # no Content-Length: the cap must hold while the body streams in
        for _ in range(20):
            yield b"\0" * 1000

    r = c.post("/api/predict", content=chunked(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = c.post(
        "/api/predict", files={"image": ("d.png", png_bytes(np.zeros((70, 70), np.uint8)), "image/png")}
    )
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
    r = c.post("/api/predict", json={"pixels": [[0] * 70] * 70})
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
    assert c.post("/api/predict", json={"pixels": [[0] * 60] * 60}).status_code == 422  # under: blank


def test_concurrent_requests_share_the_interpreter_safely(client, int8, test_images):
    x = test_images[0][:160]
    expected = int8.predict(x.astype(np.float32) / 255.0)
    got = np.full(len(x), -1)

    def work(k: int) -> None:
        for i in range(k, len(x), 8):
            got[i] = client.post("/api/predict", json={"pixels": x[i].tolist()}).json()["label"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(got, expected)


def test_modified_model_is_refused_unless_allowed(tmp_path):
    run = make_run_dir(tmp_path / "run")
    with open(run / "float32.tflite", "ab") as f:
        f.write(b"\0" * 8)  # harmless for the flatbuffer, but the SHA-256 no longer matches
    doc = TestClient(create_app(run)).get("/api/models").json()
    assert [v["name"] for v in doc["variants"]] == ["int8"]
    assert doc["unavailable"][0]["name"] == "float32" and "SHA-256" in doc["unavailable"][0]["error"]
    allowed = TestClient(create_app(run, allow_modified=True)).get("/api/models").json()
    assert [v["name"] for v in allowed["variants"]] == ["float32", "int8"]


def test_page_docs_and_static_files_work_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.text) > 500
        assert "http://" not in r.text and "https://" not in r.text  # no CDN: works offline
    assert "http" not in page.text.replace('href="/docs"', "")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    # the Swagger UI assets come from this server, not a CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets if a.endswith((".js", ".css")))
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert client.get("/static/../serve.py").status_code == 404


def test_serving_never_imports_tensorflow():
    code = (
        "import sys, json\n"
        "from fastapi.testclient import TestClient\n"
        "from mnist_tflite.serve.app import create_app\n"
        f"c = TestClient(create_app({str(MODELS)!r}))\n"
        "r = c.post('/api/predict', json={'pixels': [[0] * 10 + [255] * 8 + [0] * 10] * 28})\n"
        "assert r.status_code == 200, r.text\n"
        "tf = ('tensorflow', 'keras', 'tf_keras')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in tf)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_listening_socket_sends_small_responses_without_delay():
    from mnist_tflite.serve.app import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        # asyncio sets TCP_NODELAY on accepted sockets only when proto is TCP; without it
        # every response waits ~40 ms for a delayed ACK (measured: 22 requests/s at concurrency 1)
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_cli_serve_errors_are_one_line(tmp_path):
    assert run_cli("serve", "--help").returncode == 0
    missing = run_cli("serve", str(tmp_path / "nope.tflite"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    empty = run_cli("serve", str(tmp_path))
    assert empty.returncode == 2 and "no .tflite files" in empty.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = run_cli("serve", str(MODELS / "int8.tflite"), "--port", str(busy.getsockname()[1]))
    assert taken.returncode == 2 and "cannot listen" in taken.stderr
