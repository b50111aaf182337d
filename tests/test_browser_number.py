"""The page reads numbers (issue 22) in Debian's Chromium (Playwright): "2026" written on the
wide pad is read on the device (segment.js + the WebAssembly model) with four boxes and the
number the server reads from the same drawing; an uploaded photo of a number shows the API's
boxes over the picture; the answer is text a screen reader says.
"""

from __future__ import annotations

from tests.conftest import require

require("playwright", "fastapi", "uvicorn", "tflite_micro")  # before the imports that need them

import json
import urllib.request

import numpy as np
import pytest

from mnist_tflite.micro.aot import wasm
from tests.browser_util import screenshot
from tests.numbers import render_number
from tests.strokes import REPLAY_JS, number_strokes
from tests.test_browser import browser, server  # noqa: F401 (fixtures)
from tests.test_browser_wasm import host, png_of, site  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(wasm.toolchain_problem() is not None, reason=wasm.APT_COMMAND),
]
DONE = "body[data-state=done], body[data-state=error], body[data-state=blank]"


def _open(browser, url: str, init_script: str | None = None):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    page.wait_for_selector("body[data-ready]", state="attached", timeout=30_000)
    return context, page


@pytest.fixture(scope="module")
def digits_2026(test_images) -> list[np.ndarray]:
    """Test digits for "2026": the first 2, 0, 2 (the second one) and 6 of the test set."""
    images, labels = test_images
    twos, zeros, sixes = (np.flatnonzero(labels == d) for d in (2, 0, 6))
    return [images[twos[0]], images[zeros[0]], images[twos[1]], images[sixes[0]]]


def api_number(server_url: str, data: bytes, name: str) -> dict:
    """``/api/predict?number=1`` on a file's bytes, as the page would send it."""
    boundary = "mnisttfliteboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        server_url + "api/predict?number=1",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def shown_boxes(page) -> list[dict]:
    """The boxes drawn over the pad: their box (fractions), label, and where they are on screen
    as fractions of the pad's drawing area."""
    return page.evaluate(
        """() => {
      const pad = document.getElementById("pad"), r = pad.getBoundingClientRect(), b = pad.clientLeft;
      const w = pad.clientWidth, h = pad.clientHeight;
      return [...document.querySelectorAll("#boxes .box")].map((el) => {
        const e = el.getBoundingClientRect();
        return { box: el.dataset.box.split(",").map(Number), label: el.textContent,
                 at: [(e.left - r.left - b) / w, (e.top - r.top - b) / h, (e.right - r.left - b) / w,
                      (e.bottom - r.top - b) / h] };
      });
    }"""
    )


def write_number(page, images: list[np.ndarray]) -> dict:
    """Number mode on, the digits written side by side; what the page shows, and the pad's PNG."""
    if not page.is_checked("#number-mode"):
        page.check("#number-mode")
    got = page.evaluate(REPLAY_JS, number_strokes(images))
    page.wait_for_selector(DONE, state="attached", timeout=20_000)
    return got


def test_2026_drawn_is_read_on_the_device_with_the_servers_number_and_boxes(browser, server, digits_2026):  # noqa: F811
    context, page = _open(browser, server)
    try:
        assert page.get_attribute("#pad", "width") == "280"  # a single digit until asked
        got = write_number(page, digits_2026)
        assert page.get_attribute("#pad", "width") == "840"
        assert "read on this device (WebAssembly SIMD): 4 digits" in page.inner_text("#latency")
        number = page.inner_text("#label")
        assert number == "2026", page.inner_text("#digits")
        # the server, on the same drawing (full size), reads the same number in the same places
        png = png_of(got["png"])
        doc = api_number(server, png, "drawing.png")
        assert doc["number"] == number and len(doc["digits"]) == 4
        boxes = shown_boxes(page)
        assert [b["label"] for b in boxes] == list(number)
        for shown, answered in zip(boxes, doc["digits"], strict=True):
            # the server reduces the PNG with Pillow's 8-bit box filter, the page in floats: 1 px of 94
            assert np.abs(np.subtract(shown["box"], answered["box"])).max() <= 1.01 / 94
            assert np.abs(np.subtract(shown["at"], shown["box"])).max() < 0.01  # drawn where it says
        # the page's own cross-check (the drawing at half size) agrees too
        page.wait_for_selector("#agree:has-text('agree')", timeout=20_000)
        assert page.inner_text("#agree") == "device and server agree (2026)"
        # text, not only pixels: the number is in a live region, each digit in a list
        assert page.get_attribute("#label", "aria-live") == "polite"
        items = page.locator("#digits li")
        assert items.count() == 4 and items.nth(0).inner_text().startswith("2 ")
        assert "4 digits" in page.inner_text("#confidence")
        assert page.locator("#bars").is_hidden() and page.locator("#seen-figure").is_hidden()
        # back to one digit: the square pad, no boxes, the bars again
        page.uncheck("#number-mode")
        assert page.get_attribute("#pad", "width") == "280" and page.locator("#boxes .box").count() == 0
        assert page.inner_text("#confidence") == "draw a digit" and page.locator("#bars").is_visible()
        assert page.errors == []
    finally:
        context.close()


def test_uploaded_photo_of_a_number_shows_the_apis_boxes(browser, server, test_images, tmp_path):  # noqa: F811
    images, labels = test_images
    rng = np.random.default_rng(7)
    text = "4711"
    pick = [images[np.flatnonzero(labels == int(c))[i]] for i, c in enumerate(text)]
    for _ in range(20):  # a format Chromium shows (not TIFF): the boxes go over the picture
        data, suffix, info = render_number([pick], [[int(c) for c in text]], rng, gap=(8, 12), slant=0.0)
        if suffix in (".jpg", ".png", ".webp"):
            break
    photo = tmp_path / f"number{suffix}"
    photo.write_bytes(data)
    doc = api_number(server, data, photo.name)
    assert doc["number"] == text, (doc["number"], info)
    context, page = _open(browser, server)
    try:
        page.set_input_files("#upload", str(photo))
        page.wait_for_selector(DONE, state="attached", timeout=20_000)
        page.wait_for_selector("#boxes .box", state="attached", timeout=10_000)
        assert page.inner_text("#label") == text
        boxes = shown_boxes(page)
        assert [b["box"] for b in boxes] == [d["box"] for d in doc["digits"]]
        assert [b["label"] for b in boxes] == [d["label"] for d in doc["digits"]]
        # where the picture lies on the pad (fitted, centred), each box lies on its digit
        w, h = info.size
        pw, ph = (int(page.get_attribute("#pad", a)) for a in ("width", "height"))
        s = min(pw / w, ph / h)
        fx, fy, fw, fh = (pw - w * s) / 2 / pw, (ph - h * s) / 2 / ph, w * s / pw, h * s / ph
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            want = [fx + x0 * fw, fy + y0 * fh, fx + x1 * fw, fy + y1 * fh]
            assert np.abs(np.subtract(b["at"], want)).max() < 0.01, (b, want)
        assert page.locator("#digits li").count() == 4
        region = screenshot(page, "serve_number_photo.png", tmp_path)
        assert region("#boxes .box").std() > 10  # the box and the photo under it are drawn
        assert page.errors == []
    finally:
        context.close()


def test_an_uncertain_digit_is_shown_as_a_question_mark_with_two_guesses(
    browser,  # noqa: F811
    server,  # noqa: F811
    test_images,
    models_dir,
    tmp_path,
):
    """A photo of a number with a digit the model is unsure of (found among the test digits it
    is least sure of): the page shows ``?`` and the two best guesses, as the API does."""
    from mnist_tflite.edge.infer import TfliteModel

    images, labels = test_images
    sure = TfliteModel(models_dir / "int8.tflite").predict_proba(images.astype(np.float32) / 255).max(axis=1)
    one = images[np.flatnonzero((labels == 1) & (sure > 0.99))[0]]
    rng = np.random.default_rng(3)
    for i in np.argsort(sure)[:40]:
        data, suffix, _ = render_number(
            [[one, images[i]]], [[1, int(labels[i])]], rng, gap=(8, 12), slant=0.0
        )
        if suffix not in (".jpg", ".png", ".webp"):
            continue
        doc = api_number(server, data, "unsure" + suffix)
        if doc["uncertain"] and len(doc["digits"]) == 2:
            break
    else:
        pytest.fail("no uncertain digit among the 40 test digits the model is least sure of")
    photo = tmp_path / ("unsure" + suffix)
    photo.write_bytes(data)
    context, page = _open(browser, server)
    try:
        page.set_input_files("#upload", str(photo))
        page.wait_for_selector("#boxes .box >> nth=1", state="attached", timeout=20_000)
        assert page.inner_text("#label") == doc["number"] and "?" in doc["number"]
        assert "uncertain (?)" in page.inner_text("#confidence")
        for item, digit in zip(page.locator("#digits li").all(), doc["digits"], strict=True):
            if digit["label"] != "?":
                continue
            (a, b) = digit["top"][:2]
            pa, pb = (f"{100 * t['probability']:.1f} %" for t in (a, b))
            want = f"? ({a['label']} {pa} or {b['label']} {pb})"
            assert item.inner_text().strip() == want
        assert page.locator("#boxes .box.unsure").count() == sum(d["label"] == "?" for d in doc["digits"])
        region = screenshot(page, "serve_number_uncertain.png", tmp_path)
        assert region("#digits li.unsure").std() > 10  # its 28x28 and its guesses are drawn
    finally:
        context.close()


def test_without_webassembly_the_server_reads_the_number(browser, server, digits_2026):  # noqa: F811
    context, page = _open(browser, server, "delete globalThis.WebAssembly;")
    try:
        write_number(page, digits_2026)
        page.wait_for_selector("#boxes .box >> nth=3", state="attached", timeout=20_000)
        assert page.inner_text("#label") == "2026"
        assert "server" in page.inner_text("#latency")
        assert len(shown_boxes(page)) == 4
    finally:
        context.close()


def test_static_site_reads_a_number_with_no_server(browser, host, digits_2026, tmp_path):  # noqa: F811
    context, page = _open(browser, host)
    try:
        write_number(page, digits_2026)
        assert page.inner_text("#label") == "2026"
        assert "read on this device" in page.inner_text("#latency")
        assert len(shown_boxes(page)) == 4
        region = screenshot(page, "web_number.png", tmp_path)
        pad = region("#pad")
        assert (pad < 64).mean() > 0.01, "the drawn number is not on the pad"
        assert page.errors == []
    finally:
        context.close()
