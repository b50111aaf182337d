"""Load and validate MNIST-shaped data: the Keras cache, the embedded set, IDX directories, ``.npz``.

Images come back as uint8 arrays of shape (N, 28, 28), white digit on black, labels as
uint8 (N,). Scaling to [0, 1] happens in :func:`normalize`, the one place that defines
the model's input normalization.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core.errors import MnistTfliteError, fail, read_user_file
from mnist_tflite.core.values import check_data_spec

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Input normalization shared by training, conversion metadata and every inference path.
PIXEL_SCALE = 1.0 / 255.0
MAX_IDX_BYTES = 1 << 30  # decompressed; the full MNIST training images are 47 MB
IMAGE_SHAPE = (28, 28)
MNIST_ATTRIBUTION = "LeCun, Cortes, Burges; CC BY-SA 3.0"
# sha256 of the mnist.npz that keras.datasets.mnist.load_data() downloads and checks
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """Train and test split of a 10-class, 28x28 grayscale data set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    name: str = "mnist"
    class_names: tuple[str, ...] = MNIST_CLASSES

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "train_images": len(self.x_train),
            "test_images": len(self.x_test),
            "class_names": list(self.class_names),
        }


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], the model's input."""
    x = np.asarray(images, dtype=np.float32) * np.float32(PIXEL_SCALE)
    return x.reshape((-1, *IMAGE_SHAPE, 1))


# --- IDX --------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not), checking magic, dimensions and length.

    Example:
        >>> labels = read_idx("t10k-labels-idx1-ubyte.gz")
    """
    path = Path(path)
    raw = read_user_file(path, "an IDX file (e.g. t10k-images-idx3-ubyte[.gz])")
    try:
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(MAX_IDX_BYTES + 1)  # bounded: a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as exc:
        raise fail(path, f"cannot read gzip data ({exc})") from None
    if len(raw) > MAX_IDX_BYTES:
        raise fail(path, f"IDX data over {MAX_IDX_BYTES:,} bytes; expected MNIST-sized arrays")
    if len(raw) < 4:
        raise fail(path, f"not an IDX file: {len(raw)} bytes, expected a 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise fail(path, f"not an IDX file: magic {raw[:4].hex()}, expected 0000<type><ndim> e.g. 00000803")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise fail(path, f"truncated IDX header: {len(raw)} bytes, expected {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "trailing bytes in"
        raise fail(
            path,
            f"{problem} IDX data: {len(raw)} bytes, expected {expected} for dimensions {dims}",
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_candidates(directory: Path, split: str, kind: str) -> list[Path]:
    ndim = 3 if kind == "images" else 1
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(split)
        and p.name.replace(".", "-").split("-idx")[0].endswith(kind)
        and f"idx{ndim}-ubyte" in p.name.replace(".", "-")
    )


def _find_idx(directory: Path, split: str, kind: str, prefix: str | None = None) -> Path:
    """The ``split`` ``kind`` file; ``prefix`` (e.g. ``train-5k``) picks a named sample instead."""
    ndim = 3 if kind == "images" else 1
    if prefix is not None:
        split = prefix
    candidates = _idx_candidates(directory, split, kind)
    if not candidates:
        raise fail(
            directory,
            f"no {split} {kind} file, expected e.g. {split}-{kind}-idx{ndim}-ubyte[.gz]",
        )
    # the official name first: a directory may also hold a sample (train-5k-images-...)
    official = (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}-idx{ndim}-ubyte.gz")
    return min(candidates, key=lambda p: (p.name not in official, p.name))


def load_idx_dir(
    directory: str | os.PathLike[str], *, train_prefix: str | None = None, test_only: bool = False
) -> Dataset:
    """Load ``train-*`` and ``t10k-*`` IDX image and label files from one directory.

    A directory with only ``t10k-*`` files loads with no training images (enough to
    evaluate; ``load(..., need_train=True)`` refuses it). An ``md5sums`` file beside them
    (``md5sum`` format) is checked for every file it lists that is loaded.

    Args:
        train_prefix: load ``<train_prefix>-images-...`` as the training set (e.g. ``train-5k``).
        test_only: leave the training files unread (no training images in the result).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise fail(directory, "not a directory; expected train-*/t10k-* IDX files")
    splits = {}
    has_train = not test_only and any(
        p.name.startswith("train") and "ubyte" in p.name for p in directory.iterdir()
    )
    for split in ("train", "t10k"):
        prefix = train_prefix if split == "train" else None
        if split == "train" and not has_train:
            splits[split] = (np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros(0, np.uint8))
            continue  # only a test set: enough to evaluate
        images_path = _find_idx(directory, split, "images", prefix)
        labels_path = _find_idx(directory, split, "labels", prefix)
        verify_md5(images_path)
        verify_md5(labels_path)
        images, labels = read_idx(images_path), read_idx(labels_path)
        _check_pair(images_path, labels_path, images, labels)
        splits[split] = (images, labels)
    fashion = "fashion" in str(directory.resolve()).lower()
    return Dataset(
        *splits["train"],
        *splits["t10k"],
        source=f"IDX files in {directory}",
        name="fashion-mnist" if fashion else "mnist",
        class_names=FASHION_CLASSES if fashion else MNIST_CLASSES,
    )


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest: hash once per process


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, computed once per process for an unchanged file."""
    st = path.stat()
    key = (f"{algorithm}:{path.resolve()}", st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.new(algorithm)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def verify_md5(path: Path) -> None:
    """Check ``path`` against the ``md5sums`` file beside it, when that file lists it."""
    sums_path = path.parent / "md5sums"
    if not sums_path.is_file():
        return
    sums = {}
    for line in sums_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    expected = sums.get(path.name)
    if expected is None or not path.is_file():
        return
    got = file_digest(path)
    if got != expected:
        raise fail(path, f"MD5 {got} does not match {expected} in {sums_path.name}: corrupt or replaced")


def _check_pair(images_path: Path, labels_path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise fail(
            images_path,
            f"expected uint8 images of shape (N, 28, 28), received: shape={images.shape} "
            f"dtype={images.dtype}",
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise fail(labels_path, f"expected integer labels of shape (N,), received: shape={labels.shape}")
    if len(images) != len(labels):
        raise fail(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise fail(labels_path, f"labels out of range: found {labels.min()}..{labels.max()}, expected 0..9")


# --- npz ---------------------------------------------------------------------------------


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_header_only(npz: Any, key: str) -> np.ndarray:
    """A zero-filled, zero-stride stand-in with the member's shape and dtype, read from its
    ``.npy`` header alone (the data is not decompressed)."""
    fmt = np.lib.format
    with npz.zip.open(f"{key}.npy") as f:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:  # a newer header layout: read the array the ordinary way
            return npz[key]
        shape, _, dtype = read(f, max_header_size=10_000)
    return np.broadcast_to(np.zeros((), dtype), shape)


def load_npz(path: str | os.PathLike[str], *, name: str = "mnist", test_only: bool = False) -> Dataset:
    """Load an ``.npz`` with ``x_train, y_train, x_test, y_test`` (the Keras mnist.npz layout).

    ``test_only``: the training arrays must be there, and their headers (shape, dtype) are
    checked, but they are not decompressed.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a .npy holds one array, not the four
            expected = "expected x_train, y_train, x_test, y_test"
            raise fail(path, f"one array (.npy), not an .npz archive; {expected}")
        with loaded as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise fail(
                    path,
                    f"missing arrays {sorted(missing)}; found {sorted(npz.files)}, "
                    "expected x_train, y_train, x_test, y_test",
                )
            arrays = {
                k: _npz_header_only(npz, k) if test_only and k.endswith("_train") else npz[k]
                for k in NPZ_KEYS
            }
    except MnistTfliteError:
        raise
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise fail(path, f"not a readable .npz archive ({exc})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise fail(
                path,
                f"x_{split}: expected uint8 of shape (N, 28, 28), received: shape={x.shape} dtype={x.dtype}",
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
            raise fail(
                path,
                f"y_{split}: expected {len(x)} integer labels, received: shape={y.shape} dtype={y.dtype}",
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise fail(path, f"y_{split}: labels out of range {y.min()}..{y.max()}, expected 0..9")
    if test_only:  # shapes and types checked above; the pixels stay compressed
        arrays["x_train"], arrays["y_train"] = np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros(0, np.uint8)
    return Dataset(
        arrays["x_train"],
        arrays["y_train"].astype(np.uint8),
        arrays["x_test"],
        arrays["y_test"].astype(np.uint8),
        source=f"npz file {path}",
        name=name,
    )


# --- auto: Keras cache, else the embedded full set ---------------------------------------


def keras_cache_path() -> Path:
    """Where ``keras.datasets.mnist.load_data()`` keeps mnist.npz (honours KERAS_HOME)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / "mnist.npz"


def embedded_dir() -> Path:
    """The MNIST shipped in the package: the official 60k + 10k, and a 5k training sample."""
    return Path(str(resources.files("mnist_tflite") / "_data" / "mnist"))


def load_embedded(sample: bool = False, test_only: bool = False) -> Dataset:
    """The embedded official set (checksums verified); ``sample``: the 5,000-digit training sample."""
    d = load_idx_dir(embedded_dir(), train_prefix="train-5k" if sample else None, test_only=test_only)
    what = "sample (5,000 training digits of the official set)" if sample else "official set"
    return replace(d, source=f"embedded MNIST {what} ({MNIST_ATTRIBUTION})")


def load_keras_cache(cache: Path, test_only: bool = False) -> Dataset:
    """Keras's ``mnist.npz``, checked against the sha256 Keras itself checks on download."""
    if cache.is_file() and file_digest(cache, "sha256") != KERAS_MNIST_SHA256:
        raise fail(
            cache,
            f"sha256 {file_digest(cache, 'sha256')[:16]}... is not that of Keras's mnist.npz "
            f"({KERAS_MNIST_SHA256[:16]}...): corrupt or replaced; delete it, or pass --data embedded",
        )
    ds = load_npz(cache, test_only=test_only)
    return Dataset(ds.x_train, ds.y_train, ds.x_test, ds.y_test, source=f"Keras MNIST cache {cache}")


def load(
    spec: str = "auto",
    *,
    downloader: Callable[[], object] | None = None,
    log: Callable[[str], None] = print,
    need_train: bool = False,
    test_only: bool = False,
) -> Dataset:
    """Load a data set from ``auto``, ``embedded``, ``sample``, ``keras``, an IDX directory or ``.npz``.

    Args:
        spec: ``auto`` (the Keras cache when present, else the embedded full set: no network),
            ``embedded`` (the official 60,000 + 10,000 shipped in the package), ``sample``
            (its 5,000-digit training sample, for fast experiments), ``keras`` (the Keras
            cache, downloaded by ``downloader`` if missing), a directory or a ``.npz`` path.
        downloader: called for ``keras`` when there is no cache (the training side passes
            ``training.download.keras_mnist``).
        log: kept for callers; ``auto`` no longer falls back to a sample, so it has nothing to say.
        need_train: the caller trains or calibrates: data without training images is an error.
        test_only: the caller needs only the test split: the training images are not read
            (evaluating, compiling and verifying on the 10,000 test images).

    Returns:
        A validated :class:`Dataset`.

    Example:
        >>> ds = load("/usr/share/datasets/fashion-mnist")
    """
    if need_train and test_only:
        raise ValueError("need_train and test_only exclude each other")
    ds = _load(spec, downloader, test_only)
    if need_train and not len(ds.x_train):
        raise fail(spec, "only a test set (t10k-*), no training images: nothing to train; add train-* files")
    # every log line, report and sidecar that names the data says how much of it there was
    counts = (
        f"{len(ds.x_test):,} test images"
        if test_only
        else (f"{len(ds.x_train):,} training + {len(ds.x_test):,} test images")
    )
    return replace(ds, source=f"{ds.source}: {counts}")


def _load(spec: str, downloader: Callable[[], object] | None, test_only: bool = False) -> Dataset:
    if spec in ("auto", "keras"):
        cache = keras_cache_path()
        if spec == "keras" and not cache.exists() and downloader is not None:
            downloader()
        if cache.exists():
            return load_keras_cache(cache, test_only)
        if spec == "keras":
            raise fail(cache, "no Keras MNIST cache and the download failed; --data embedded is offline")
        return load_embedded(test_only=test_only)
    if spec in ("embedded", "sample"):
        return load_embedded(sample=spec == "sample", test_only=test_only)
    check_data_spec(spec)  # a device or FIFO would block np.load
    path = Path(spec)
    if path.is_dir():
        return load_idx_dir(path, test_only=test_only)
    if path.suffix == ".npz" or path.is_file():
        return load_npz(path, test_only=test_only)
    raise fail(spec, "no such file or directory; expected auto, embedded, sample, an IDX directory or .npz")


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, block: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle (seeded) then split off ``fraction`` for validation; labels may arrive sorted.

    ``block``: which ``fraction``-sized block of the shuffled data is held out (0: the first);
    blocks 0 .. 1/fraction - 1 are the folds of a k-fold cross-validation.
    """
    if not 0.0 <= fraction < 1.0:
        raise MnistTfliteError(f"validation fraction must be in [0, 1), received: {fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = round(len(x) * fraction)
    if block < 0 or (block > 0 and not 0 < block * n_val < len(x)):
        raise MnistTfliteError(f"validation block {block} of {n_val} images is outside {len(x)} images")
    held = slice(block * n_val, (block + 1) * n_val)
    keep = np.r_[0 : block * n_val, (block + 1) * n_val : len(x)]
    return x[keep], y[keep], x[held], y[held]


def representative_sample(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded subset of training images for int8 calibration."""
    count = min(count, len(x))
    idx = np.random.default_rng(seed + 1).choice(len(x), size=count, replace=False)
    return x[np.sort(idx)]


if __name__ == "__main__":  # pragma: no cover
    print(load(sys.argv[1] if len(sys.argv) > 1 else "auto").summary())
