"""Classify real images of digits with a deployed ``.tflite`` model: no TensorFlow.

Images are preprocessed the MNIST way (:mod:`mnist_tflite.edge.preprocess`), scaled with the
normalization every model here is trained with (pixel/255, white on black; a sidecar that
states another is refused), and classified in batches: one interpreter
call per batch, however many files. Inputs stream through, so a directory of a million
files needs memory for one batch only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.edge import preprocess

__all__ = ["RUN_DEFAULT", "Classifier", "Failure", "Prediction", "expand_inputs", "model_file"]

RUN_DEFAULT = "int8"  # the variant of a run folder that predict (and serve) use by default


def model_file(path: str | os.PathLike[str]) -> Path:
    """The ``.tflite`` to use for ``path``: itself, or a run folder's ``int8.tflite``.

    A directory without one is an error listing the models it holds.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    chosen = path / f"{RUN_DEFAULT}.tflite"
    if chosen.is_file():
        return chosen
    found = sorted(p.name for p in path.glob("*.tflite"))[:8]
    listed = f"it holds {', '.join(found)}: pass one of them" if found else "it holds no .tflite model"
    raise fail(
        path, f"is a folder without {chosen.name}; expected a .tflite model or a run folder ({listed})"
    )


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    ``label`` is the class name, ``index`` its position in ``probabilities``,
    ``confidence`` its probability; ``image`` is the 28x28 input the model saw, in [0, 1].
    """

    source: str
    label: str
    index: int
    confidence: float
    probabilities: np.ndarray
    class_names: tuple[str, ...] = field(repr=False)
    image: np.ndarray = field(repr=False)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), best first."""
        order = np.argsort(-self.probabilities, kind="stable")[: max(1, k)]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def to_dict(self, top_k: int = 3) -> dict[str, Any]:
        return {
            "file": self.source,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top": [{"label": n, "probability": round(p, 6)} for n, p in self.top(top_k)],
        }


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified, and why (one line, naming the file)."""

    source: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "error": self.problem}


def _is_input_file(path: Path) -> bool:
    return path.suffix.lower() in preprocess.IMAGE_SUFFIXES or preprocess.is_array_file(path)


def expand_inputs(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given; a directory becomes the image and array files in it, sorted by name."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.is_file() and _is_input_file(q))
        else:
            yield p


class Classifier:
    """A ``.tflite`` digit classifier for photos, scans and MNIST arrays.

    Args:
        model_path: the ``.tflite`` file; its sidecar ``.json`` (if any) supplies class
            names and its SHA-256 is checked (a normalization other than pixel/255 is refused).
        allow_modified: use the model even if its SHA-256 differs from the sidecar.
        buffer_size: images :meth:`predict_files` reads before each classification call
            (memory bound for a stream of files); the runner splits each call into the
            batches it runs fastest with.
        num_threads: interpreter threads (default: all cores).
        max_pixels: refuse larger images (decompression bombs).

    Example:
        >>> clf = Classifier("runs/demo/int8.tflite")
        >>> result = clf.predict("photo.jpg")
        >>> result.label, result.confidence
        ('7', 0.998)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        allow_modified: bool = False,
        buffer_size: int = 256,
        num_threads: int | None = None,
        max_pixels: int = preprocess.DEFAULT_MAX_PIXELS,
    ) -> None:
        from mnist_tflite.edge.infer import TfliteModel

        self.model = TfliteModel(model_path, allow_modified=allow_modified, num_threads=num_threads)
        self.buffer_size = max(1, int(buffer_size))
        self.max_pixels = max_pixels
        self.class_names = self.model.class_names

    # -- single images -------------------------------------------------------------------

    def preprocess(self, image: Any, *, name: str | None = None) -> np.ndarray:
        """A path, bytes, PIL image or array -> the (28, 28) image in [0, 1] the model sees."""
        return preprocess.image_to_mnist(image, name=name, max_pixels=self.max_pixels)

    def predict(self, image: Any, *, name: str | None = None) -> Prediction:
        """Classify one image (path, bytes, ``PIL.Image`` or array).

        Raises:
            MnistTfliteError: for an unreadable image; ``BlankImageError`` for a blank one.
        """
        x = self.preprocess(image, name=name)
        source = name or (str(image) if isinstance(image, str | os.PathLike) else "image")
        return self.classify(x[None], [source])[0]

    # -- batches -------------------------------------------------------------------------

    def classify(self, images: np.ndarray, sources: list[str] | None = None) -> list[Prediction]:
        """Already-preprocessed images (N, 28, 28) in [0, 1] -> predictions, one batched call each."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        probs = self.model.predict_proba(
            x
        )  # pixel/255, as the sidecar states (sidecar.STANDARD_NORMALIZATION)
        sources = sources or [f"image[{i}]" for i in range(len(x))]
        out = []
        for src, img, p in zip(sources, x, probs, strict=True):
            i = int(np.argmax(p))
            out.append(Prediction(src, self.class_names[i], i, float(p[i]), p, self.class_names, img))
        return out

    def _items(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[str, np.ndarray | str]]:
        """(source, image) for each image, or (source, problem) for each failure, in order."""
        for path in expand_inputs(paths):
            try:
                yield from preprocess.iter_file(path, max_pixels=self.max_pixels)
            except MnistTfliteError as exc:
                yield str(path), str(exc)

    def predict_files(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[Prediction | Failure]:
        """Classify files and directories in batches; yields results in input order.

        Bad files give a :class:`Failure` (the others are still classified).

        Example:
            >>> for r in Classifier("int8.tflite").predict_files(["scans/"]):
            ...     print(r.source, getattr(r, "label", None))
        """
        pending: list[tuple[str, np.ndarray | str]] = []
        n_images = 0
        for item in self._items(paths):
            pending.append(item)
            n_images += not isinstance(item[1], str)
            if n_images >= self.buffer_size:
                yield from self._flush(pending)
                pending, n_images = [], 0
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[str, np.ndarray | str]]) -> Iterator[Prediction | Failure]:
        good = [(s, x) for s, x in pending if not isinstance(x, str)]
        preds = iter(self.classify(np.stack([x for _, x in good]), [s for s, _ in good]) if good else [])
        for source, x in pending:
            if isinstance(x, str):
                # the message already names the file
                yield Failure(source, x)
            else:
                yield next(preds)


def save_inputs(directory: str | os.PathLike[str]):
    """A callback that saves each prediction's 28x28 input as ``DIR/<file stem>.png``."""
    from PIL import Image

    from mnist_tflite.core.atomic import write_bytes

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(out, f"cannot create the --show-input directory ({exc.strerror})") from None
    used: set[str] = set()

    def save(result: Prediction) -> Path:
        source = result.source
        if source.endswith("]") and "[" in source:  # digits.npy[3] -> digits_3
            base, index = source[:-1].rsplit("[", 1)
            stem = f"{Path(base).stem}_{index}"
        else:
            stem = Path(source).stem or "image"
        name, k = f"{stem}.png", 1
        while name in used:
            k += 1
            name = f"{stem}-{k}.png"
        used.add(name)
        buf = io.BytesIO()
        Image.fromarray(np.rint(result.image * 255).astype(np.uint8), "L").save(buf, "PNG")
        path = out / name
        try:
            write_bytes(path, buf.getvalue())
        except OSError as exc:
            raise fail(path, f"cannot write ({exc.strerror})") from None
        return path

    return save
