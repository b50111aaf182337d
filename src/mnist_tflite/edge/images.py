"""Open image files safely: decoded, verified, upright, and refused with a reason."""

from __future__ import annotations

import io
import os
import warnings

from mnist_tflite.core.errors import fail, first_line, read_user_file

# A 50-megapixel photo is fine; a 100,000 x 100,000 PNG of a few KB is a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DRAFT_SIZE = 640  # big JPEGs are decoded at about this size: preprocessing works at 320 px
_EXPECTED_IMAGE = "an image (PNG, JPEG, BMP, GIF, WebP, TIFF)"
# the documented formats, and no other: Pillow would also decode DDS, ICNS, ICO, IM, JP2,
# MSP, PCX, PPM, QOI, SGI, SPIDER, TGA, XBM... and hand EPS to Ghostscript (a phone's MPO
# photo is opened by the JPEG plugin)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
_SIGNATURES = {
    b"\x89PNG": "PNG",
    b"\xff\xd8": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
    b"RIFF": "WebP",
}


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
        A decoded ``PIL.Image.Image`` (first frame of an animation), upright. Big JPEGs
        are decoded at a reduced scale (longest side still >= 640 px).

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
        data = read_user_file(source, _EXPECTED_IMAGE, label=label)
    if not data:
        raise fail(label, f"empty file (0 bytes); expected {_EXPECTED_IMAGE}")
    with warnings.catch_warnings():
        # we enforce our own limit below, before any pixel is decoded
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            kind = next((k for sig, k in _SIGNATURES.items() if data.startswith(sig)), None)
            if kind:
                raise fail(label, f"corrupt {kind}: its header cannot be read") from None
            raise fail(
                label,
                f"not an image in a supported format: starts with {data[:8]!r}; "
                "expected PNG, JPEG, BMP, GIF, WebP or TIFF",
            ) from None
        except Image.DecompressionBombError as exc:
            raise fail(label, f"over the pixel limit, possible decompression bomb ({exc})") from None
        except Exception as exc:  # untrusted bytes: any decoder failure is the file's fault
            raise fail(label, f"corrupt image header ({first_line(exc)})") from None
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
                # decode big photos at reduced size: preprocessing needs no more
                image.draft(image.mode, (DRAFT_SIZE, DRAFT_SIZE))
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # truncated data, bad CRC, broken EXIF...
            raise fail(label, f"corrupt or truncated {kind} ({first_line(exc)})") from None
    return image
