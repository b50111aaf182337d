"""Turn official MNIST test digits into realistic photo/scan files, with their true labels.

Each file is one test digit rendered the way a person would hand it to ``predict``: a
different size (60-600 px), a paper tint or a chalk board, a pen colour, an offset inside
the frame, a small rotation, uneven lighting, blur, sensor noise, thinner or thicker
strokes, saved as JPEG (various qualities), PNG, grayscale, RGBA with a transparent
background, BMP, WebP or TIFF. Every choice is drawn from a seeded RNG and recorded.

Used by the tests (a few hundred files) and by the benchmarks (``make_photo_digits.py``,
``bench_preprocess_accuracy.py``: 2,000 files).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PAPERS = [
    (250, 250, 248),
    (245, 238, 220),
    (232, 236, 242),
    (215, 215, 210),
    (255, 255, 255),
    (238, 230, 200),
]
PENS = [(20, 20, 25), (25, 40, 150), (150, 25, 30), (90, 90, 95), (20, 90, 40), (45, 45, 60)]
BOARDS = [(30, 60, 45), (25, 25, 30), (40, 40, 45), (15, 35, 70)]
CHALKS = [(240, 240, 235), (250, 240, 150), (200, 230, 250), (230, 230, 230)]
FORMATS = ["jpeg"] * 10 + ["png"] * 4 + ["png-gray", "png-rgba", "bmp", "webp", "tiff", "jpeg-gray"]


@dataclass(frozen=True)
class Render:
    """How one file was made (for the record and for per-condition accuracy)."""

    index: int
    label: int
    size: tuple[int, int]
    digit_px: int
    rotation: float
    polarity: str
    stroke: int
    lighting: float
    blur: float
    noise: float
    fmt: str
    quality: int


def _stroke_change(ink: Image.Image, k: int) -> Image.Image:
    if k > 0:
        return ink.filter(ImageFilter.MaxFilter(2 * k + 1))
    if k < 0:
        return ink.filter(ImageFilter.MinFilter(-2 * k + 1))
    return ink


def render(digit: np.ndarray, label: int, index: int, rng: np.random.Generator) -> tuple[bytes, str, Render]:
    """One uint8 28x28 MNIST digit -> (file bytes, file suffix, how it was made)."""
    w = int(rng.integers(60, 601))
    h = int(np.clip(w * rng.uniform(0.7, 1.4), 60, 600))
    field = int(min(w, h) * rng.uniform(0.45, 0.95))  # the 28x28 field's size on the paper
    digit_px = int(round(field * 20 / 28))
    ink = Image.fromarray(digit).resize((field, field), Image.Resampling.BICUBIC)
    # a pen a pixel or two finer or broader, where the field is big enough for that to
    # leave the digit intact (a 1-px erosion of a 30-px digit would erase it)
    stroke = int(rng.choice([-1, 0, 0, 0, 1, 2])) * (field // 90)
    ink = _stroke_change(ink, stroke)
    rotation = float(rng.uniform(-12, 12))
    ink = ink.rotate(rotation, resample=Image.Resampling.BILINEAR, expand=True)
    canvas = Image.new("L", (w, h), 0)
    ox = int(rng.integers(min(0, w - ink.width), max(0, w - ink.width) + 1))
    oy = int(rng.integers(min(0, h - ink.height), max(0, h - ink.height) + 1))
    canvas.paste(ink, (ox, oy))
    # pen strokes are sharper than upscaled 28x28 pixels: steepen the edge a little
    a = np.asarray(canvas, dtype=np.float32) / 255.0
    a = np.clip((a - 0.15) * 1.6, 0.0, 1.0)[..., None]

    data, suffix, look = appearance(a, rng)
    info = Render(index, label, (w, h), digit_px, round(rotation, 2), stroke=stroke, **look)
    return data, suffix, info


def appearance(
    a: np.ndarray,
    rng: np.random.Generator,
    *,
    paper_marks: np.ndarray | None = None,
    shade: np.ndarray | None = None,
) -> tuple[bytes, str, dict]:
    """Ink coverage (H, W, 1) in [0, 1] -> (file bytes, suffix, how it looks): paper or board,
    pen, lighting, noise, blur and file format. ``paper_marks`` (H, W) in [0, 1] draws ruled
    lines into the paper; ``shade`` (H, W) multiplies the light (a shadow across the sheet).
    """
    h, w = a.shape[:2]
    dark_board = rng.random() < 0.25
    if dark_board:
        paper = np.array(BOARDS[rng.integers(len(BOARDS))], np.float32)
        pen = np.array(CHALKS[rng.integers(len(CHALKS))], np.float32)
        a = a * rng.uniform(0.7, 1.0)  # chalk is patchy
    else:
        paper = np.array(PAPERS[rng.integers(len(PAPERS))], np.float32)
        pen = np.array(PENS[rng.integers(len(PENS))], np.float32)
    if paper_marks is not None and not dark_board:
        rule = np.array((150, 175, 220), np.float32)  # a ruled line's pale blue
        paper = paper * (1.0 - paper_marks[..., None]) + rule * paper_marks[..., None]
    img = paper * (1.0 - a) + pen * a

    # uneven lighting: a linear gradient in a random direction, times a soft vignette
    yy, xx = np.ogrid[0:h, 0:w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    g = (np.cos(theta) * (xx / w - 0.5) + np.sin(theta) * (yy / h - 0.5)) + 0.5
    lighting = float(rng.choice([0.0, 0.15, 0.3, 0.45]))
    light = 1.0 - lighting * g
    vignette = 1.0 - 0.15 * rng.random() * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
    light = light * vignette if shade is None else light * vignette * shade
    img = img * light[..., None]
    noise = float(rng.choice([0.0, 2.0, 5.0, 8.0]))
    img = img + rng.normal(0, noise, img.shape).astype(np.float32) if noise else img
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    blur = float(rng.choice([0.0, 0.0, 0.6, 1.2])) * max(1.0, w / 200)
    if blur:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))

    fmt = str(FORMATS[rng.integers(len(FORMATS))])
    quality = int(rng.integers(35, 96)) if fmt.startswith("jpeg") else 0
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, "JPEG", quality=quality)
    elif fmt == "jpeg-gray":
        pil.convert("L").save(buf, "JPEG", quality=quality)
    elif fmt == "png-gray":
        pil.convert("L").save(buf, "PNG", compress_level=1)
    elif fmt == "png-rgba":
        # a drawing app: pen colour on a transparent canvas
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = pen.astype(np.uint8)
        rgba[..., 3] = (a[..., 0] * 255).astype(np.uint8)
        Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
    else:
        kwargs = {"compress_level": 1} if fmt == "png" else {}
        pil.save(buf, {"png": "PNG", "bmp": "BMP", "webp": "WEBP", "tiff": "TIFF"}[fmt], **kwargs)
    suffix = {"jpeg": ".jpg", "jpeg-gray": ".jpg", "png-gray": ".png", "png-rgba": ".png"}.get(fmt, f".{fmt}")
    polarity = "light-on-dark" if dark_board else "dark-on-light"
    look = {"polarity": polarity, "lighting": lighting, "blur": round(blur, 2), "noise": noise}
    return buf.getvalue(), suffix, {**look, "fmt": fmt, "quality": quality}


def make(
    images: np.ndarray, labels: np.ndarray, out: Path, *, count: int, seed: int = 0
) -> list[tuple[Path, Render]]:
    """Write ``count`` files (the first ``count`` digits) into ``out``; returns (path, render)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        data, suffix, info = render(images[i], int(labels[i]), i, rng)
        path = out / f"{i:05d}_label{int(labels[i])}{suffix}"
        path.write_bytes(data)
        made.append((path, info))
    return made
