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


def test_auto_uses_keras_cache_then_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    notices: list[str] = []
    ds = data.load("auto", log=notices.append)  # no downloader: never touches the network
    # the notice is about training digits: only with a downloader (commands that train), on stderr
    assert ds.source.startswith("embedded") and notices == []
    cache = tmp_path / "keras" / "datasets" / "mnist.npz"
    calls = []

    def fake_download() -> None:  # what keras.datasets.mnist.load_data() leaves behind
        calls.append(1)
        cache.parent.mkdir(parents=True)
        np.savez(
            cache,
            x_train=ds.x_train[:10],
            y_train=ds.y_train[:10],
            x_test=ds.x_test[:5],
            y_test=ds.y_test[:5],
        )

    ds2 = data.load("auto", downloader=fake_download, log=notices.append)
    assert calls == [1] and ds2.source.startswith("Keras MNIST cache") and len(ds2.x_train) == 10
    ds3 = data.load("auto", downloader=fake_download, log=notices.append)  # cached: no second download
    assert calls == [1] and len(ds3.x_train) == 10


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
