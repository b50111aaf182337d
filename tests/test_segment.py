"""Numbers, not just digits: ``find_digits``, ``Classifier.read_number`` and ``predict``.

Numbers are composed from official test digits and rendered as photo files by the photo
generator (``tests/numbers.py`` over ``tests/photos.py``): spacing from wide to touching,
slant, size jitter, ruled paper, shadows, two lines; and the failure cases a real sheet
gives: a digit broken in two, a 1 next to a 7, a blank page, a grid, a page of marks.
"""

from __future__ import annotations

import io
import json
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_tflite.cli import main
from mnist_tflite.edge.images import load_image
from mnist_tflite.edge.ink import ink_map, running
from mnist_tflite.edge.predict import Classifier, Reading
from mnist_tflite.edge.preprocess import BlankImageError, ink_to_mnist, picture
from mnist_tflite.edge.segment import MAX_DIGITS, SegmentError, _candidates, _label, find_digits
from tests.numbers import render_number
from tests.photos import make


@pytest.fixture(scope="module")
def clf(models_dir):
    return Classifier(models_dir / "int8.tflite")


@pytest.fixture(scope="module")
def sure_digits(clf, test_images):
    """Test digits the model reads right as clean arrays, by label: what a number is made of."""
    x, y = test_images
    probs = clf.model.predict_proba(x.astype(np.float32) / 255.0)
    good = (probs.argmax(axis=1) == y) & (probs.max(axis=1) > 0.95)
    return {d: x[good & (y == d)] for d in range(10)}


def _number(sure_digits, text: str, seed: int, tmp_path, **kwargs):
    """A photo file of ``text`` ("2026", "12 34") written with real test digits."""
    rng = np.random.default_rng(seed)
    lines = [
        [sure_digits[int(c)][rng.integers(len(sure_digits[int(c)]))] for c in part] for part in text.split()
    ]
    labels = [[int(c) for c in part] for part in text.split()]
    data, suffix, info = render_number(lines, labels, rng, **kwargs)
    path = tmp_path / f"number_{seed}{suffix}"
    path.write_bytes(data)
    return path, info


def _flood_labels(mask: np.ndarray) -> np.ndarray:
    """Plain breadth-first 8-connected labelling: the reference for ``_label``."""
    labels = np.zeros(mask.shape, np.int32)
    n = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        todo = deque([start])
        while todo:
            y, x = todo.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not labels[v, u]:
                        labels[v, u] = n
                        todo.append((v, u))
    return labels


def test_components_match_a_flood_fill(test_images):
    rng = np.random.default_rng(0)
    masks = [rng.random((40, 57)) < p for p in (0.05, 0.3, 0.45, 0.6)]
    masks += [test_images[0][i] > 100 for i in range(5)] + [np.zeros((5, 5), bool), np.ones((3, 9), bool)]
    for mask in masks:
        got, count = _label(mask)
        want = _flood_labels(mask)
        assert count == want.max()
        # the same partition: each reference component is exactly one of ours, and back
        pairs = set(zip(got[mask].tolist(), want[mask].tolist(), strict=True))
        assert len(pairs) == count and (got[~mask] == 0).all()


@pytest.mark.parametrize(
    ("text", "seed", "options"),
    [
        ("2026", 1, {"gap": (8, 12), "slant": 0.0}),  # wide
        ("4711", 2, {"gap": (2, 4), "slant": 0.2}),  # close, slanted
        ("9035", 3, {"gap": (3, 8), "slant": -0.2, "ruled": True}),
        ("6184", 40, {"gap": (3, 8), "shadow": True}),
        ("58 203", 5, {"gap": (3, 8)}),  # two lines
        ("7", 6, {}),
        ("31", 7, {"gap": (3, 6), "ruled": True, "shadow": True}),
    ],
)
def test_numbers_from_photos_are_read(clf, sure_digits, tmp_path, text, seed, options):
    path, info = _number(sure_digits, text, seed, tmp_path, **options)
    reading = clf.read_number(path)
    assert isinstance(reading, Reading)
    assert reading.number == text, (reading.line(), info)
    assert len(set(reading.lines)) == len(text.split())
    for a, b in zip(reading.boxes, reading.boxes[1:], strict=False):  # left to right, line by line
        assert (a[0] < b[0]) or (a[1] < b[1])
    for box in reading.boxes:
        assert 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0


def test_touching_digits_are_cut(clf, sure_digits, tmp_path):
    """Digits moved together until their strokes meet are one component: it is cut."""
    for i, text in ((1, "205"), (2, "7140"), (4, "52")):
        path, _ = _number(sure_digits, text, 20 + i, tmp_path, gap=None, slant=0.0)
        found = find_digits(load_image(path), judge=lambda x: clf._proba(x).max(axis=1))
        assert len(found) == len(text), text


def test_a_cut_bends_between_interlocking_digits():
    """A digit whose bar overhangs the next one's stem (a 7 before a 1) leaves no straight gap:
    a cut line bent at the middle row separates them, so one candidate is exactly the first."""
    patch = np.zeros((40, 40), np.float32)
    patch[:, 12:15] = 1.0  # the first digit's stem...
    patch[0:3, 12:24] = 1.0  # ... and its bar, over the second's stem
    first = patch.copy()
    patch[10:, 22:25] = 1.0  # the second digit
    found = _candidates(patch, 40.0)
    assert any(np.array_equal(ink, first) for ink in found.inks)


@pytest.mark.parametrize(("text", "seed"), [("0522", 5), ("5544", 50)])
def test_interlocking_touching_digits_are_read(clf, sure_digits, tmp_path, text, seed):
    """Touching digits that interlock (composed from test digits): read whole. Before the cuts
    could bend, these read 0527 and 52344."""
    path, info = _number(sure_digits, text, seed, tmp_path, gap=None)
    assert clf.read_number(path).number == text, info


def test_the_composer_says_which_digit_drew_each_pixel(sure_digits):
    """``owners``: each digit's pixels, left to right, on the ink; the photo is drawn the same."""
    digits, labels = [[sure_digits[d][0] for d in (3, 0, 8)], [sure_digits[1][0]]], [[3, 0, 8], [1]]
    photo, _, _ = render_number(digits, labels, np.random.default_rng(4), gap=None)
    owners: list[np.ndarray] = []
    again, _, info = render_number(digits, labels, np.random.default_rng(4), gap=None, owners=owners)
    assert again == photo
    owner = owners[0]
    assert owner.shape == info.size[::-1]
    assert set(np.unique(owner).tolist()) == {0, 1, 2, 3, 4}
    ys, xs = np.nonzero(owner)
    centre = [xs[owner[ys, xs] == k].mean() for k in (1, 2, 3)]
    assert centre == sorted(centre)  # the first line, left to right
    assert ys[owner[ys, xs] == 4].mean() > ys[owner[ys, xs] == 1].mean()  # the second line, below
    ink = 255 - np.asarray(Image.open(io.BytesIO(again)).convert("L"), np.int16)
    assert (ink[owner > 0] > ink[owner == 0].mean()).mean() > 0.9  # owned pixels are inked


def test_a_single_digit_is_read_exactly_as_before(clf, test_images, tmp_path):
    x, y = test_images
    made = make(x[:40], y[:40], tmp_path, count=40, seed=3)
    one = 0
    for path, _ in made:
        reading = clf.read_number(path)
        if len(reading.digits) == 1:
            one += 1
            before = clf.predict(path)
            np.testing.assert_array_equal(reading.digits[0].image, before.image)
            assert reading.digits[0].label == before.label and reading.digits[0].source == str(path)
    assert one >= 39


def test_a_digit_in_a_lighter_pen_is_the_same_digit(sure_digits):
    """A number's digits cut their strokes against their own ink, not the picture's darkest:
    a digit written at 40 % of its neighbours' strength gives the same 28x28 as written dark
    (cut picture-wide, as before, its strokes all fell under the ink map's cut)."""
    glyphs = [_glyph_ink(sure_digits[d][0]) for d in (4, 0, 7, 2)]

    def page(strength: float) -> np.ndarray:
        ink = np.zeros((80, 260), np.float32)
        for k, g in enumerate(glyphs):
            ink[18:62, 12 + 62 * k : 56 + 62 * k] = g * (strength if k == 2 else 1.0)
        return np.rint(255 * (1.0 - ink)).astype(np.uint8)  # dark on white paper

    dark, light = find_digits(page(1.0)), find_digits(page(0.4))
    assert len(dark) == len(light) == 4
    a, b = dark[2].image, light[2].image  # picture-wide, the light 7 peaked at 0.25: no solid pixel
    assert b.max() == 1.0 and abs(int((b > 0.5).sum()) - int((a > 0.5).sum())) <= 0.1 * (a > 0.5).sum()
    assert np.abs(b - a).mean() < 0.06  # its box is a pixel smaller (the cut ink's); the strokes agree
    for k in (0, 1, 3):  # the others are untouched
        np.testing.assert_array_equal(light[k].image, dark[k].image)


def _glyph_ink(digit: np.ndarray) -> np.ndarray:
    """A 28x28 test digit as ink in [0, 1], 44 px tall."""
    return np.asarray(Image.fromarray(digit).resize((44, 44), Image.Resampling.BILINEAR), np.float32) / 255


def test_a_small_blurred_digits_thin_strokes_are_kept(clf, sure_digits, tmp_path):
    """A blurred photo of a number: its 0 (about 30 px tall) has strokes fainter than the other
    digits' ink. Cut picture-wide, as before, it keeps a fifth of its solid pixels and reads 2
    (the number read 2423); cut against its own strokes, it is whole and reads 0."""
    owners: list[np.ndarray] = []
    path, info = _number(sure_digits, "0423", 139, tmp_path, gap=(3, 10), owners=owners)
    assert info.blur > 2
    image = load_image(path)
    assert clf.read_number(image).number == "0423"
    full = ink_map(picture(image))
    owner = np.asarray(Image.fromarray(owners[0]).resize(full.shape[::-1], Image.Resampling.NEAREST))
    mine = running(running((owner == 1).astype(np.float32), 5, 0, np.maximum), 5, 1, np.maximum)
    before = ink_to_mnist(full * mine)  # the 0's own pixels, cut as the whole picture is
    now = find_digits(image)[0].image
    assert clf.model.predict(np.stack([before, now])).tolist() == [2, 0]
    assert (now > 0.5).sum() > 3 * (before > 0.5).sum()


def test_a_digit_broken_in_two_stays_one_digit(clf, sure_digits, tmp_path):
    five = sure_digits[5][0].copy()
    rows = np.nonzero(five.max(axis=1) > 0)[0]
    five[rows[0] + 5 : rows[0] + 7] = 0  # the flag comes loose from the body
    assert _label(five > 100)[1] >= 2
    big = Image.fromarray(255 - five).resize((280, 280), Image.Resampling.BICUBIC)
    digits = find_digits(big)
    assert len(digits) == 1


def test_a_one_next_to_a_seven_is_two_digits(clf, sure_digits, tmp_path):
    path, _ = _number(sure_digits, "17", 8, tmp_path, gap=(2, 3), slant=0.15)
    assert clf.read_number(path).number == "17"


def test_bad_pictures(clf, tmp_path):
    blank = Image.new("RGB", (300, 200), (245, 240, 230))
    with pytest.raises(BlankImageError, match="no ink"):
        find_digits(blank)
    grid = Image.new("L", (400, 300), 250)
    draw = ImageDraw.Draw(grid)
    for x in range(5, 400, 60):
        draw.line([(x, 0), (x, 299)], fill=20, width=3)
    for y in range(5, 300, 40):
        draw.line([(0, y), (399, y)], fill=20, width=3)
    with pytest.raises(SegmentError, match="spans the whole picture"):
        find_digits(grid)
    dots = Image.new("L", (640, 480), 250)
    draw = ImageDraw.Draw(dots)
    for i in range(90):
        x, y = 20 + (i % 15) * 40, 30 + (i // 15) * 70
        draw.ellipse([x, y, x + 14, y + 30], outline=10, width=4)
    with pytest.raises(SegmentError, match=f"at most {MAX_DIGITS}"):
        find_digits(dots)


def test_cli_reads_numbers_says_uncertain_and_keeps_single(models_dir, sure_digits, tmp_path, capsys):
    model = str(models_dir / "int8.tflite")
    path, _ = _number(sure_digits, "2026", 1, tmp_path, gap=(8, 12), slant=0.0)
    assert main(["predict", model, str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: 2026 (digits 2 ") and line.count("%") == 4
    shown = tmp_path / "seen"
    assert main(["predict", model, str(path), "--json", "--show-input", str(shown)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(q.name for q in shown.iterdir()) == [f"{path.stem}_{k}.png" for k in range(4)]
    result = doc["results"][0]
    assert result["number"] == "2026" and not result["uncertain"] and doc["uncertain"] == 0
    for digit in result["digits"]:
        assert len(digit["box"]) == 4 and len(digit["probabilities"]) == 10
        assert np.asarray(digit["image"]).shape == (28, 28) and len(digit["top"]) == 2
    # nothing is that sure: every digit is "?" with its two best guesses, exit status 3
    assert main(["predict", model, str(path), "--min-confidence", "1.0"]) == 3
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ") and "?" in line.split(" (")[0] and " or " in line
    assert main(["predict", model, str(path), "--single"]) == 0
    single = capsys.readouterr().out.strip()
    assert single.startswith(f"{path}: ") and "digits" not in single and single.count("%") == 1


def test_cli_a_grid_fails_and_the_others_are_read(models_dir, sure_digits, tmp_path, capsys):
    path, _ = _number(sure_digits, "58", 9, tmp_path, gap=(5, 8))
    grid = Image.new("L", (200, 200), 250)
    draw = ImageDraw.Draw(grid)
    for v in range(0, 200, 25):
        draw.line([(v, 0), (v, 199)], fill=0, width=2)
        draw.line([(0, v), (199, v)], fill=0, width=2)
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    (tmp_path / "table.png").write_bytes(buf.getvalue())
    assert main(["predict", str(models_dir / "int8.tflite"), str(tmp_path / "table.png"), str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.strip().startswith(f"{path}: 58 (digits")
    errors = [e for e in err.strip().splitlines() if e.startswith("mnist-tflite")]
    assert len(errors) == 1 and "table.png" in errors[0] and "spans the whole picture" in errors[0]
    assert load_image(path).size[0] > 0


def test_serve_answers_the_digits_of_a_number(models_dir, sure_digits, tmp_path):
    from tests.conftest import require

    require("fastapi", "uvicorn")
    from fastapi.testclient import TestClient

    from mnist_tflite.serve.app import create_app

    path, _ = _number(sure_digits, "2026", 1, tmp_path, gap=(8, 12), slant=0.0)
    with TestClient(create_app(models_dir / "int8.tflite")) as client:
        upload = {"image": ("n.png", path.read_bytes(), "image/png")}
        assert "number" not in client.post("/api/predict", files=upload).json()  # only when asked
        doc = client.post("/api/predict?number=1", files=upload).json()
        assert doc["number"] == "2026" and len(doc["digits"]) == 4 and "label" in doc
        assert all(len(d["box"]) == 4 and np.asarray(d["image"]).shape == (28, 28) for d in doc["digits"])
        # an MNIST 28x28 array is one digit; a blank canvas gives no number, with the reason
        one = client.post("/api/predict?number=1", json={"pixels": sure_digits[3][0].tolist()}).json()
        assert one["number"] == "3" and len(one["digits"]) == 1 and one["label"] == 3  # the int, as before
        pad = np.zeros((80, 220), np.uint8)  # a drawing pad with two digits drawn on it
        pad[10:38, 20:48], pad[40:68, 150:178] = sure_digits[4][0], sure_digits[7][0]
        two = client.post("/api/predict?number=1", json={"pixels": pad.tolist()}).json()
        assert two["number"] == "4 7" and [d["line"] for d in two["digits"]] == [0, 1]
