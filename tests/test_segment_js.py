"""The page's own digit finder (``serve/static/segment.js``, run in Node with the model
compiled to WebAssembly as its judge) against ``edge/segment.py``'s ``find_digits`` with the
``.tflite`` model (LiteRT) on the same drawings: the same boxes, lines and 28x28 images, or
the page says it leaves the drawing to the server (a ruled line).

The drawings are what the number pad holds: official MNIST test digits, dark on white,
scaled up to the pad's 840 x 280 and set side by side (spaced, jittered, two lines, a digit
broken in two, specks, touching pairs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.edge.segment import SegmentError, find_digits
from mnist_tflite.micro.aot import wasm
from tests.conftest import run_cli

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Node.js 18+)"),
    pytest.mark.skipif(wasm.toolchain_problem() is not None, reason=wasm.APT_COMMAND),
]

STATIC = Path(__file__).resolve().parents[1] / "src" / "mnist_tflite" / "serve" / "static"
PAD = (280, 840)  # the number pad: height, width

# in Node: each grey drawing (uint8, dark on white) through the page's steps, as JSON lines
DRIVER = """import { readFileSync } from "node:fs";
import { findDigits, padPicture } from "STATIC/segment.js";
import { inkToMnist, probabilities, quantize } from "STATIC/device.js";
const model = await (await import(process.argv[4])).load();
const sure = (x) => Math.max(...probabilities(model.classify(quantize(x, model.input)), model.output));
const [shapes, raw] = [JSON.parse(readFileSync(process.argv[2], "utf8")), readFileSync(process.argv[3])];
let at = 0;
for (const [h, w] of shapes) {
  const rgba = new Uint8ClampedArray(4 * w * h);
  for (let i = 0; i < w * h; i++) rgba.fill(raw[at + i], 4 * i, 4 * i + 3), (rgba[4 * i + 3] = 255);
  at += w * h;
  const found = findDigits(padPicture(rgba, w, h), sure);
  const out = !found ? { blank: true } : found.error ? { error: found.error } : { defer: found.defer,
    digits: found.digits.map((d) => ({ box: d.box, line: d.line, image: Array.from(inkToMnist(d.ink)) })) };
  console.log(JSON.stringify(out));
}
"""


def _js_constants(path: Path) -> dict[str, object]:
    """The UPPER_CASE numbers and lists a page script declares with ``const``."""
    found: dict[str, object] = {}
    for line in path.read_text().splitlines():
        if line.startswith("const "):
            code = line.split("//")[0]
            found |= {
                n: json.loads(v) for n, v in re.findall(r"\b([A-Z][A-Z_]+) = (\[[^\]]*\]|-?[\d.]+)", code)
            }
    return found


def test_the_pages_constants_are_pythons():
    """segment.js repeats segment.py's (and ink.py's, preprocess.py's, predict.py's) constants: the same
    values, and none of segment.py's missing, so a change to one side fails here."""
    from mnist_tflite.edge import ink, predict, preprocess, segment

    js = _js_constants(STATIC / "segment.js")
    python = {n: v for n, v in vars(segment).items() if n.isupper() and isinstance(v, int | float | tuple)}
    # WIDE: the threshold without a model to judge cuts; the page always has its model.
    # READER_WIDE, WHOLE_SURE: when the reader reads a component; the page has no reader
    assert set(python) - set(js) == {"WIDE", "READER_WIDE", "WHOLE_SURE"}
    for name, value in js.items():
        home = segment if name in python else ink if hasattr(ink, name) else preprocess
        want = getattr(home, name)
        assert value == (list(want) if isinstance(want, tuple) else want), name
    assert _js_constants(STATIC / "app.js")["MIN_CONFIDENCE"] == predict.MIN_CONFIDENCE


def _glyph(digit: np.ndarray, height: int) -> np.ndarray:
    """A 28x28 test digit (white on black) as ink in [0, 1], ``height`` pixels tall."""
    img = Image.fromarray(digit).resize((height, height), Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _pad(
    rng: np.random.Generator, digits: list[np.ndarray], *, lines: int = 1, gap: float = 1.0
) -> np.ndarray:
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
        ink[y : y + g.shape[0], x : x + g.shape[1]] = np.maximum(
            ink[y : y + g.shape[0], x : x + g.shape[1]], g
        )
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
def module(models_dir, tmp_path_factory) -> Path:
    """The int8 model compiled to WebAssembly: the page's model, and so its judge."""
    out = tmp_path_factory.mktemp("wasm") / "web"
    res = run_cli(
        "compile", str(models_dir / "int8.tflite"), "--target", "wasm", "--out", str(out), "--images", "20"
    )
    assert res.returncode == 0, res.stderr
    return out / "mnist_model.mjs"


def in_node(module: Path, drawings: list[np.ndarray], tmp: Path) -> list[dict]:
    """The page's answer for each drawing (uint8, dark on white), from segment.js in Node."""
    (tmp / "shapes.json").write_text(json.dumps([a.shape for a in drawings]))
    (tmp / "pixels.bin").write_bytes(b"".join(a.tobytes() for a in drawings))
    (tmp / "run.mjs").write_text(DRIVER.replace("STATIC", STATIC.as_uri()))
    argv = ["node", str(tmp / "run.mjs"), str(tmp / "shapes.json"), str(tmp / "pixels.bin"), module.as_uri()]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    pages = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(pages) == len(drawings)
    return pages


@pytest.fixture(scope="module")
def both(test_images, models_dir, module, tmp_path_factory):
    """Each drawing's (name, array, page's answer, Python's digits as serve finds them)."""
    drawings = _drawings(test_images[0])
    pages = in_node(module, [a for _, a in drawings], tmp_path_factory.mktemp("segment_js"))
    model = TfliteModel(models_dir / "int8.tflite")
    judge = lambda x: model.predict_proba(x).max(axis=1)  # noqa: E731 (read_digits' judge)
    return [
        (name, a, page, find_digits(a, judge=judge)) for (name, a), page in zip(drawings, pages, strict=True)
    ]


def test_the_page_finds_the_digits_python_finds(both):
    """The page reads every drawing itself; its boxes, lines and images are Python's."""
    same = total = 0
    for name, _, page, digits in both:
        assert "error" not in page and "blank" not in page, (name, page)
        assert page["defer"] == "", name
        assert len(page["digits"]) == len(digits), (name, page["digits"], [d.box for d in digits])
        for got, want in zip(page["digits"], digits, strict=True):
            # within one pixel of the reduced picture (280 x 94): float32 sums in another order
            assert np.abs(np.subtract(got["box"], want.box)).max() <= 1.01 / 94, (name, got["box"], want.box)
            same, total = same + (tuple(got["box"]) == want.box), total + 1
            assert got["line"] == want.line, name
            diff = np.abs(np.reshape(got["image"], (28, 28)) - want.image).max()
            assert diff < 0.02, (name, diff)
    assert total == 115 and same >= 0.95 * total, f"{same}/{total} boxes identical"


def test_pieces_specks_lines_and_touching_digits(both):
    """A digit broken in two is one digit, specks are none, two lines are two, touching
    digits are cut: counted as written."""
    counts = {name: len(page["digits"]) for name, _, page, _ in both}
    written = {"broken": 3, "specks": 4, "one_0": 1, "one_1": 1, "one_2": 1}
    written |= {f"two_lines_{i}": 6 for i in range(4)} | {f"seven_{i}": 7 for i in range(3)}
    assert {name: counts[name] for name in written} == written
    for _, _, page, _ in both:
        assert [d["line"] for d in page["digits"]] == sorted(d["line"] for d in page["digits"])
    assert [d["line"] for d in both[12][2]["digits"]] == [0, 0, 0, 1, 1, 1]  # two_lines_0
    touching = [page for name, _, page, _ in both if name.startswith("touching")]
    assert sum(len(page["digits"]) == 4 for page in touching) >= 2


def test_blank_a_frame_too_many_marks_and_a_ruled_line(module, tmp_path):
    """A blank pad is blank; a frame round the pad and 70 marks are not a number, in
    segment.py's words; a long line under the digits is left to the server."""
    blank = np.full(PAD, 255, np.uint8)
    frame = blank.copy()
    frame[5:-5, 5:12] = frame[5:-5, -12:-5] = frame[5:12, 5:-5] = frame[-12:-5, 5:-5] = 0
    marks = blank.copy()
    for row in range(5):  # five lines of fourteen strokes: a page of 1s
        for col in range(14):
            marks[8 + 55 * row : 48 + 55 * row, 20 + 58 * col : 29 + 58 * col] = 0
    ruled = blank.copy()
    ruled[250:256, 20:-20] = 0
    ruled[40:200, 100:112] = ruled[40:200, 400:412] = 0  # two 1s over the line
    got = in_node(module, [blank, frame, marks, ruled], tmp_path)
    assert got[0] == {"blank": True}
    for page, a in zip(got[1:3], (frame, marks), strict=True):
        with pytest.raises(SegmentError) as python:
            find_digits(a)
        assert page == {"error": str(python.value)}
    assert got[3]["defer"] == "a long line (ruled paper?) to take out"


def test_a_mid_grey_picture_with_a_shadow_has_pythons_polarity_and_ink(test_images, tmp_path):
    """A grey board or a shadowed sheet (median level 0.35-0.65): device.js decides polarity
    from the tails around the local level as edge/ink.py does, so its ink map is Python's."""
    from mnist_tflite.edge.ink import BlankImageError, ink_map

    rng = np.random.default_rng(5)
    pictures = []
    for k, digit in enumerate(test_images[0][:24]):
        h, w = int(rng.integers(80, 280)), int(rng.integers(120, 320))
        a = np.full((h, w), rng.uniform(0.4, 0.6), np.float32)
        a[:, : int(w * rng.uniform(0.2, 0.8))] -= rng.uniform(0.1, 0.25)  # a shadow's edge
        g = _glyph(digit, h // 2) * rng.uniform(0.25, 0.4) * (1 if k % 2 else -1)  # chalk or pen
        y, x = int(rng.integers(0, h - g.shape[0])), int(rng.integers(0, w - g.shape[1]))
        a[y : y + g.shape[0], x : x + g.shape[1]] += g
        pictures.append(np.clip(a + rng.normal(0, 0.01, a.shape), 0, 1).astype(np.float32))
    (tmp_path / "pics.bin").write_bytes(b"".join(p.tobytes() for p in pictures))
    (tmp_path / "run.mjs").write_text(
        f"""import {{ readFileSync }} from "node:fs";
import {{ greyInkMap }} from "{(STATIC / "device.js").as_uri()}";
const shapes = {json.dumps([p.shape for p in pictures])}, raw = readFileSync(process.argv[2]);
let at = 0;
for (const [h, w] of shapes) {{
  const a = new Float32Array(raw.buffer.slice(raw.byteOffset + at, raw.byteOffset + at + 4 * w * h));
  at += 4 * w * h;
  const ink = greyInkMap(a, w, h);
  console.log(JSON.stringify(ink && Array.from(ink)));
}}"""
    )
    res = subprocess.run(
        ["node", str(tmp_path / "run.mjs"), str(tmp_path / "pics.bin")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    same = 0
    for a, line in zip(pictures, res.stdout.splitlines(), strict=True):
        try:
            want = ink_map(a[..., None])
        except BlankImageError:
            want = None
        got = json.loads(line)
        assert (got is None) == (want is None)
        same += want is None or float(np.abs(np.reshape(got, a.shape) - want).max()) < 0.02
    assert same == len(pictures)
