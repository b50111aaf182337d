"""The page's own digit finder (``serve/static/segment.js``, run in Node) against
``edge/segment.py``'s ``find_digits`` on the same drawings: the same boxes, lines and 28x28
images, or the page says it leaves the drawing to the server (touching digits, a ruled line).

The drawings are what the number pad holds: official MNIST test digits, dark on white,
scaled up to the pad's 840 x 280 and set side by side (spaced, jittered, two lines, a digit
broken in two, specks, touching pairs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tflite.edge.segment import find_digits

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Node.js 18+)")

STATIC = Path(__file__).resolve().parents[1] / "src" / "mnist_tflite" / "serve" / "static"
PAD = (280, 840)  # the number pad: height, width

# in Node: each grey drawing (uint8, dark on white) through the page's steps, as JSON lines
DRIVER = """import { readFileSync } from "node:fs";
import { findDigits, padPicture } from "STATIC/segment.js";
import { inkToMnist } from "STATIC/device.js";
const [shapes, raw] = [JSON.parse(readFileSync(process.argv[2], "utf8")), readFileSync(process.argv[3])];
let at = 0;
for (const [h, w] of shapes) {
  const rgba = new Uint8ClampedArray(4 * w * h);
  for (let i = 0; i < w * h; i++) rgba.fill(raw[at + i], 4 * i, 4 * i + 3), (rgba[4 * i + 3] = 255);
  at += w * h;
  const found = findDigits(padPicture(rgba, w, h));
  const out = !found ? { blank: true } : found.error ? { error: found.error } : { defer: found.defer,
    digits: found.digits.map((d) => ({ box: d.box, line: d.line, image: Array.from(inkToMnist(d.ink)) })) };
  console.log(JSON.stringify(out));
}
"""


def _glyph(digit: np.ndarray, height: int) -> np.ndarray:
    """A 28x28 test digit (white on black) as ink in [0, 1], ``height`` pixels tall."""
    img = Image.fromarray(digit).resize((height, height), Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _pad(rng: np.random.Generator, digits: list[np.ndarray], *, lines: int = 1, gap: float = 1.0) -> np.ndarray:
    """Digits written side by side on the pad (``lines`` rows), dark on white, as uint8."""
    ink = np.zeros(PAD, np.float32)
    per_line = -(-len(digits) // lines)
    size = min(PAD[0] // lines, int(PAD[1] / per_line / gap))
    for k, digit in enumerate(digits):
        row, col = divmod(k, per_line)
        g = _glyph(digit, int(size * rng.uniform(0.85, 1.0)))
        y = row * (PAD[0] // lines) + int(rng.integers(0, PAD[0] // lines - g.shape[0] + 1))
        x = int(col * size * gap) + int(rng.integers(0, max(1, size - g.shape[1]) // 2 + 1))
        x = min(x, PAD[1] - g.shape[1])
        ink[y : y + g.shape[0], x : x + g.shape[1]] = np.maximum(ink[y : y + g.shape[0], x : x + g.shape[1]], g)
    return np.rint(255 * (1 - ink)).astype(np.uint8)


def _drawings(images: np.ndarray) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(22)
    pick = lambda n: [images[i] for i in rng.integers(0, len(images), n)]  # noqa: E731
    out = [(f"four_{i}", _pad(rng, pick(4))) for i in range(12)]
    out += [(f"two_lines_{i}", _pad(rng, pick(6), lines=2)) for i in range(4)]
    out += [(f"one_{i}", _pad(rng, pick(1))) for i in range(3)]
    out += [(f"seven_{i}", _pad(rng, pick(7))) for i in range(3)]
    broken = _pad(rng, pick(3))  # a digit with a gap cut through it: still one digit
    cols = np.flatnonzero((broken < 128).any(axis=0))
    mid = int(cols[len(cols) // 6])
    broken[:, mid - 3 : mid + 3] = 255
    out.append(("broken", broken))
    specks = _pad(rng, pick(4))
    for y, x in rng.integers(10, 270, (6, 2)):
        specks[y : y + 4, x * 3 : x * 3 + 4] = 0  # specks: dropped, not digits
    out.append(("specks", specks))
    out += [(f"touching_{i}", _pad(rng, pick(4), gap=0.55)) for i in range(3)]
    return out


@pytest.fixture(scope="module")
def both(test_images, tmp_path_factory):
    """Each drawing's (name, array, page's answer, Python's digits)."""
    drawings = _drawings(test_images[0])
    tmp = tmp_path_factory.mktemp("segment_js")
    (tmp / "shapes.json").write_text(json.dumps([a.shape for _, a in drawings]))
    (tmp / "pixels.bin").write_bytes(b"".join(a.tobytes() for _, a in drawings))
    (tmp / "run.mjs").write_text(DRIVER.replace("STATIC", STATIC.as_uri()))
    res = subprocess.run(
        ["node", str(tmp / "run.mjs"), str(tmp / "shapes.json"), str(tmp / "pixels.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    pages = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(pages) == len(drawings)
    return [(name, a, page, find_digits(a)) for (name, a), page in zip(drawings, pages, strict=True)]


def test_the_page_finds_the_digits_python_finds(both):
    """Where the page reads a drawing itself, its boxes, lines and images are Python's."""
    read_here = 0
    for name, a, page, digits in both:
        assert "error" not in page and "blank" not in page, (name, page)
        if page["defer"]:
            continue
        read_here += 1
        assert len(page["digits"]) == len(digits), (name, page["digits"], [d.box for d in digits])
        for got, want in zip(page["digits"], digits, strict=True):
            # within one pixel of the reduced picture (280 x 94): float32 sums in another order
            assert np.abs(np.subtract(got["box"], want.box)).max() <= 1.01 / 94, (name, got["box"], want.box)
            assert got["line"] == want.line, name
            diff = np.abs(np.reshape(got["image"], (28, 28)) - want.image).max()
            assert diff < 0.02, (name, diff)
    assert read_here >= 24, f"the page read only {read_here}/{len(both)} drawings itself"


def test_what_the_page_leaves_to_the_server(both):
    """Touching digits are cut by the server (the model judges the cut); the page says so."""
    for name, _, page, digits in both:
        if name.startswith("touching"):
            assert page["defer"] == "digits that touch, to cut apart", name
        elif not page["defer"]:
            assert [d["line"] for d in page["digits"]] == sorted(d["line"] for d in page["digits"])
    counts = {name: len(page["digits"]) for name, _, page, _ in both if not page["defer"]}
    assert counts["broken"] == 3 and counts["specks"] == 4 and counts["one_0"] == 1
    assert all(counts[f"two_lines_{i}"] == 6 for i in range(4) if f"two_lines_{i}" in counts)


def test_blank_and_a_frame(tmp_path):
    """A blank pad is blank; a frame round the pad is not a number (segment.py's words)."""
    blank = np.full(PAD, 255, np.uint8)
    frame = blank.copy()
    frame[5:-5, 5:12] = frame[5:-5, -12:-5] = frame[5:12, 5:-5] = frame[-12:-5, 5:-5] = 0
    (tmp_path / "shapes.json").write_text(json.dumps([PAD, PAD]))
    (tmp_path / "pixels.bin").write_bytes(blank.tobytes() + frame.tobytes())
    (tmp_path / "run.mjs").write_text(DRIVER.replace("STATIC", STATIC.as_uri()))
    res = subprocess.run(
        ["node", str(tmp_path / "run.mjs"), str(tmp_path / "shapes.json"), str(tmp_path / "pixels.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(line) for line in res.stdout.splitlines())
    assert first == {"blank": True}
    assert second["error"].startswith("one mark spans the whole picture (")
