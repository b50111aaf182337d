"""The touching-digit reader: a CTC model reads digits that touch without cutting them first.

Numbers are composed from official test digits (never seen in training: the reader learned
from training digits) and drawn as photo files by ``tests/numbers.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_tflite.cli import main
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge import reader as edge_reader
from mnist_tflite.edge.predict import Classifier
from mnist_tflite.edge.reader import (
    BLANK,
    DEFAULT_READER,
    HEIGHT,
    INNER,
    MARGIN,
    WIDTH,
    Reader,
    decode,
    normalize,
)
from tests.conftest import one_error_line
from tests.numbers import render_number


@pytest.fixture(scope="module")
def readers(models_dir):
    """The same model, touching digits read by the reader and by the cut chooser."""
    return Classifier(models_dir / "int8.tflite"), Classifier(models_dir / "int8.tflite", reader=None)


def _plain_decode(probs: np.ndarray) -> list[int]:
    """Best path, the textbook way: argmax, collapse repeats, drop blanks."""
    best = probs.argmax(axis=1)
    collapsed = [int(k) for i, k in enumerate(best) if i == 0 or k != best[i - 1]]
    return [k for k in collapsed if k != BLANK]


def test_decode_collapses_repeats_and_drops_blanks():
    assert [d for d, *_ in decode(np.eye(11)[[10, 3, 3, 10, 3, 7, 7, 10]])] == [3, 3, 7]
    assert decode(np.eye(11)[[10] * 32]) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.full(11, 0.3), size=32)
        found = decode(p)
        assert [d for d, *_ in found] == _plain_decode(p)
        for d, first, last, peak in found:  # each digit's steps are its own, its peak among them
            assert first <= peak <= last and (p[first : last + 1].argmax(axis=1) == d).all()


def test_vote_takes_what_most_phases_read():
    from mnist_tflite.edge.reader import Phase, vote

    def phase(shift: int, text: list[int], sure: float) -> Phase:
        probs = np.full((WIDTH // 4, BLANK + 1), (1 - sure) / BLANK, np.float32)
        probs[:, BLANK] = sure
        for k, d in enumerate(text):
            probs[2 * k + 1] = (1 - sure) / BLANK
            probs[2 * k + 1, d] = sure
        return Phase(shift, probs, decode(probs))

    two = [phase(0, [1, 2], 0.9), phase(1, [1, 7, 2], 0.99), phase(2, [1, 2], 0.8), phase(3, [4], 0.99)]
    assert vote(two).text == (1, 2) and vote(two).shift == 0  # two agree; the surer of the two
    apart = [phase(0, [1], 0.6), phase(1, [2], 0.99), phase(2, [3], 0.99), phase(3, [4], 0.99)]
    assert vote(apart).shift == 0  # no two agree: the unshifted reading
    tie = [phase(0, [5], 0.6), phase(1, [6], 0.95), phase(2, [5], 0.6), phase(3, [6], 0.95)]
    assert vote(tie).text == (6,) and vote(tie).shift in (1, 3)


def test_reading_every_phase_reads_more_strings_right():
    """Held-out strings of training digits: four phases voted read more whole than one."""
    from mnist_tflite.core import data
    from mnist_tflite.training.reader import HOLD_OUT, make_strings

    d = data.load("embedded", log=lambda m: None)
    images, labels, lengths = make_strings(
        d.x_train[-HOLD_OUT:], d.y_train[-HOLD_OUT:], 2000, np.random.default_rng(20)
    )
    reader = Reader()
    won = lost = 0  # strings read right by the vote and not by one phase; and the other way
    for image, label, n in zip(images, labels, lengths, strict=True):
        truth = [int(v) for v in label[:n]]
        one = [d for d, *_ in decode(reader.probabilities(image))] == truth
        voted = [int(np.argmax(r.probabilities)) for r in reader.read(image)] == truth
        won += voted and not one
        lost += one and not voted
    # the phases disagree on a few strings in a hundred; voting wins clearly more than it loses
    # (the gain moves from 0 to 26 strings between draws of 300-800: hence 2,000)
    assert won >= 1.4 * lost and won - lost >= 15, (won, lost)


def test_normalize_scales_the_ink_to_the_readers_height():
    ink = np.zeros((60, 200), np.float32)
    ink[10:50, 30:90] = 0.5  # 40 tall, 60 wide
    norm = normalize(ink)
    rows, cols = np.nonzero(norm.image > 0.01)
    assert norm.image.shape == (HEIGHT, WIDTH) and norm.image.max() == pytest.approx(1.0)
    assert rows.min() == MARGIN and rows.max() == MARGIN + INNER - 1 and cols.min() == MARGIN
    assert cols.max() - cols.min() + 1 == round(60 * INNER / 40) and norm.x0 == 30
    wide = normalize(np.ones((10, 500), np.float32)).image  # wider than the input: squeezed to fit
    assert (wide[MARGIN, MARGIN : WIDTH - MARGIN] > 0.99).all() and not wide[:, WIDTH - MARGIN :].any()
    assert not normalize(np.zeros((5, 5), np.float32)).image.any()


def test_training_and_inference_share_one_normalisation():
    from mnist_tflite.training import reader as training_reader

    assert training_reader.normalize is edge_reader.normalize  # one function, not a copy
    x = np.zeros((3, 28, 28), np.uint8)
    x[:, 4:24, 10:18] = 255
    images, labels, lengths = training_reader.make_strings(
        x, np.array([1, 1, 1]), 6, np.random.default_rng(0)
    )
    assert images.shape == (6, HEIGHT, WIDTH) and (lengths >= 1).all()
    for img, lab, n in zip(images, labels, lengths, strict=True):
        assert np.allclose(normalize(img).image, img, atol=0.02)  # normalised already: a fixed point
        assert (lab[:n] == 1).all() and not lab[n:].any()


def test_the_shipped_reader_has_its_sidecar():
    meta = json.loads(DEFAULT_READER.with_suffix(".json").read_text())
    assert meta["size_bytes"] == DEFAULT_READER.stat().st_size <= 400_000
    assert "training set" in meta["data_source"] and "LeCun" in meta["data_source"]
    assert meta["held_out"]["number_right"] >= 0.8  # held-out strings of 1-5 training digits
    Reader()  # its SHA-256 matches


def _placement_errors(reader: Reader, count: int = 80) -> np.ndarray:
    """|where the reader puts a digit - the digit's ink centre|, reader pixels, on held-out
    strings of training digits (the trainer's own composition, ground truth from the composer)."""
    from mnist_tflite.core import data
    from mnist_tflite.training.reader import HOLD_OUT, make_strings

    d = data.load("embedded", log=lambda m: None)
    centres: list[list[float]] = []
    images, _, lengths = make_strings(
        d.x_train[-HOLD_OUT:], d.y_train[-HOLD_OUT:], count, np.random.default_rng(9), centres
    )
    errors = []
    for image, n, cs in zip(images, lengths, centres, strict=True):
        reads = reader.read(image)  # a normalised image is its own normalisation: columns map 1:1
        if len(reads) == n:
            errors += [abs(r.column - c) for r, c in zip(reads, cs, strict=True)]
    return np.array(errors)


def test_the_reader_places_each_digit_at_its_middle():
    reader = Reader()
    assert reader.column_offset != 0.0  # the shipped sidecar's, measured by its trainer
    placed = _placement_errors(reader)
    reader.column_offset = 0.0  # where CTC's peaks alone put them
    peaks = _placement_errors(reader)
    assert len(placed) >= 150, len(placed)
    # a digit is about 15-20 reader pixels wide; a cut halfway between two placements must
    # fall between the digits, not through the left one
    assert np.median(placed) < 2.5, np.median(placed)
    assert np.median(placed) < np.median(peaks), (np.median(placed), np.median(peaks))


def test_remeasuring_the_shipped_reader_gives_its_sidecars_figures(tmp_path):
    from mnist_tflite.training.reader import main as reader_main

    copy = tmp_path / "reader.tflite"
    copy.write_bytes(DEFAULT_READER.read_bytes())
    shipped = json.loads(DEFAULT_READER.with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps({**shipped, "column_offset": 0.0}))
    assert reader_main(["--remeasure", str(copy)]) == 0
    again = json.loads(copy.with_suffix(".json").read_text())
    assert again["held_out"] == shipped["held_out"] and again["column_offset"] == shipped["column_offset"]
    assert again["sha256"] == shipped["sha256"] and copy.read_bytes() == DEFAULT_READER.read_bytes()
    copy.write_bytes(copy.read_bytes()[:-10])  # not the model its sidecar describes: said, exit 2
    assert reader_main(["--remeasure", str(copy)]) == 2


@pytest.fixture(scope="module")
def touching(sure_digits_by_label):
    """Touching 4-digit numbers of test digits, as photos (bytes, suffix, text)."""
    rng = np.random.default_rng(22)
    out = []
    for _ in range(24):
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        digits = [sure_digits_by_label[d][rng.integers(len(sure_digits_by_label[d]))] for d in labels]
        data, suffix, info = render_number([digits], [labels], rng, gap=None)
        out.append((data, suffix, info.text))
    return out


@pytest.fixture(scope="module")
def sure_digits_by_label(readers, test_images):
    x, y = test_images
    probs = readers[0].model.predict_proba(x.astype(np.float32) / 255.0)
    good = (probs.argmax(axis=1) == y) & (probs.max(axis=1) > 0.95)
    return {d: x[good & (y == d)] for d in range(10)}


def test_reader_reads_touching_numbers_the_cut_chooser_misreads(readers, touching, tmp_path):
    with_reader, chooser = readers
    right = {"reader": 0, "chooser": 0, "only the reader": 0}
    for i, (data, suffix, text) in enumerate(touching):
        path = tmp_path / f"t{i}{suffix}"
        path.write_bytes(data)
        a = "".join(d.label for d in with_reader.read_number(path).digits)
        b = "".join(d.label for d in chooser.read_number(path).digits)
        right["reader"] += a == text
        right["chooser"] += b == text
        right["only the reader"] += a == text and b != text
    assert right["reader"] >= 18, right  # of 24
    assert right["only the reader"] >= 10, right
    assert right["chooser"] <= right["reader"] - 10, right


def test_the_pictures_of_read_digits_hold_the_digits_read(readers, touching, tmp_path):
    """The reader says which digits; the cuts at its placements make each one's box and 28x28
    picture. The model, shown those pictures, reads mostly what the reader read (with CTC's
    peaks taken as the middles, the cuts went through the digits: 42 % on the benchmark's)."""
    with_reader, _ = readers
    agree = total = 0
    for i, (data, suffix, _) in enumerate(touching):
        path = tmp_path / f"t{i}{suffix}"
        path.write_bytes(data)
        reading = with_reader.read_number(path)
        for digit, by in zip(reading.digits, reading.by_reader, strict=True):
            if by:
                seen = with_reader.model.predict_proba(digit.image[None].astype(np.float32))[0]
                agree += with_reader.class_names[int(seen.argmax())] == digit.label
                total += 1
    assert total >= 60 and agree >= 0.65 * total, (agree, total)


def test_reader_digits_say_so_in_json(readers, touching, tmp_path, capsys):
    data, suffix, _ = touching[0]
    path = tmp_path / f"n{suffix}"
    path.write_bytes(data)
    reading = readers[0].read_number(path)
    doc = reading.to_dict()
    assert [d["read_by"] for d in doc["digits"]].count("reader") >= 2
    for d, p in zip(doc["digits"], reading.digits, strict=True):
        assert sum(d["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert np.array(d["image"]).shape == (28, 28) and 0 <= d["box"][0] < d["box"][2] <= 1
        assert int(np.argmax(p.probabilities)) == p.index and p.confidence == p.probabilities.max()
    strict = readers[0].read_number(path, min_confidence=1.0)  # no digit is that sure: all ?
    assert strict.number == "?" * len(reading.digits) and strict.uncertain


def test_corrupt_reader_is_one_line_exit_2(models_dir, tmp_path, capsys):
    bad = tmp_path / "reader.tflite"
    bad.write_bytes(DEFAULT_READER.read_bytes()[:5000])  # truncated, and no sidecar
    photo = tmp_path / "x.npy"
    np.save(photo, np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(MnistTfliteError, match="reader.tflite"):
        Reader(bad)
    code = main(["predict", str(models_dir / "int8.tflite"), str(photo), "--reader", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "reader.tflite" in one_error_line(err)
    classifier = models_dir / "int8.tflite"  # a classifier is not a reader: said, not run
    with pytest.raises(MnistTfliteError, match="not a reader"):
        Reader(classifier)


@pytest.mark.slow
def test_retraining_the_reader_is_deterministic(tmp_path):
    from mnist_tflite.training.reader import ReaderConfig, train_reader

    config = ReaderConfig(strings=256, held_out=64, epochs=2, seed=3)
    a = train_reader(config, tmp_path / "a.tflite", log=lambda m: None)
    b = train_reader(config, tmp_path / "b.tflite", log=lambda m: None)
    assert (
        a["sha256"] == b["sha256"]
        and (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()
    )
    assert "training set" in a["data_source"] and 0.0 <= a["held_out"]["number_right"] <= 1.0
    reader = Reader(tmp_path / "a.tflite")  # what the trainer writes, the runner loads
    assert reader.probabilities(np.zeros((HEIGHT, WIDTH), np.float32)).sum(axis=1) == pytest.approx(
        1.0, abs=1e-4
    )
