"""Classify real images of digits with a deployed ``.tflite`` model: no TensorFlow.

Images are preprocessed the MNIST way (:mod:`mnist_tflite.edge.preprocess`), scaled with the
normalization every model here is trained with (pixel/255, white on black; a sidecar that
states another is refused), and classified in batches: one interpreter
call per batch, however many files. Inputs stream through, so a directory of a million
files needs memory for one batch only.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail, printable
from mnist_tflite.edge import preprocess

__all__ = [
    "MIN_CONFIDENCE",
    "RUN_DEFAULT",
    "Classifier",
    "Failure",
    "Prediction",
    "Reading",
    "expand_inputs",
    "model_file",
    "number_fields",
    "read_digits",
]

MIN_CONFIDENCE = 0.6  # a digit the model is less sure of is shown as "?" with its two best guesses

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

    def line(self, top_k: int = 1) -> str:
        """The answer as one line of ``predict``'s output: ``photo.jpg: 7 (99.4%)``."""
        top = ", ".join(f"{printable(n)} {p:.1%}" for n, p in self.top(top_k)[1:])
        head = f"{printable(self.source)}: {printable(self.label)} ({self.confidence:.1%})"
        return head + (f"  next: {top}" if top else "")


@dataclass(frozen=True)
class Reading:
    """A number read from one picture: its digits by line, left to right.

    ``boxes`` are (left, top, right, bottom) as fractions of the picture's width and height;
    ``lines`` the line of writing of each digit. A digit whose confidence is below
    ``min_confidence`` is uncertain: ``?`` in :attr:`number`. ``by_reader`` says which
    digits the touching-digit reader read (label and probabilities its own; the others: the model).
    """

    source: str
    digits: tuple[Prediction, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    lines: tuple[int, ...]
    min_confidence: float = MIN_CONFIDENCE
    by_reader: tuple[bool, ...] = ()

    def is_sure(self, digit: Prediction) -> bool:
        return digit.confidence >= self.min_confidence

    @property
    def uncertain(self) -> bool:
        return not all(self.is_sure(d) for d in self.digits)

    @property
    def number(self) -> str:
        """The digits as text, ``?`` for an uncertain one, lines separated by a space."""
        text = ""
        for i, d in enumerate(self.digits):
            if i and self.lines[i] != self.lines[i - 1]:
                text += " "
            text += printable(d.label) if self.is_sure(d) else "?"
        return text

    def _guess(self, d: Prediction) -> str:
        if self.is_sure(d):
            return f"{printable(d.label)} {d.confidence:.1%}"
        (a, pa), (b, pb) = d.top(2)
        return f"? {printable(a)} {pa:.1%} or {printable(b)} {pb:.1%}"

    def line(self, top_k: int = 1) -> str:
        """The answer as one line of ``predict``'s output.

        ``meter.jpg: 2026 (digits 2 99.1%, 0 98.7%, 2 99.5%, 6 97.9%)``; one digit is
        answered as :meth:`Prediction.line` does, or ``photo.jpg: ? (7 45.0% or 1 30.1%)``.
        """
        if len(self.digits) == 1:
            d = self.digits[0]
            return d.line(top_k) if self.is_sure(d) else f"{printable(self.source)}: ? ({self._guess(d)[2:]})"
        guesses = ", ".join(self._guess(d) for d in self.digits)
        return f"{printable(self.source)}: {self.number} (digits {guesses})"

    def to_dict(self, top_k: int = 3, *, images: bool = True) -> dict[str, Any]:
        """JSON-ready: the number, and each digit's box, line, label, probabilities, image
        (one digit: also ``label``, ``confidence`` and ``top`` as a single digit's answer)."""
        digits = []
        readers = self.by_reader or (False,) * len(self.digits)
        for d, box, line, by in zip(self.digits, self.boxes, self.lines, readers, strict=True):
            item = {
                "box": list(box),
                "line": line,
                "read_by": "reader" if by else "model",
                "label": d.label if self.is_sure(d) else "?",
                "confidence": round(d.confidence, 6),
                "top": [{"label": n, "probability": round(p, 6)} for n, p in d.top(max(top_k, 2))],
                "probabilities": [round(float(p), 6) for p in d.probabilities],
            }
            if images:  # the 28x28 the model saw, white on black, 0..255
                item["image"] = np.rint(d.image * 255).astype(np.uint8).tolist()
            digits.append(item)
        doc = {"file": self.source, "number": self.number, "uncertain": self.uncertain, "digits": digits}
        # one digit: the fields a single-digit answer always had come first, as they were
        return {**self.digits[0].to_dict(top_k), **doc} if len(self.digits) == 1 else doc


def read_digits(
    image: Any,
    proba: Any,
    class_names: tuple[str, ...],
    *,
    source: str = "image",
    min_confidence: float = MIN_CONFIDENCE,
    reader: Any = None,
) -> Reading:
    """Find the digits of a picture and classify them (one model call for all of them).

    Args:
        image: a ``PIL.Image.Image`` or array (files: :func:`preprocess.load_image` first).
        proba: (N, 28, 28) images in [0, 1] -> (N, classes) probabilities (the model).
        class_names: the model's class names.
        reader: a :class:`mnist_tflite.edge.reader.Reader` for touching digits (its labels
            and probabilities replace the model's for the digits it reads), or None.

    Example:
        >>> read_digits(load_image("meter.jpg"), model.predict_proba, model.class_names).number
        '2026'
    """
    from mnist_tflite.edge.segment import find_digits

    found = find_digits(
        image,
        judge=lambda x: np.asarray(proba(x)).max(axis=1),
        reader=None if reader is None else reader.read,
    )
    x = np.stack([d.image for d in found]).astype(np.float32)
    probs = np.asarray(proba(x))
    names = [source] if len(found) == 1 else [f"{source}[{k}]" for k in range(len(found))]
    digits = []
    for name, img, p, d in zip(names, x, probs, found, strict=True):
        p = p if d.probabilities is None else d.probabilities
        i = int(np.argmax(p))
        digits.append(Prediction(name, class_names[i], i, float(p[i]), p, class_names, img))
    boxes = tuple(d.box for d in found)
    by_reader = tuple(d.probabilities is not None for d in found)
    return Reading(source, tuple(digits), boxes, tuple(d.line for d in found), min_confidence, by_reader)


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


@functools.cache
def _shipped_reader() -> Any:
    from mnist_tflite.edge.reader import Reader

    return Reader()


def number_fields(
    image: Any, model: Any, *, max_pixels: int = preprocess.DEFAULT_MAX_PIXELS, reader: Any = "default"
) -> dict[str, Any]:
    """The number in a picture, as fields of a JSON answer (``serve``'s ``/api/predict``).

    ``image`` is a file's bytes or a pixel array; ``model`` a ``TfliteModel``. Gives
    ``number`` ("2026", ``?`` for an uncertain digit, lines separated by a space),
    ``uncertain``, ``digits`` (each: box as fractions of the picture, line, label,
    confidence, top 2, probabilities, 28x28 image 0..255, read_by) and ``number_ms``; when no
    number can be read, ``number`` is None and ``number_error`` says why. Touching digits are
    read by ``reader`` (``"default"``: the shipped one; None: cut and chosen by the model).
    """
    start = time.perf_counter()
    try:
        if isinstance(image, bytes | bytearray):
            image = preprocess.load_image(image, name="upload", max_pixels=max_pixels)
        reader = _shipped_reader() if reader == "default" else reader
        full = read_digits(image, model.predict_proba, model.class_names, source="upload", reader=reader)
        full = full.to_dict(2)
        doc = {key: full[key] for key in ("number", "uncertain", "digits")}
    except MnistTfliteError as exc:
        doc = {"number": None, "uncertain": False, "digits": [], "number_error": str(exc)}
    return {**doc, "number_ms": round((time.perf_counter() - start) * 1000, 3)}


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
        reader: the ``.tflite`` that reads touching digits in :meth:`read_number`
            (``"default"``: the one shipped in the package; None: cut them and let the
            model choose the pieces).

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
        reader: str | os.PathLike[str] | None = "default",
    ) -> None:
        from mnist_tflite.edge.infer import TfliteModel
        from mnist_tflite.edge.reader import Reader

        self.model = TfliteModel(model_path, allow_modified=allow_modified, num_threads=num_threads)
        # touching digits: read by the CTC reader (None: cut and chosen by the model, as before)
        self.reader = _shipped_reader() if reader == "default" else None if reader is None else Reader(reader)
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

    def read_number(
        self, image: Any, *, name: str | None = None, min_confidence: float = MIN_CONFIDENCE
    ) -> Reading:
        """Read a number (one or more digits, one or more lines) from one picture.

        Raises:
            MnistTfliteError: for an unreadable image; ``BlankImageError`` for a blank one;
                ``SegmentError`` for more than 64 digits or one mark covering the picture.

        Example:
            >>> Classifier("int8.tflite").read_number("meter.jpg").number
            '2026'
        """
        source = name or (str(image) if isinstance(image, str | os.PathLike) else "image")
        if isinstance(image, str | os.PathLike | bytes | bytearray):
            image = preprocess.load_image(image, name=source, max_pixels=self.max_pixels)
        try:
            return read_digits(
                image,
                self._proba,
                self.class_names,
                source=source,
                min_confidence=min_confidence,
                reader=self.reader,
            )
        except MnistTfliteError as exc:
            message = str(exc)
            raise type(exc)(message if message.startswith(source) else f"{source}: {message}") from None

    def _proba(self, x: np.ndarray) -> np.ndarray:
        # pixel/255, as the sidecar states (sidecar.STANDARD_NORMALIZATION): as classify() does
        return self.model.predict_proba(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28))

    def read_files(
        self, paths: Iterable[str | os.PathLike[str]], *, min_confidence: float = MIN_CONFIDENCE
    ) -> Iterator[Reading | Prediction | Failure]:
        """Read a number from each picture; rows of ``.npy``/IDX files are single digits.

        Bad files (and pictures that are not digits) give a :class:`Failure`; the others
        are still read, in input order.
        """
        for path in expand_inputs(paths):
            if preprocess.is_array_file(path):
                yield from self.predict_files([path])
                continue
            try:
                yield self.read_number(path, min_confidence=min_confidence)
            except MnistTfliteError as exc:
                yield Failure(str(path), str(exc))

    # -- batches -------------------------------------------------------------------------

    def classify(self, images: np.ndarray, sources: list[str] | None = None) -> list[Prediction]:
        """Already-preprocessed images (N, 28, 28) in [0, 1] -> predictions, one batched call each."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        probs = self._proba(x)
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

    def save(result: Prediction | Reading) -> Path:
        if isinstance(result, Reading):  # each digit: photo.png, or photo_0.png, photo_1.png...
            return [save(d) for d in result.digits][-1]
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
