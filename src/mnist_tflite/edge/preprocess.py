"""Real images -> MNIST format: white digit on black, 20x20 box, centred by mass in 28x28.

The steps follow how MNIST itself was made (LeCun et al.): the digit is cropped to its ink,
scaled so its longest side is 20 px (anti-aliased, aspect kept), and placed in a 28x28
field so that its centre of mass is at the centre. Before that, a photo or scan becomes an
ink map (:mod:`mnist_tflite.edge.ink`): background level, shadows and tint removed, polarity
decided by the background. Pure Pillow + NumPy; no TensorFlow, no SciPy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.edge.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_image
from mnist_tflite.edge.ink import MIN_CONTRAST, BlankImageError, ink_map, running
from mnist_tflite.edge.parquet import ParquetImages, is_parquet, read_parquet

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "BlankImageError",
    "array_rows",
    "image_to_mnist",
    "ink_to_mnist",
    "is_array_file",
    "iter_file",
    "load_image",
    "open_array_file",
    "picture",
    "preprocess_file",
    "read_array_file",
    "to_mnist",
]

BOX = 20  # MNIST: the digit's longest side
FIELD = 28  # ... placed in a 28x28 field
COM_TARGET = 14.0  # measured on the official test set: mean centre of mass at index 14.0
WORK_SIZE = 320  # photos are reduced to this longest side before anything else
TARGET_STROKE = 1.8  # median MNIST stroke width in px (2 * area / perimeter at threshold 0.5)
MIN_STROKE = 1.2  # thinner strokes (fine pen, big photo) are thickened towards TARGET_STROKE


# --- image -> channels in [0, 1] --------------------------------------------------------


def _scale(a: np.ndarray) -> np.ndarray:
    """Any numeric pixel array -> float32 in [0, 1] by its type's range."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        top = 255.0 if a.dtype.itemsize == 1 or (a.size and a.max() <= 255) else 65535.0
        if a.dtype.itemsize > 2 and a.size and a.max() > 65535:
            top = float(a.max())
        return np.clip(a.astype(np.float32) / np.float32(top), 0.0, 1.0)
    a = a.astype(np.float32)
    if a.size and not np.isfinite(a.max() - a.min()):  # NaN or infinity anywhere: not a picture
        raise MnistTfliteError("pixel values include NaN or infinity; expected finite numbers")
    if a.size and a.max() > 1.0:
        a = a / np.float32(255.0 if a.max() <= 255.0 else a.max())
    return np.clip(a, 0.0, 1.0)


def _image_to_array(image) -> np.ndarray:
    """A PIL image -> float32 (H, W, C) with C in {1, 3}: longest side <= WORK_SIZE, no alpha.

    The image is shrunk in Pillow, on its 8-bit pixels (a box filter, like ``_reduce``),
    before anything becomes float: a 600 px RGB photo costs a tenth as much that way.
    """
    sixteen_bit = image.mode.startswith("I;16")
    convert = {"P": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "1": "L", "La": "LA", "CMYK": "RGB"}
    convert.update({"YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "I;16": "I", "I;16B": "I", "I;16L": "I"})
    if image.mode in convert:
        image = image.convert(convert[image.mode])
    alpha = image.mode in ("RGBA", "LA")
    if alpha:
        # premultiplied: shrinking must not mix in the colour of transparent pixels
        image = image.convert("RGBa" if image.mode == "RGBA" else "La")
    factor = -(-max(image.size) // WORK_SIZE)
    if factor > 1:
        with contextlib.suppress(ValueError, NotImplementedError):  # else NumPy does it later
            image = image.reduce(factor)
    raw = np.asarray(image)
    a = raw.astype(np.float32) / np.float32(65535.0) if sixteen_bit else _scale(raw)
    a = a[..., None] if a.ndim == 2 else a
    return _composite(a[..., :-1], a[..., -1:]) if alpha else a


def _composite(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour (premultiplied by alpha) over a backdrop that contrasts with what was drawn."""
    # paint the transparent canvas the opposite of what was drawn on it
    drawn = float(premultiplied.sum()) / max(float(alpha.sum()) * premultiplied.shape[-1], 1e-6)
    backdrop = np.float32(0.0 if drawn > 0.5 else 1.0)
    return premultiplied + backdrop * (np.float32(1.0) - alpha)


def _reduce(a: np.ndarray, longest: int) -> np.ndarray:
    """Block-average (H, W, C) so its longest side is at most ``longest`` (anti-aliased).

    Edges are repeated to whole blocks, so a thin strip (1 x 7000) shrinks too: the work
    after this never exceeds ``longest`` squared, whatever the shape.
    """
    factor = -(-max(a.shape[:2]) // longest)
    if factor <= 1:
        return a
    h, w = a.shape[:2]
    fh, fw = min(factor, h), min(factor, w)  # a side shorter than a block is one block
    hh, ww = -(-h // fh) * fh, -(-w // fw) * fw
    if (hh, ww) != (h, w):
        a = np.pad(a, ((0, hh - h), (0, ww - w), (0, 0)), mode="edge")
    rows = a.reshape(hh // fh, fh, ww, a.shape[2]).sum(axis=1, dtype=np.float32)
    out = rows[:, 0::fw]
    for i in range(1, fw):
        out = out + rows[:, i::fw]
    return out / np.float32(fh * fw)


def _resize_float(a: np.ndarray, size: tuple[int, int], resample: str = "BILINEAR") -> np.ndarray:
    """Resize a float (H, W) array to (height, width) with Pillow's anti-aliased filters."""
    from PIL import Image

    filt = getattr(Image.Resampling, resample)
    out = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F").resize(
        (size[1], size[0]), filt
    )
    return np.asarray(out, dtype=np.float32)


# --- ink map -> 28x28 -------------------------------------------------------------------


def _span(profile: np.ndarray) -> tuple[int, int]:
    """The run of a projection profile that holds the digit, without detached specks or edges."""
    on = profile > profile.max() * 0.02
    gap = max(2, len(profile) // 20)  # a digit's own gaps (a broken stroke) are short
    runs: list[list[int]] = []
    for i in np.flatnonzero(on):
        if runs and i - runs[-1][1] <= gap:
            runs[-1][1] = int(i)
        else:
            runs.append([int(i), int(i)])
    mass = [float(profile[a : b + 1].sum()) for a, b in runs]
    keep = [r for r, m in zip(runs, mass, strict=True) if m >= 0.2 * max(mass)]
    return keep[0][0], keep[-1][1] + 1


def _crop_box(ink: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the ink, ignoring specks, smudges and lit edges away from the digit."""
    r0, r1 = _span(ink.sum(axis=1))
    c0, c1 = _span(ink[r0:r1].sum(axis=0))
    return slice(r0, r1), slice(c0, c1)


def _stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: 2 * area / perimeter of the thresholded ink."""
    b = ink > 0.5
    area = int(b.sum())
    perimeter = int((b[1:] != b[:-1]).sum() + (b[:, 1:] != b[:, :-1]).sum())
    return 2.0 * area / max(perimeter, 1)


def _normalize_strokes(ink: np.ndarray) -> np.ndarray:
    """Thicken hairline strokes so that, at MNIST scale, they are about as wide as MNIST's."""
    scale = BOX / max(ink.shape)
    width = _stroke_width(ink) * scale
    if width >= MIN_STROKE:
        return ink
    k = max(1, int(round((TARGET_STROKE - width) / scale)) + 1)
    # grey-level dilation with a k x k square; the margin lets the outer edges grow too
    grown = np.pad(ink, k)
    return running(running(grown, k, 0, np.maximum), k, 1, np.maximum)


def _place(patch: np.ndarray) -> np.ndarray:
    """Put a <= 20x20 patch in a 28x28 field with its centre of mass at the centre."""
    ys, xs = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    mass = float(patch.sum())
    cy, cx = float((patch * ys).sum()) / mass, float((patch * xs).sum()) / mass
    top, left = int(round(COM_TARGET - cy)), int(round(COM_TARGET - cx))
    field = np.zeros((FIELD + 2 * BOX, FIELD + 2 * BOX), dtype=np.float32)
    field[BOX + top : BOX + top + patch.shape[0], BOX + left : BOX + left + patch.shape[1]] = patch
    return field[BOX : BOX + FIELD, BOX : BOX + FIELD]


def _is_field(a: np.ndarray) -> bool:
    return a.shape in ((FIELD, FIELD), (FIELD, FIELD, 1))


def picture(image) -> np.ndarray:
    """A PIL image or array -> float32 (H, W, C) in [0, 1], longest side <= ``WORK_SIZE``.

    An array that is already 28x28 (an MNIST digit) comes back as (28, 28), only scaled,
    after the blank check that :func:`ink_map` applies to photos.
    """
    if isinstance(image, np.ndarray):
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise MnistTfliteError("image array holds NaN or infinity; expected finite pixel values")
        if _is_field(image):
            field = _scale(image).reshape(FIELD, FIELD)
            if field.size and float(field.max()) - float(field.min()) < MIN_CONTRAST:
                # the rule ink_map applies to photos: nothing differs from the background
                raise BlankImageError(
                    f"no ink found, no digit to classify: the 28x28 image is uniform (all pixels within "
                    f"{MIN_CONTRAST:.0%} of full scale of each other); expected a white digit on black"
                )
            return field
        if image.ndim == 2:
            a = _scale(image)[..., None]
        elif image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
            a = _scale(image)
            if a.shape[-1] in (2, 4):
                color, alpha = a[..., :-1], a[..., -1:]
                a = _composite(color * alpha, alpha)
        else:
            raise ValueError(
                f"Expected an image array (H, W[, C]) with C <= 4, received: shape={image.shape}"
            )
    else:
        a = _image_to_array(image)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"Expected a non-empty image, received: shape={a.shape}")
    return _reduce(a, WORK_SIZE)


def to_mnist(image) -> np.ndarray:
    """A photo, scan or array of one digit -> the model's input, the MNIST way.

    Args:
        image: a ``PIL.Image.Image`` (any mode: L, RGB, RGBA, P, 16-bit...) or a NumPy
            array (H, W), (H, W, 3) or (H, W, 4). An array that is already 28x28 is taken
            to be an MNIST digit and only scaled (uint8 / 255), not re-centred.

    Returns:
        float32 (28, 28) in [0, 1], white digit on black, longest side 20 px, centred by mass.

    Raises:
        BlankImageError: when there is no ink (a blank page); no digit is invented.

    Example:
        >>> x = to_mnist(load_image("photo.jpg"))  # then model.predict_proba(x[None])
    """
    if isinstance(image, np.ndarray) and _is_field(image):
        return picture(image)
    return ink_to_mnist(ink_map(picture(image)))


def ink_to_mnist(ink: np.ndarray) -> np.ndarray:
    """An ink map (H, W) of one digit -> the (28, 28) MNIST image: cropped, strokes evened,
    scaled to 20 px and centred by mass (the steps after :func:`ink_map` in :func:`to_mnist`).
    """
    ink = ink[_crop_box(ink)]
    ink = _normalize_strokes(ink)
    ink = ink[_crop_box(ink)]
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    patch = np.clip(_resize_float(ink, size, "LANCZOS"), 0.0, 1.0)
    if float(patch.sum()) <= 0.0:
        raise BlankImageError("no ink left after scaling to 20 px (blank page?)")
    return _place(patch)


# --- files ------------------------------------------------------------------------------


def open_array_file(path: str | os.PathLike[str]) -> np.ndarray | ParquetImages:
    """A ``.npy``, IDX or Parquet file of MNIST-shaped images -> its raw (N, 28, 28) rows, checked.

    A ``.npy`` is memory-mapped, so a huge batch is read only as it is used. The file's shape
    and type are checked here; a row's values (NaN, a blank image, a Parquet row of 783
    numbers) when the row is used, so that one bad row fails alone (:func:`array_rows`).
    """
    path = Path(path)
    if is_parquet(path):
        return read_parquet(path)
    if path.suffix.lower() == ".npy":
        if path.exists() and not path.is_file():  # a FIFO would block, a device never end
            raise fail(path, "not a regular file; expected a .npy array of MNIST-format images")
        try:
            raw = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise fail(path, "no such file") from None
        except (OSError, ValueError, EOFError) as exc:
            raise fail(path, f"not a readable .npy array ({exc})") from None
    else:
        from mnist_tflite.core.data import read_idx

        raw = read_idx(path)
    a = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (FIELD, FIELD):
        raise fail(path, f"array of shape {a.shape}; expected (N, 28, 28) or (28, 28) MNIST-format images")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise fail(path, f"array of type {a.dtype}; expected numbers (uint8 0..255 or float 0..1)")
    return a


def read_array_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy``, IDX or Parquet file of MNIST-shaped images -> float32 (N, 28, 28) in [0, 1].

    The whole batch or nothing: a row that cannot be read (NaN, a Parquet row of 783 numbers)
    is an error naming it.

    Example:
        >>> batch = read_array_file("digits.npy")
    """
    raw = open_array_file(path)
    if isinstance(raw, ParquetImages):
        bad = raw.problems()
        if bad:
            i = min(bad)
            raise fail(path, f"row {i}: {bad[i]}")
        raw = np.stack([raw[i] for i in range(len(raw))]) if len(raw) else np.zeros((0, FIELD, FIELD))
    elif np.issubdtype(raw.dtype, np.floating):
        for start in range(0, len(raw), 4096):  # in chunks: a memory-mapped batch stays unread
            bad_rows = ~np.isfinite(raw[start : start + 4096]).reshape(-1, FIELD * FIELD).all(axis=1)
            if bad_rows.any():
                row = start + int(np.argmax(bad_rows))
                raise fail(path, f"image {row} holds NaN or infinity; expected finite pixel values")
    return _scale(np.asarray(raw))


def is_array_file(path: str | os.PathLike[str]) -> bool:
    """``.npy``, IDX (``.idx``, ``-ubyte``, gzipped or not) or Parquet: a file of many images."""
    name = Path(path).name.lower()
    return name.endswith((".npy", ".idx", "-ubyte", "-ubyte.gz", ".idx.gz")) or is_parquet(name)


def array_rows(
    raw: np.ndarray | ParquetImages, path: str | os.PathLike[str], start: int = 0, stop: int | None = None
) -> Iterator[tuple[str, np.ndarray | str]]:
    """(``path[i]``, (28, 28) image in [0, 1]) for rows ``start`` to ``stop`` of an opened array
    file; a row that fails (blank, NaN, a bad Parquet row) gives (``path[i]``, problem) and the
    rows after it are still read. The one per-row reader of ``predict`` and ``predict --ray``."""
    for i in range(start, len(raw) if stop is None else stop):
        source = f"{path}[{i}]"
        try:
            yield source, to_mnist(np.asarray(raw[i]))
        except MnistTfliteError as exc:
            yield source, f"{source}: {exc}"


def image_to_mnist(
    image: Any, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A path, bytes, PIL image or array -> the (28, 28) image in [0, 1], the MNIST way.

    The one way in for a single image: files and bytes are read (and vetted) by
    :func:`load_image`; a blank image raises :class:`BlankImageError` naming its source.
    """
    if not isinstance(image, str | os.PathLike | bytes | bytearray):
        return to_mnist(image)
    label = name or (str(image) if not isinstance(image, bytes | bytearray) else "image")
    try:
        return to_mnist(load_image(image, name=label, max_pixels=max_pixels))
    except BlankImageError as exc:
        raise BlankImageError(f"{label}: {exc}") from None


def iter_file(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[str, np.ndarray | str]]:
    """(source, (28, 28) image in [0, 1]) for each image a file holds: one for a picture,
    one per row for a ``.npy``/IDX batch (memory-mapped: read as it is used). A blank row
    gives (source, problem) instead, and the rows after it are still read.

    Example:
        >>> for source, x in iter_file("digits.npy"): ...
    """
    if is_array_file(path):
        yield from array_rows(open_array_file(path), path)
        return
    yield str(path), image_to_mnist(path, max_pixels=max_pixels)


def preprocess_file(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file -> model input: (28, 28) for an image, (N, 28, 28) for a ``.npy``/IDX batch.

    Example:
        >>> x = preprocess_file("photo.jpg")
    """
    if is_array_file(path):
        return read_array_file(path)
    return image_to_mnist(path, max_pixels=max_pixels)
