"""Preprocessing real images the MNIST way: behaviour on real test digits rendered as photos."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge.preprocess import (
    BlankImageError,
    load_image,
    preprocess_file,
    read_array_file,
    to_mnist,
)
from tests.photos import make


def _paper(digit: np.ndarray, scale: int = 8, ink=(20, 30, 140), paper=(245, 238, 220)) -> Image.Image:
    """A 28x28 MNIST digit as dark ink on tinted paper, ``scale`` times larger, RGB."""
    a = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC))
    a = (a.astype(np.float32) / 255.0)[..., None]
    rgb = np.array(paper, np.float32) * (1 - a) + np.array(ink, np.float32) * a
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 images."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def digits(test_images):
    x, y = test_images
    return x[:20], y[:20]


# --- what the model sees ------------------------------------------------------------------


def test_output_is_mnist_format(digits):
    x, _ = digits
    for digit in x[:10]:
        out = to_mnist(_paper(digit))
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.9
        ys, xs = np.nonzero(out > 0.05)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 in (19, 20, 21, 22)  # ~20 px box
        yy, xx = np.mgrid[0:28, 0:28]
        cy, cx = (out * yy).sum() / out.sum(), (out * xx).sum() / out.sum()
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75  # centre of mass, like MNIST
        # white digit on black: the border is empty
        assert out[0].max() == 0 and out[-1].max() == 0


def test_photo_of_a_digit_looks_like_the_original(digits):
    x, _ = digits
    scores = [_similar(to_mnist(_paper(d)), d / 255.0) for d in x]
    assert np.median(scores) > 0.85, scores


def test_both_polarities_give_the_same_input(digits):
    x, _ = digits
    for digit in x[:5]:
        paper = to_mnist(_paper(digit, ink=(15, 15, 15), paper=(240, 240, 235)))
        board = to_mnist(_paper(digit, ink=(240, 240, 200), paper=(30, 60, 45)))
        assert _similar(paper, board) > 0.95


@pytest.mark.parametrize("pen", [(25, 40, 150), (170, 20, 30), (20, 110, 40), (240, 220, 40)])
def test_any_pen_colour(digits, pen):
    x, _ = digits
    for digit in x[:3]:
        black = to_mnist(_paper(digit, ink=(0, 0, 0), paper=(250, 250, 250)))
        coloured = to_mnist(_paper(digit, ink=pen, paper=(250, 250, 250)))
        assert _similar(coloured, black) > 0.9


def test_uneven_lighting_is_removed(digits):
    x, _ = digits
    for digit in x[:5]:
        img = np.asarray(_paper(digit), np.float32)
        shade = np.linspace(1.0, 0.45, img.shape[1], dtype=np.float32)[None, :, None]  # a shadow
        shaded = Image.fromarray((img * shade).astype(np.uint8))
        # (compared with the digit itself: a centre of mass a hair away may round to a 1-px shift)
        evenly_lit = _similar(to_mnist(_paper(digit)), digit / 255.0)
        assert _similar(to_mnist(shaded), digit / 255.0) > min(0.85, evenly_lit - 0.03)


def test_hairline_strokes_are_thickened_to_mnist_width(digits):
    from PIL import ImageFilter

    from mnist_tflite.edge.preprocess import _stroke_width

    x, _ = digits
    for digit in x[:5]:
        big = Image.fromarray(digit).resize((560, 560), Image.Resampling.BICUBIC)
        fine_pen = big.point(lambda v: 255 if v > 100 else 0).filter(ImageFilter.MinFilter(21))
        out = to_mnist(Image.fromarray(255 - np.asarray(fine_pen)))
        assert 1.2 <= _stroke_width(out) <= 3.0  # MNIST: median 1.8
        assert _similar(out, digit / 255.0) > 0.75


def test_ruled_paper_lines_are_not_ink(digits):
    x, _ = digits
    for digit in x[:5]:
        plain = np.asarray(_paper(digit, ink=(20, 20, 20)), np.uint8)
        grid = plain.copy()
        lines = (grid.sum(axis=2) > 600)[..., None]  # only on the paper, under the ink
        ruled = np.zeros_like(lines)
        ruled[::19], ruled[:, ::19] = True, True
        grid[:] = np.where(lines & ruled, np.array((170, 190, 230), np.uint8), grid)  # light blue
        assert _similar(to_mnist(grid), to_mnist(plain)) > 0.95


def test_arrays_already_28x28_are_used_as_is(digits):
    x, _ = digits
    np.testing.assert_array_equal(to_mnist(x[0]), x[0].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(to_mnist(x[0][..., None]), x[0].astype(np.float32) / 255.0)
    f = x[1].astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_mnist(f), f)


def test_modes_rgba_16bit_and_arrays_agree(digits):
    x, _ = digits
    digit = x[3]
    ref = to_mnist(_paper(digit, ink=(0, 0, 0), paper=(255, 255, 255)))
    big = np.asarray(Image.fromarray(digit).resize((224, 224), Image.Resampling.BICUBIC))
    # a drawing app: black strokes on a transparent canvas
    rgba = np.zeros((224, 224, 4), np.uint8)
    rgba[..., 3] = big
    assert _similar(to_mnist(Image.fromarray(rgba, "RGBA")), ref) > 0.97
    # white strokes on a transparent canvas must not vanish against a white backdrop
    rgba[..., :3] = 255
    assert _similar(to_mnist(Image.fromarray(rgba, "RGBA")), ref) > 0.97
    # 16-bit grayscale scan, dark on light
    gray16 = ((255 - big).astype(np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    img16 = load_image(buf.getvalue(), name="scan16.png")
    assert img16.mode.startswith("I")
    assert _similar(to_mnist(img16), ref) > 0.97
    # the same as a NumPy array (H, W) and (H, W, 3)
    assert _similar(to_mnist(255 - big), ref) > 0.97
    assert _similar(to_mnist(np.stack([255 - big] * 3, -1)), ref) > 0.97


def test_exif_orientation_is_honoured(digits):
    x, _ = digits
    upright = _paper(x[0])
    # a phone stores the sensor's pixels (rotated) and an Orientation tag saying how to turn them
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    loaded = load_image(buf.getvalue())
    assert loaded.size == upright.size
    assert _similar(to_mnist(loaded), to_mnist(upright)) > 0.95


# --- no digit, no answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        np.full((300, 400, 3), 245, np.uint8),  # white page
        np.full((300, 400), 30, np.uint8),  # dark board
        # paper with a shadow across it and sensor noise, as JPEG
        np.clip(
            np.linspace(250, 140, 400)[None, :] + np.random.default_rng(0).normal(0, 3, (300, 400)), 0, 255
        ).astype(np.uint8),
    ],
    ids=["white", "board", "shaded-noisy-jpeg"],
)
def test_blank_page_is_refused(page, tmp_path):
    path = tmp_path / "blank.jpg"
    Image.fromarray(page).save(path, quality=70)
    with pytest.raises(BlankImageError, match="blank.jpg.*no ink"):
        preprocess_file(path)


def test_blank_photos_from_the_generator_are_refused():
    """Every condition the photo generator makes (noise, JPEG, shadows, boards), minus the digit."""
    from tests.photos import render

    rng = np.random.default_rng(5)
    for i in range(40):
        blob, _, _ = render(np.zeros((28, 28), np.uint8), 0, i, rng)
        with pytest.raises(BlankImageError):
            to_mnist(load_image(blob))


def test_sheet_on_a_dark_table(digits):
    """The table around the sheet is background, not ink, though it is darker than the paper.

    (Paper must still be most of the picture: that is how the polarity is decided.)
    """
    x, _ = digits
    for digit in x[:5]:
        sheet = np.asarray(_paper(digit, scale=6), np.uint8)
        photo = np.pad(sheet, ((20, 10), (20, 15), (0, 0)), constant_values=50)
        assert _similar(to_mnist(photo), to_mnist(sheet)) > 0.95


# --- bad files ----------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG header announcing ``width`` x ``height`` 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100_000, 9)  # the start of a very long run of zeros
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _good_files(tmp_path, digit):
    png, jpg = tmp_path / "good.png", tmp_path / "good.jpg"
    _paper(digit).save(png)
    _paper(digit).save(jpg, quality=90)
    return png, jpg


def test_bad_files_raise_errors_naming_the_file(tmp_path, digits):
    png, jpg = _good_files(tmp_path, digits[0][0])
    cases = {
        "notes.png": (b"just some text, not pixels\n" * 10, "not an image"),
        "empty.jpg": (b"", "empty file"),
        "cut.png": (png.read_bytes()[: len(png.read_bytes()) // 2], "truncated|corrupt"),
        "cut.jpg": (jpg.read_bytes()[: len(jpg.read_bytes()) // 2], "truncated|corrupt"),
        "bomb.png": (_png_bomb(100_000, 100_000), "over the .*limit"),
        "bomb2.png": (_png_bomb(9_000, 9_000), "over the limit"),
    }
    for name, (blob, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(MnistTfliteError, match=problem) as info:
            load_image(path)
        assert str(info.value).startswith(str(path)), info.value
        assert "\n" not in str(info.value)
    with pytest.raises(MnistTfliteError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MnistTfliteError, match="upload.png: corrupt GIF: its header cannot be read"):
        load_image(b"GIF89a-but-not-really", name="upload.png")
    with pytest.raises(MnistTfliteError, match="image: not an image"):
        load_image(b"<html>a web page</html>")


def test_pixel_limit_is_configurable(tmp_path, digits):
    png, _ = _good_files(tmp_path, digits[0][0])
    assert load_image(png).size == (224, 224)
    with pytest.raises(MnistTfliteError, match="50,176 pixels is over the limit of 10,000"):
        load_image(png, max_pixels=10_000)


def test_array_files(tmp_path, digits):
    x, _ = digits
    np.save(tmp_path / "batch.npy", x[:5])
    out = read_array_file(tmp_path / "batch.npy")
    assert out.shape == (5, 28, 28) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x[:5] / np.float32(255))
    assert preprocess_file(tmp_path / "batch.npy").shape == (5, 28, 28)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(MnistTfliteError, match=r"wrong.npy: array of shape \(3, 32, 32\); expected"):
        read_array_file(tmp_path / "wrong.npy")


# --- what preprocessing costs in accuracy -------------------------------------------------


@pytest.mark.slow
def test_accuracy_on_realistic_photos_is_within_two_points_of_clean(mnist, models_dir, tmp_path):
    """200 official test digits as photo/scan files vs the same digits as clean arrays."""
    from mnist_tflite.edge.predict import Classifier, Failure

    n = 200
    x, y = mnist.x_test[:n], mnist.y_test[:n].astype(int)
    made = make(x, y, tmp_path, count=n, seed=1)
    assert len({p.suffix for p, _ in made}) >= 4 and {r.polarity for _, r in made} == {
        "dark-on-light",
        "light-on-dark",
    }
    clf = Classifier(models_dir / "int8.tflite")
    clean = float((clf.model.predict(x / np.float32(255)) == y).mean())
    results = list(clf.predict_files([p for p, _ in made]))
    assert not [r for r in results if isinstance(r, Failure)]
    photo = float(np.mean([r.index == t for r, t in zip(results, y, strict=True)]))
    assert clean - photo <= 0.02, f"clean {clean:.1%} vs photos {photo:.1%}"
