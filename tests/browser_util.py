"""What the browser tests share: a screenshot of the page, read region by region."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def screenshot(page, name: str, tmp_path: Path) -> Callable[[str], np.ndarray]:
    """Screenshot the whole page (kept in ``$MNIST_TFLITE_SCREENSHOTS`` when set, for a person
    to look at) -> ``region(selector)``: the grey pixels of that element on the screenshot."""
    from PIL import Image

    out = Path(os.environ.get("MNIST_TFLITE_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / name
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)

    def region(selector: str) -> np.ndarray:
        box = page.locator(selector).first.bounding_box()
        assert box is not None, f"{selector} is not on the page"
        x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
        assert x + w <= pixels.shape[1] and y + h <= pixels.shape[0], f"{selector} is off the screenshot"
        return pixels[y : y + h, x : x + w]

    return region
