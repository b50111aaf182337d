"""The model in the visitor's browser: the site of ``export-web`` in Debian's Chromium (Playwright).

The site is served by a plain static file server (``python -m http.server``), as any static
host would: the page must classify with nothing but its own files, bit for bit like TFLM,
label for label like ``predict`` on the same drawing, and keep working offline.
"""

from __future__ import annotations

from tests.conftest import require

require("playwright", "tflite_micro")  # before the imports that need them

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite.micro.aot import wasm
from tests.browser_util import screenshot
from tests.conftest import run_cli
from tests.strokes import REPLAY_JS, strokes_of
from tests.test_browser import browser, draw, server  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(wasm.toolchain_problem() is not None, reason=wasm.APT_COMMAND),
]
DONE = "body[data-state=done], body[data-state=error], body[data-state=blank]"


@pytest.fixture(scope="module")
def site(models_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web") / "site"
    res = run_cli("export-web", str(models_dir / "int8.tflite"), "--out", str(out), "--images", "50")
    assert res.returncode == 0, res.stderr
    return out


def static_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``python -m http.server`` on a free loopback port: (process, base URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    if "port" not in line:
        proc.kill()
        pytest.fail(f"http.server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split('port ')[1].split()[0]}/"


@pytest.fixture(scope="module")
def host(site):
    proc, url = static_server(site)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def page(browser, host):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(host)
    page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
    yield page
    context.close()


def png_of(data_url: str) -> bytes:
    return base64.b64decode(data_url.split(",", 1)[1])


CLASSIFY_ALL_JS = """async ([b64, plain]) => {
  const m = await import("./wasm/mnist_model.mjs");
  const model = plain ? await m.load(new URL(m.files.plain, new URL("./wasm/", location.href)),
                                     new URL(m.files.data, new URL("./wasm/", location.href)))
                      : await m.load();
  const raw = atob(b64), x = new Int8Array(raw.length);
  for (let i = 0; i < raw.length; i++) x[i] = raw.charCodeAt(i);
  const n = x.length / 784, rows = new Int8Array(n * 10);
  for (let i = 0; i < n; i++) rows.set(model.classify(x.subarray(784 * i, 784 * i + 784)), 10 * i);
  let s = "";
  for (const v of new Uint8Array(rows.buffer)) s += String.fromCharCode(v);
  return { rows: btoa(s), simd: m.hasSimd() };
}"""


@pytest.fixture(scope="module")
def all_test_inputs(mnist, models_dir):
    from mnist_tflite.micro.aot.build import quantize_images, tflm_rows
    from mnist_tflite.micro.aot.compiler import load_program

    raw, program = load_program(models_dir / "int8.tflite")
    inputs = quantize_images(mnist.x_test, program.input.scale, program.input.zero_point)
    return inputs, tflm_rows(raw, inputs)


@pytest.mark.parametrize("build", ["simd", "plain"])
def test_all_test_images_in_the_page_match_tflm(page, all_test_inputs, build):
    inputs, reference = all_test_inputs
    assert len(inputs) == 10_000 and not isinstance(reference, str), reference
    b64 = base64.b64encode(inputs.tobytes()).decode()
    got = page.evaluate(CLASSIFY_ALL_JS, [b64, build == "plain"])
    assert got["simd"] is True  # this Chromium has SIMD128: the default is the SIMD build
    rows = np.frombuffer(base64.b64decode(got["rows"]), dtype=np.int8).reshape(-1, 10)
    same = (rows == reference).all(axis=1)
    assert int(same.sum()) == 10_000, f"{int((~same).sum())} rows differ, first {np.flatnonzero(~same)[:5]}"


def test_drawn_digits_get_the_label_predict_gives_the_same_png(page, test_images, models_dir, tmp_path):
    images, labels = test_images
    pngs = []
    for i in range(8):
        page.click("#clear")
        draw(page, strokes_of(images[i]))
        page.wait_for_selector("body[data-state=done]", state="attached", timeout=10_000)
        png = tmp_path / f"drawing_{i}.png"
        png.write_bytes(png_of(page.evaluate("() => document.getElementById('pad').toDataURL('image/png')")))
        pngs.append((png, page.inner_text("#label")))
        assert "ran on this device" in page.inner_text("#latency")
    res = run_cli("predict", str(models_dir / "int8.tflite"), *(str(p) for p, _ in pngs), "--json")
    assert res.returncode == 0, res.stderr
    by_file = {r["file"]: r["label"] for r in json.loads(res.stdout)["results"]}
    assert [(by_file[str(p)], shown) for p, shown in pngs] == [(shown, shown) for _, shown in pngs]
    right = sum(shown == str(y) for (_, shown), y in zip(pngs, labels, strict=False))
    assert right >= 6, f"only {right}/8 redrawn test digits recognised"  # the strokes are crude
    assert page.errors == []


def test_screenshot_shows_answer_bars_and_input(page, test_images, tmp_path):
    images, _ = test_images
    draw(page, strokes_of(images[0]))  # a 7
    page.wait_for_selector("body[data-state=done]", state="attached", timeout=10_000)
    region = screenshot(page, "web_page.png", tmp_path)
    assert page.inner_text("#label") == "7" and region("#label").std() > 20, "the answer is not drawn"
    seen = region("#seen")
    assert (seen > 128).mean() > 0.02 and (seen < 64).mean() > 0.3, "the model's 28x28 input is not shown"
    assert region("#bars").std() > 10 and page.locator("#bars li").count() == 10, "no ten probabilities"
    assert page.locator("#bars li.top span").first.inner_text() == "7"
    assert "ran on this device (WebAssembly SIMD)" in page.inner_text("#latency")
    assert page.locator("#upload").is_hidden()  # no server: no photo upload


def test_offline_with_the_server_stopped(browser, site, test_images):  # noqa: F811
    """Loaded once, the site answers with its server gone and the network cut (service worker)."""
    proc, url = static_server(site)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        page.evaluate("async () => { await navigator.serviceWorker.ready; }")
        proc.terminate()
        proc.wait(10)
        context.set_offline(True)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.reload()  # from the service worker's cache
        page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        assert "runs on this device" in page.inner_text("#where")
        loaded = len(requests)
        draw(page, strokes_of(test_images[0][1]))  # a 2
        page.wait_for_selector("body[data-state=done]", state="attached", timeout=10_000)
        assert page.inner_text("#label") == "2"
        assert len(requests) == loaded  # nothing asked for after load
    finally:
        context.close()
        proc.kill()


def test_fallbacks_without_simd_and_without_webassembly(browser, host):  # noqa: F811
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script("WebAssembly.validate = () => false;")  # a browser without SIMD128
        page.goto(host)
        page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        assert "without SIMD" in page.inner_text("#where")
        page.click("#pad")  # a dot: the page answers (with something) on the plain build
        page.wait_for_selector(DONE, state="attached", timeout=10_000)
        assert "ran on this device (WebAssembly)" in page.inner_text("#latency")
        page.click("#clear")
        assert page.inner_text("#confidence") == "draw a digit"
        bare = context.new_page()
        bare.add_init_script("delete globalThis.WebAssembly;")
        bare.goto(host)
        bare.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        assert "no WebAssembly" in bare.inner_text("#where") and "cannot classify" in bare.inner_text(
            "#where"
        )
    finally:
        context.close()


def test_serve_without_webassembly_uses_the_server_and_says_so(browser, server, test_images):  # noqa: F811
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script("delete globalThis.WebAssembly;")
        page.goto(server)
        page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
        assert "the server answers" in page.inner_text("#where")
        draw(page, strokes_of(test_images[0][0]))
        page.wait_for_selector("body[data-state=done]", state="attached", timeout=10_000)
        assert page.inner_text("#label") == "7"
        assert "server" in page.inner_text("#latency") and "no WebAssembly" in page.inner_text("#latency")
    finally:
        context.close()


def test_replayed_strokes_match_python_preprocessing(page, test_images, models_dir):
    """The page's 28x28 and Python's to_mnist of the same PNG give the same label (20 drawings)."""
    from mnist_tflite.edge.images import load_image
    from mnist_tflite.edge.infer import TfliteModel
    from mnist_tflite.edge.preprocess import to_mnist

    model = TfliteModel(models_dir / "int8.tflite")
    images, _ = test_images
    same = 0
    for i in range(20):
        got = page.evaluate(REPLAY_JS, strokes_of(images[i]))
        assert got["state"] == "done", got["state"]
        python_label = int(model.predict(to_mnist(load_image(png_of(got["png"])))[None])[0])
        same += str(python_label) == got["label"]
    assert same >= 19, f"{same}/20"
