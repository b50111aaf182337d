"""Real images -> MNIST format: white digit on black, 20x20 box, centred by mass in 28x28.

The steps follow how MNIST itself was made (LeCun et al.): the digit is cropped to its ink,
scaled so its longest side is 20 px (anti-aliased, aspect kept), and placed in a 28x28
field so that its centre of mass is at the centre. Before that, a photo or scan is turned
into an "ink map": the background (paper tint, uneven lighting) is estimated block by
block and subtracted, in the direction the background decides (dark ink on light paper,
or light chalk on a dark board). Pure Pillow + NumPy; no TensorFlow, no SciPy.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import MnistTfliteError, fail

__all__ = [
    "ARRAY_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "BlankImageError",
    "load_image",
    "preprocess_file",
    "read_array_file",
    "to_mnist",
]

# A 50-megapixel photo is fine; a 100,000 x 100,000 PNG of a few KB is a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".idx", ".ubyte", ".idx3-ubyte", ".gz")

BOX = 20  # MNIST: the digit's longest side
FIELD = 28  # ... placed in a 28x28 field
COM_TARGET = 14.0  # measured on the official test set: mean centre of mass at index 14.0
WORK_SIZE = 320  # photos are reduced to this longest side before anything else
CLOSING = 0.2  # background window, as a fraction of the longest side (wider than any stroke)
MIN_CONTRAST = 0.10  # ink must differ from the background by this much (fraction of full scale)
NOISE_MARGIN = 10.0  # ... and stand out from the noise by this many median deviations
MIN_INK_PIXELS = 6  # at working resolution; fewer is a speck of dust, not a digit
LOW_CUT, HIGH_CUT = 0.30, 0.75  # ink below LOW_CUT * peak is background, above HIGH_CUT * peak is solid
TARGET_STROKE = 1.8  # median MNIST stroke width in px (2 * area / perimeter at threshold 0.5)
MIN_STROKE = 1.2  # thinner strokes (fine pen, big photo) are thickened towards TARGET_STROKE
_SIGNATURES = {
    b"\x89PNG": "PNG",
    b"\xff\xd8": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
    b"RIFF": "WebP",
}


class BlankImageError(MnistTfliteError):
    """The image has no ink: nothing differs from the background enough to be a digit."""


# --- loading ----------------------------------------------------------------------------


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
):
    """Open and fully decode an image file, honouring its EXIF orientation.

    Args:
        source: a path, or the file's bytes (e.g. an upload).
        name: what to call the file in error messages (default: the path, or "image").
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        A decoded ``PIL.Image.Image`` (first frame of an animation), upright.

    Raises:
        MnistTfliteError: naming the file, for a missing, empty, truncated or unrecognised
            file or one over the pixel limit.

    Example:
        >>> image = load_image("photo.jpg")
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(source) if not isinstance(source, bytes | bytearray) else "image")
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise fail(label, "no such file") from None
        except IsADirectoryError:
            raise fail(label, "is a directory; expected an image file") from None
        except OSError as exc:
            raise fail(label, f"cannot read ({exc.strerror})") from None
    if not data:
        raise fail(label, "empty file (0 bytes); expected an image (PNG, JPEG, BMP, GIF, WebP, TIFF)")
    with warnings.catch_warnings():
        # we enforce our own limit below, before any pixel is decoded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            kind = next((k for sig, k in _SIGNATURES.items() if data.startswith(sig)), None)
            if kind:
                raise fail(label, f"corrupt {kind}: its header cannot be read") from None
            raise fail(
                label, f"not an image: starts with {data[:8]!r}; expected PNG, JPEG, BMP, GIF, WebP or TIFF"
            ) from None
        except Image.DecompressionBombError as exc:
            raise fail(label, f"over the pixel limit, possible decompression bomb ({exc})") from None
        except Exception as exc:  # untrusted bytes: any decoder failure is the file's fault
            raise fail(label, f"corrupt image header ({type(exc).__name__}: {exc})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise fail(
                label,
                f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
                "(possible decompression bomb); expected a photo or scan of one digit",
            )
        if width == 0 or height == 0:
            raise fail(label, f"image has no pixels ({width}x{height})")
        kind = image.format or "image"
        try:
            if image.format == "JPEG":
                # decode big photos at reduced size: we only need about WORK_SIZE pixels
                image.draft(image.mode, (WORK_SIZE * 2, WORK_SIZE * 2))
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # truncated data, bad CRC, broken EXIF...
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise fail(label, f"corrupt or truncated {kind} ({detail})") from None
    return image


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
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size and a.max() > 1.0:
        a = a / np.float32(255.0 if a.max() <= 255.0 else a.max())
    return np.clip(a, 0.0, 1.0)


def _image_to_array(image) -> np.ndarray:
    """A PIL image -> float32 (H, W, C) with C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA)."""
    sixteen_bit = image.mode.startswith("I;16")
    convert = {"P": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "1": "L", "La": "LA", "CMYK": "RGB"}
    convert.update({"YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "I;16": "I", "I;16B": "I", "I;16L": "I"})
    if image.mode in convert:
        image = image.convert(convert[image.mode])
    factor = max(image.size) // (2 * WORK_SIZE)
    if factor > 1:
        # shrink big photos in Pillow first: a 50-megapixel RGB photo as float32 is 600 MB
        with contextlib.suppress(ValueError, NotImplementedError):  # else NumPy does it later
            image = image.reduce(factor)
    raw = np.asarray(image)
    a = raw.astype(np.float32) / np.float32(65535.0) if sixteen_bit else _scale(raw)
    return a[..., None] if a.ndim == 2 else a


def _composite(a: np.ndarray) -> np.ndarray:
    """(H, W, C) with alpha -> without: transparent areas become a contrasting background."""
    if a.shape[-1] not in (2, 4):
        return a
    color, alpha = a[..., :-1], a[..., -1:]
    if float(alpha.min()) > 0.98:
        return color
    # paint the transparent canvas the opposite of what was drawn on it
    drawn = float((color * alpha).sum() / max(float(alpha.sum()), 1e-6))
    backdrop = 0.0 if drawn > 0.5 else 1.0
    return color * alpha + backdrop * (1.0 - alpha)


def _reduce(a: np.ndarray, longest: int) -> np.ndarray:
    """Block-average (H, W, C) so its longest side is at most ``longest`` (anti-aliased)."""
    factor = -(-max(a.shape[:2]) // longest)
    if factor <= 1:
        return a
    h, w = a.shape[0] // factor * factor, a.shape[1] // factor * factor
    if h == 0 or w == 0:  # a very thin strip: keep it as it is
        return a
    a = a[:h, :w]
    return a.reshape(h // factor, factor, w // factor, factor, a.shape[2]).mean(axis=(1, 3))


# --- ink map ----------------------------------------------------------------------------


def _quantile(a: np.ndarray, q: float, axis: int | None = None) -> np.ndarray:
    """Nearest-rank quantile (``np.percentile``/``np.median`` import numpy.ma: 25 ms of start-up)."""
    if axis is None:
        a, axis = a.ravel(), 0
    n = a.shape[axis]
    k = min(n - 1, max(0, int(round(q * (n - 1)))))
    return np.take(np.partition(a, k, axis=axis), k, axis=axis)


def _luminance(a: np.ndarray) -> np.ndarray:
    if a.shape[-1] == 1:
        return a[..., 0]
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def _light_background(lum: np.ndarray) -> bool:
    """Polarity from the background: most of the picture is paper (or board), not ink."""
    level = float(_quantile(lum, 0.5))
    if level >= 0.65:
        return True
    if level <= 0.35:
        return False
    # a mid-grey background: the ink is whichever tail reaches further from it
    low, high = float(_quantile(lum, 0.005)), float(_quantile(lum, 0.995))
    return (level - low) >= (high - level)


def _resize_float(a: np.ndarray, size: tuple[int, int], resample: str = "BILINEAR") -> np.ndarray:
    """Resize a float (H, W) array to (height, width) with Pillow's anti-aliased filters."""
    from PIL import Image

    filt = getattr(Image.Resampling, resample)
    out = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F").resize(
        (size[1], size[0]), filt
    )
    return np.asarray(out, dtype=np.float32)


def _running(a: np.ndarray, k: int, axis: int, op: np.ufunc) -> np.ndarray:
    """Centred running max/min of width ``k`` along ``axis`` (van Herk/Gil-Werman: cost independent of k)."""
    a = np.moveaxis(a, axis, -1)
    n, lo = a.shape[-1], k // 2
    total = -(-(n + k - 1) // k) * k
    p = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(lo, total - n - lo)], mode="edge")
    blocks = p.reshape(*p.shape[:-1], total // k, k)
    prefix = op.accumulate(blocks, axis=-1).reshape(p.shape)
    suffix = op.accumulate(blocks[..., ::-1], axis=-1)[..., ::-1].reshape(p.shape)
    return np.moveaxis(op(suffix[..., :n], prefix[..., k - 1 : k - 1 + n]), -1, axis)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean (edges repeated)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / np.float32(9.0)


def _background(channel: np.ndarray, light: bool) -> np.ndarray:
    """The paper (or board) without the ink: a morphological closing (opening on a board).

    Any mark thinner than the window is a stroke and is removed; larger areas (a shadow,
    a lighting gradient, the table around a sheet) are background and kept, edges and all.
    """
    k = max(3, int(max(channel.shape) * CLOSING) | 1)
    first, second = (np.maximum, np.minimum) if light else (np.minimum, np.maximum)
    # the picture goes on beyond its frame: a dark table edge along the border stays background
    bg = np.pad(channel, k, mode="edge")
    for op in (first, second):
        bg = _running(_running(bg, k, 0, op), k, 1, op)
    return bg[k:-k, k:-k]


def _ink_map(a: np.ndarray) -> np.ndarray:
    """(H, W, C) colour image in [0, 1] -> ink strength (H, W) in [0, 1], 0 = background."""
    light = _light_background(_luminance(a))
    channels = [a[..., c] for c in range(min(a.shape[-1], 3))]
    diffs = []
    for ch in channels:
        bg = _background(ch, light)
        # on paper, light falls on ink and paper alike: dividing by the paper level (a flat
        # field) evens out shadows; a dark board has no such level to divide by
        diffs.append((bg - ch) / np.maximum(bg, 0.2) if light else ch - bg)
    # any pen colour: ink is how far the most-changed channel moved away from the paper
    ink = np.max(np.stack(diffs), axis=0) if len(diffs) > 1 else diffs[0]
    # the background envelope sits a little above sensor/JPEG noise: take that level off,
    # and ask the ink to stand out from the noise as well as from the paper
    base = float(_quantile(ink, 0.5))
    noise = float(_quantile(np.abs(ink - base), 0.5))
    ink = np.clip(ink - base, 0.0, 1.0)
    smooth = _box3(ink)  # hides single-pixel noise when judging the peak
    peak = float(_quantile(smooth, 0.999)) if smooth.size > 1000 else float(smooth.max())
    peak = max(peak, float(smooth.max()) * 0.8)
    needed = max(MIN_CONTRAST, NOISE_MARGIN * noise)
    if peak < needed:
        raise BlankImageError(
            f"no ink found: the strongest mark differs from the background by {peak:.0%} of full "
            f"scale, expected at least {needed:.0%} (blank page?)"
        )
    low, high = LOW_CUT * peak, HIGH_CUT * peak
    ink = np.clip((ink - low) / (high - low), 0.0, 1.0)
    if int((ink > 0.5).sum()) < MIN_INK_PIXELS:
        raise BlankImageError("no digit found: only a few specks differ from the background (blank page?)")
    return ink


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


def _dilate(a: np.ndarray, k: int) -> np.ndarray:
    """Grey-level dilation with a k x k square (separable sliding maximum)."""
    if k <= 1:
        return a
    lo, hi = k // 2, k - 1 - k // 2
    p = np.pad(a, ((lo, hi), (0, 0)))
    rows = np.max(np.stack([p[i : i + a.shape[0]] for i in range(k)]), axis=0)
    p = np.pad(rows, ((0, 0), (lo, hi)))
    return np.max(np.stack([p[:, i : i + a.shape[1]] for i in range(k)]), axis=0)


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
    k = int(round((TARGET_STROKE - width) / scale)) + 1
    return _dilate(ink, max(1, k))


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
    if isinstance(image, np.ndarray):
        if _is_field(image):
            return _scale(image).reshape(FIELD, FIELD)
        if image.ndim == 2:
            a = _scale(image)[..., None]
        elif image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
            a = _scale(image)
        else:
            raise ValueError(
                f"Expected an image array (H, W[, C]) with C <= 4, received: shape={image.shape}"
            )
    else:
        a = _image_to_array(image)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"Expected a non-empty image, received: shape={a.shape}")
    a = _reduce(_composite(a), WORK_SIZE)
    ink = _ink_map(a)
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


def read_array_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy`` or IDX file of MNIST-shaped images -> float32 (N, 28, 28) in [0, 1].

    Example:
        >>> batch = read_array_file("digits.npy")
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise fail(path, "no such file") from None
        except (OSError, ValueError, EOFError) as exc:
            raise fail(path, f"not a readable .npy array ({exc})") from None
    else:
        from .data import read_idx

        raw = read_idx(path)
    a = np.asarray(raw)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (FIELD, FIELD):
        raise fail(path, f"array of shape {a.shape}; expected (N, 28, 28) or (28, 28) MNIST-format images")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise fail(path, f"array of type {a.dtype}; expected numbers (uint8 0..255 or float 0..1)")
    return _scale(a)


def is_array_file(path: str | os.PathLike[str]) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".npy", ".idx", "-ubyte", "-ubyte.gz", ".idx.gz"))


def preprocess_file(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file -> model input: (28, 28) for an image, (N, 28, 28) for a ``.npy``/IDX batch.

    Example:
        >>> x = preprocess_file("photo.jpg")
    """
    if is_array_file(path):
        return read_array_file(path)
    try:
        return to_mnist(load_image(path, max_pixels=max_pixels))
    except BlankImageError as exc:
        raise BlankImageError(f"{path}: {exc}") from None
