"""Loaders against hand-made IDX bytes (good and broken), npz files and the real MNIST sample."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite.core import data
from mnist_tflite.core.errors import MnistTfliteError
from tests.conftest import SHARED_MNIST


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def write_idx_dir(tmp: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}"
            if gz:
                (tmp / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (tmp / name).write_bytes(raw)
    return tmp


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_round_trip(tmp_path, gz):
    write_idx_dir(tmp_path, gz=gz)
    ds = data.load(str(tmp_path))
    assert ds.x_train.shape == (20, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_test.shape == (10,)
    assert ds.class_names == data.MNIST_CLASSES
    # the bytes we wrote are the pixels we read
    rng = np.random.default_rng(0)
    assert np.array_equal(ds.x_train, rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8))


def test_read_idx_rejects_bad_magic(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 100)
    with pytest.raises(MnistTfliteError, match=r"x-idx3-ubyte: not an IDX file: magic 12340803"):
        data.read_idx(p)


def test_read_idx_rejects_truncated(tmp_path):
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    p = tmp_path / "t.idx"
    p.write_bytes(raw[:-10])
    with pytest.raises(MnistTfliteError, match=r"truncated IDX data: 3926 bytes, expected 3936"):
        data.read_idx(p)
    p.write_bytes(raw[:7])
    with pytest.raises(MnistTfliteError, match="truncated IDX header"):
        data.read_idx(p)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:30])
    with pytest.raises(MnistTfliteError, match=r"t.gz: cannot read gzip data"):
        data.read_idx(p)


def test_count_mismatch_and_label_range(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(MnistTfliteError, match="9 labels for 10 images"):
        data.load(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 12, np.uint8)))
    with pytest.raises(MnistTfliteError, match=r"labels out of range: found 12..12, expected 0..9"):
        data.load(str(tmp_path))


def test_wrong_image_shape(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 32, 32), np.uint8)))
    with pytest.raises(
        MnistTfliteError,
        match=r"expected uint8 images of shape \(N, 28, 28\), received: shape=\(20, 32, 32\)",
    ):
        data.load(str(tmp_path))


def test_missing_file_in_dir(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistTfliteError, match="no t10k labels file"):
        data.load(str(tmp_path))


def test_npz_good_and_bad(tmp_path):
    rng = np.random.default_rng(1)
    good = dict(
        x_train=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 8).astype(np.uint8),
        x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 4).astype(np.uint8),
    )
    np.savez(tmp_path / "good.npz", **good)
    ds = data.load(str(tmp_path / "good.npz"))
    assert np.array_equal(ds.x_test, good["x_test"])

    np.savez(tmp_path / "float.npz", **{**good, "x_train": good["x_train"].astype(np.float32)})
    with pytest.raises(MnistTfliteError, match=r"float.npz: x_train: expected uint8 of shape \(N, 28, 28\)"):
        data.load(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "missing.npz", x_train=good["x_train"])
    with pytest.raises(MnistTfliteError, match=r"missing arrays \['x_test', 'y_test', 'y_train'\]"):
        data.load(str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(MnistTfliteError, match="junk.npz: not a readable .npz archive"):
        data.load(str(tmp_path / "junk.npz"))


def test_missing_path():
    with pytest.raises(MnistTfliteError, match="no such file or directory"):
        data.load("/nonexistent/mnist")


def test_embedded_sample_is_the_shared_data():
    """The package's copy is byte-identical to ../shared/data/mnist (md5 sums)."""
    sums = dict(reversed(line.split()) for line in (data.embedded_dir() / "md5sums").read_text().splitlines())
    for name, md5 in sums.items():
        assert hashlib.md5((data.embedded_dir() / name).read_bytes()).hexdigest() == md5
        if SHARED_MNIST.exists():
            assert (SHARED_MNIST / name).read_bytes() == (data.embedded_dir() / name).read_bytes()
    assert "CC BY-SA 3.0" in (data.embedded_dir() / "README.md").read_text()


def test_embedded_counts(mnist):
    assert mnist.x_train.shape == (5000, 28, 28)
    assert mnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(mnist.y_train).tolist() == [500] * 10
    # white digits on black: the border is background
    assert mnist.x_test[:, 0, :].mean() < 1


# the published MNIST checksums of the four decompressed files (the package README lists them)
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


def test_embedded_is_the_complete_official_set(mnist):
    """``embedded``: all 60,000 + 10,000 official images; the 5k sample is drawn from them."""
    for name, md5 in PUBLISHED_MD5.items():
        raw = gzip.decompress((data.embedded_dir() / name).read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5, name
        assert md5 in (data.embedded_dir() / "README.md").read_text()
    full = data.load("embedded")
    assert full.x_train.shape == (60000, 28, 28) and full.x_test.shape == (10000, 28, 28)
    assert full.source.startswith("embedded MNIST official set (LeCun")
    assert full.source.endswith(": 60,000 training + 10,000 test images")
    assert full.summary()["train_images"] == 60_000 and "CC BY-SA 3.0" in full.source
    assert np.array_equal(full.x_test, mnist.x_test) and np.array_equal(full.y_test, mnist.y_test)
    # each of the sample's 5,000 digits is one of the 60,000, with the same label
    label_of = {img.tobytes(): lab for img, lab in zip(full.x_train, full.y_train, strict=True)}
    assert all(
        label_of.get(img.tobytes()) == lab for img, lab in zip(mnist.x_train, mnist.y_train, strict=True)
    )
    assert mnist.source.startswith("embedded MNIST sample") and mnist.summary()["train_images"] == 5000
    assert mnist.source.endswith(": 5,000 training + 10,000 test images")


def _package_copy(tmp_path: Path, monkeypatch, corrupt: str, edit) -> Path:
    """The embedded folder with one file edited (the rest linked), installed as ``embedded_dir``."""
    copy = tmp_path / "mnist"
    copy.mkdir()
    for src in data.embedded_dir().iterdir():
        if src.name == corrupt:
            (copy / src.name).write_bytes(edit(src.read_bytes()))
        else:
            (copy / src.name).symlink_to(src)
    monkeypatch.setattr(data, "embedded_dir", lambda: copy)
    return copy / corrupt


@pytest.mark.parametrize(
    ("edit", "spec"),
    [
        (lambda raw: raw[: len(raw) // 2], "embedded"),  # truncated
        (lambda raw: raw[:100] + bytes([raw[100] ^ 1]) + raw[101:], "embedded"),  # one bit flipped
        (lambda raw: raw[:-1], "sample"),  # the sample's labels come from the same file checks
    ],
)
def test_corrupt_embedded_file_is_named(tmp_path, monkeypatch, edit, spec):
    name = "t10k-labels-idx1-ubyte.gz"
    bad = _package_copy(tmp_path, monkeypatch, name, edit)
    with pytest.raises(MnistTfliteError, match=rf"^{bad}: MD5 [0-9a-f]{{32}} does not match "):
        data.load(spec)


def test_idx_dir_md5sums_are_checked(tmp_path):
    write_idx_dir(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    sums = {n: hashlib.md5((tmp_path / n).read_bytes()).hexdigest() for n in names}
    (tmp_path / "md5sums").write_text("".join(f"{sums[n]}  {n}\n" for n in names))
    assert len(data.load(str(tmp_path)).x_train) == 20  # all match
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))  # one label changed
    with pytest.raises(
        MnistTfliteError, match=rf"^{labels}: MD5 .* does not match {sums[labels.name]} in md5sums"
    ):
        data.load(str(tmp_path))


def test_truncated_idx_in_dir_is_named(tmp_path):
    write_idx_dir(tmp_path, n_train=200)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-300])
    with pytest.raises(MnistTfliteError, match=rf"^{images}: cannot read gzip data"):
        data.load(str(tmp_path))


def test_npz_with_one_label_missing(tmp_path):
    bad = tmp_path / "mnist.npz"
    x = np.zeros((60000, 28, 28), np.uint8)
    np.savez(bad, x_train=x, y_train=np.zeros(59999, np.uint8), x_test=x[:10], y_test=np.zeros(10, np.uint8))
    with pytest.raises(
        MnistTfliteError, match=rf"^{bad}: y_train: expected 60000 integer labels, .*\(59999,\)"
    ):
        data.load(str(bad))


def test_test_set_only_directory_evaluates_but_trains_nothing(tmp_path, capsys):
    write_idx_dir(tmp_path)
    for p in tmp_path.glob("train-*"):
        p.unlink()
    ds = data.load(str(tmp_path))  # enough to evaluate a model
    assert len(ds.x_train) == 0 and len(ds.x_test) == 10
    with pytest.raises(MnistTfliteError, match=rf"^{tmp_path}: only a test set .* nothing to train"):
        data.load(str(tmp_path), need_train=True)
    from mnist_tflite.cli import main

    out = tmp_path / "m.keras"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only a test set" in err[0] and str(tmp_path) in err[0]
    assert not out.exists()


def test_test_only_leaves_the_training_files_unread(tmp_path):
    """evaluate, compile and export-micro --verify need the test split only: the training
    files are not decompressed, so a corrupt training file cannot stop them (a full load
    still names it)."""
    write_idx_dir(tmp_path, n_train=200)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-300])
    with pytest.raises(MnistTfliteError, match="cannot read gzip data"):
        data.load(str(tmp_path))
    ds = data.load(str(tmp_path), test_only=True)
    assert len(ds.x_train) == 0 and len(ds.x_test) == 10
    assert ds.source.endswith(": 10 test images")

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    npz = tmp_path / "m.npz"

    def save(**train):
        np.savez(
            npz,
            **{"x_train": x, "y_train": np.zeros(6, np.uint8), **train},
            x_test=x,
            y_test=np.ones(6, np.uint8),
        )

    save(y_train=np.full(6, 12, np.uint8))  # label values are in the data: not read, not checked
    with pytest.raises(MnistTfliteError, match="y_train: labels out of range"):
        data.load(str(npz))
    assert len(data.load(str(npz), test_only=True).x_test) == 6
    save(x_train=x.astype(np.float32))  # a wrong dtype or count is in the header: still refused
    with pytest.raises(MnistTfliteError, match="x_train: expected uint8"):
        data.load(str(npz), test_only=True)
    save(y_train=np.zeros(5, np.uint8))
    with pytest.raises(MnistTfliteError, match="y_train: expected 6 integer labels"):
        data.load(str(npz), test_only=True)
    save()
    ds = data.load(str(npz), test_only=True)
    assert np.array_equal(ds.x_test, x) and len(ds.x_train) == 0
    with pytest.raises(ValueError):
        data.load(str(npz), test_only=True, need_train=True)


def test_embedded_test_only_is_the_official_test_set(mnist):
    ds = data.load("embedded", test_only=True)
    assert len(ds.x_train) == 0
    assert np.array_equal(ds.x_test, mnist.x_test) and np.array_equal(ds.y_test, mnist.y_test)


def test_auto_is_the_keras_cache_else_the_embedded_set_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    calls: list[int] = []
    ds = data.load("auto", downloader=lambda: calls.append(1))
    assert calls == [] and len(ds.x_train) == 60_000 and ds.source.startswith("embedded MNIST")
    cache = tmp_path / "keras" / "datasets" / "mnist.npz"
    cache.parent.mkdir(parents=True)
    np.savez(
        cache, x_train=ds.x_train[:10], y_train=ds.y_train[:10], x_test=ds.x_test[:5], y_test=ds.y_test[:5]
    )
    # not Keras's file: its sha256 does not match the one Keras checks on download
    with pytest.raises(MnistTfliteError, match=rf"^{cache}: sha256 .* is not that of Keras's mnist.npz"):
        data.load("auto")
    monkeypatch.setattr(data, "KERAS_MNIST_SHA256", hashlib.sha256(cache.read_bytes()).hexdigest())
    ds2 = data.load("auto", downloader=lambda: calls.append(1))
    assert calls == [] and ds2.source == f"Keras MNIST cache {cache}: 10 training + 5 test images"


def test_keras_spec_downloads_when_there_is_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(MnistTfliteError, match="no Keras MNIST cache and the download failed"):
        data.load("keras", downloader=lambda: None)


def test_split_validation_shuffles_sorted_labels(mnist):
    x_tr, _, x_val, y_val = data.split_validation(mnist.x_train, mnist.y_train, 0.1, seed=3)
    assert len(x_val) == 500 and len(x_tr) == 4500
    # the 5k labels arrive sorted by class; the validation split must hold every class
    assert set(np.unique(y_val)) == set(range(10))
    again = data.split_validation(mnist.x_train, mnist.y_train, 0.1, seed=3)
    assert np.array_equal(again[3], y_val)


def test_validation_blocks_are_the_folds_of_a_cross_validation(mnist):
    x, y = mnist.x_train, mnist.y_train
    folds = [data.split_validation(x, y, 0.2, seed=3, block=k) for k in range(5)]
    held = np.concatenate([f[2] for f in folds])
    # every training image is held out exactly once, and each fold trains on the other 4,000
    assert len(held) == len(x) == 5000 and len({a.tobytes() for a in held}) == len({a.tobytes() for a in x})
    assert all(len(f[0]) == 4000 and len(f[2]) == 1000 for f in folds)
    for x_tr, _, x_val, _ in folds:
        assert not {a.tobytes() for a in x_tr} & {a.tobytes() for a in x_val}
    # block 0 is the plain split, image for image
    plain = data.split_validation(x, y, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(plain, folds[0], strict=True))
    with pytest.raises(MnistTfliteError, match="validation block 5 of 1000 images is outside 5000"):
        data.split_validation(x, y, 0.2, seed=3, block=5)


def test_normalize():
    x = data.normalize(np.array([[[0, 255] * 14] * 28], dtype=np.uint8))
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0


FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_directory():
    """Debian's dataset-fashion-mnist, installed by .ci/run: the same IDX format, other classes."""
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} is absent: apt-get install dataset-fashion-mnist (.ci/run installs it)")
    ds = data.load(str(FASHION))
    assert ds.name == "fashion-mnist" and ds.class_names[0] == "T-shirt/top"
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
