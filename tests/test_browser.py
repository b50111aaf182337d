"""The draw-a-digit page in a real browser: Debian's Chromium driven by Playwright.

Starts ``mnist-tflite serve`` in a subprocess on a free loopback port, draws digits with
mouse strokes on the canvas and reads the label the page shows.
"""

from __future__ import annotations

from tests.conftest import cli_argv, require

require("playwright", "fastapi", "uvicorn")  # before the imports that need them

import math
import os
import subprocess

import numpy as np
import pytest

from tests.browser_util import screenshot
from tests.test_serve import make_run_dir, png_bytes, scan_of

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DONE = "body[data-state=done], body[data-state=error]"
SEEN: dict[str, list[str]] = {"requests": [], "errors": []}  # what the page asked for, what broke

# strokes as fractions of the pad: (x, y) points, one list per pen-down
DIGITS = {
    "1": [[(0.5, 0.18), (0.5, 0.82)]],
    "7": [[(0.28, 0.2), (0.72, 0.2), (0.42, 0.82)]],
    "0": [
        [
            (0.5 + 0.2 * math.sin(2 * math.pi * t / 32), 0.5 - 0.32 * math.cos(2 * math.pi * t / 32))
            for t in range(33)
        ]
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mnist-tflite serve`` on a run folder, port chosen by the OS; yields its base URL."""
    run = make_run_dir(tmp_path_factory.mktemp("run"))
    log = run / "server.log"  # a file, not a pipe nobody reads: the server must never block on it
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cli_argv("serve", str(run), "--port", "0"),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    line = proc.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/"
    if "http://127.0.0.1:" not in line:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {log.read_text()}")
    yield line.split(" at ")[1].strip()
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.on("request", lambda r: SEEN["requests"].append(r.url))
    page.on("pageerror", lambda e: SEEN["errors"].append(str(e)))
    page.goto(server)
    page.wait_for_selector("body[data-ready]", state="attached", timeout=15_000)
    yield page
    page.close()


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        pts = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for x, y in pts[1:]:
            page.mouse.move(x, y, steps=4)
        page.mouse.up()


@pytest.mark.parametrize("digit", list(DIGITS))
def test_drawn_digit_is_recognised(page, digit):
    page.click("#clear")
    assert page.inner_text("#label") == "–"
    draw(page, DIGITS[digit])
    page.wait_for_selector(DONE, state="attached", timeout=10_000)
    assert page.inner_text("#label") == digit, page.inner_text("#error")
    assert "model int8" in page.inner_text("#model-name")
    assert "ms" in page.inner_text("#latency")
    top = page.locator("#bars li.top span").first.inner_text()
    assert top == digit
    # the 28x28 the model saw is drawn: some pixels lit, white on black
    lit = page.evaluate(
        "() => { const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; }"
    )
    assert 20 < lit < 400


def test_variant_selector_report_and_compare(page):
    page.click("#clear")
    draw(page, DIGITS["7"])
    page.wait_for_selector(DONE, state="attached", timeout=10_000)
    page.select_option("#variant", "float32")
    # (no wait_for_function: the page's Content-Security-Policy forbids eval, as it should)
    page.wait_for_selector("body[data-state=done] #model-name:has-text('float32')", timeout=10_000)
    assert page.inner_text("#label") == "7"
    assert page.locator("#report tbody tr").count() == 2
    assert page.locator("#report tr.current td").first.inner_text() == "float32"
    page.click("#compare")
    rows = page.locator("#compare-table tbody tr")
    rows.nth(1).wait_for(timeout=10_000)
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == ["7", "7"]
    page.select_option("#variant", "int8")


def test_photo_upload(page, test_images, tmp_path):
    photo = tmp_path / "digit.png"
    photo.write_bytes(scan_of(test_images[0][1], size=200))
    page.click("#clear")
    page.set_input_files("#upload", str(photo))
    page.wait_for_selector(DONE, state="attached", timeout=10_000)
    assert page.inner_text("#label") == str(test_images[1][1])


def test_blank_photo_and_offline(page, server, tmp_path):
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.full((100, 100), 255, np.uint8)))
    page.click("#clear")
    page.set_input_files("#upload", str(blank))
    page.wait_for_selector("body[data-state=error]", state="attached", timeout=10_000)
    assert page.inner_text("#confidence") == "no digit found"
    assert "no ink" in page.inner_text("#error")
    assert SEEN["errors"] == []
    off_box = [u for u in SEEN["requests"] if not u.removeprefix("blob:").startswith(server)]
    assert SEEN["requests"] and off_box == []  # works offline: no CDN, nothing off this machine


def test_screenshot_for_people(page, tmp_path):
    # one screenshot kept where a person can look at it (MNIST_TFLITE_SCREENSHOTS=dir)
    page.click("#clear")
    draw(page, DIGITS["0"])
    page.wait_for_selector(DONE, state="attached", timeout=10_000)
    region = screenshot(page, "serve_page.png", tmp_path)
    # what a person sees: the stroke on the pad, the 28x28 the model saw, the answer and its bars
    pad = region("#pad")
    stroke = np.abs(pad - np.median(pad)) > 64
    assert 0.005 < stroke.mean() < 0.5, "the drawn 0 is not visible on the pad"
    seen = region("#seen")
    assert (seen > 128).mean() > 0.02 and (seen < 64).mean() > 0.3, "the model's 28x28 input is not shown"
    label = region("#label")
    assert page.inner_text("#label") == "0" and label.std() > 20, "the answer is not drawn"
    bars = region("#bars")
    assert bars.std() > 10 and page.locator("#bars li").count() == 10, "the ten probabilities are not shown"


def test_finger_drawing_on_a_phone(browser, server):
    """Touch events (not mouse) on a phone-sized page: a finger draws a 1."""
    context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
    phone = context.new_page()
    try:
        phone.goto(server)
        phone.wait_for_selector("body[data-ready]", state="attached", timeout=15_000)
        box = phone.locator("#pad").bounding_box()
        x = box["x"] + box["width"] / 2
        ys = [box["y"] + box["height"] * (0.15 + 0.07 * i) for i in range(11)]
        cdp = context.new_cdp_session(phone)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": ys[0]}]})
        for y in ys[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        phone.wait_for_selector(DONE, state="attached", timeout=10_000)
        assert phone.inner_text("#label") == "1"
        assert phone.evaluate("() => window.scrollY") == 0  # the stroke drew; it did not scroll the page
    finally:
        context.close()
