"""``Classifier`` and ``mnist-tflite predict``: real digits, real models, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mnist_tflite.cli import main
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge.predict import Classifier, Failure, Prediction
from tests.conftest import run_cli


def _photo(digit: np.ndarray, path, *, dark_board: bool = False) -> None:
    """Save a 28x28 digit as a 196x196 photo: blue ink on cream paper, or chalk on a board."""
    a = np.asarray(Image.fromarray(digit).resize((196, 196), Image.Resampling.BICUBIC), np.float32)[..., None]
    a /= 255.0
    paper, ink = ((30, 60, 45), (240, 240, 220)) if dark_board else ((245, 238, 220), (25, 40, 150))
    rgb = np.array(paper, np.float32) * (1 - a) + np.array(ink, np.float32) * a
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=85)


@pytest.fixture(scope="module")
def clf(models_dir):
    return Classifier(models_dir / "int8.tflite", buffer_size=4)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, test_images):
    """Ten real test digits as photos (JPEG and PNG, both polarities) + labels."""
    x, y = test_images
    d = tmp_path_factory.mktemp("photos")
    for i in range(10):
        _photo(x[i], d / f"digit{i:02d}.{'jpg' if i % 2 else 'png'}", dark_board=i % 3 == 0)
    return d, y[:10].astype(int)


def test_predict_one_image_in_every_form(clf, photo_dir):
    d, y = photo_dir
    path = d / "digit00.png"
    for image in (path, str(path), path.read_bytes(), Image.open(path), np.asarray(Image.open(path))):
        r = clf.predict(image)
        assert isinstance(r, Prediction)
        assert r.label == str(y[0]) and r.index == y[0]
        assert r.probabilities.shape == (10,) and abs(float(r.probabilities.sum()) - 1) < 0.02
        assert r.confidence == pytest.approx(float(r.probabilities.max()))
        assert r.image.shape == (28, 28)
    top = clf.predict(path).top(3)
    assert len(top) == 3 and top[0][0] == str(y[0]) and top[0][1] >= top[1][1] >= top[2][1]


def test_predict_files_keeps_order_and_reports_bad_files(clf, photo_dir, tmp_path, test_images):
    d, y = photo_dir
    for f in d.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.new("L", (120, 90), 250).save(tmp_path / "blank.png")
    (tmp_path / "notes.txt").write_text("not an input: ignored in a directory")
    np.save(tmp_path / "zbatch.npy", test_images[0][:3])
    results = list(clf.predict_files([tmp_path]))
    by_name = {r.source.split("/")[-1]: r for r in results}
    assert "notes.txt" not in by_name
    assert isinstance(by_name["broken.png"], Failure) and "broken.png" in by_name["broken.png"].problem
    assert isinstance(by_name["blank.png"], Failure) and "no ink" in by_name["blank.png"].problem
    preds = [r for r in results if isinstance(r, Prediction)]
    assert [r.source.split("/")[-1] for r in results] == sorted(by_name)  # input order
    photos = [r for r in preds if r.source.endswith(("png", "jpg"))]
    assert [r.index for r in photos] == list(y)
    arrays = [r for r in preds if "zbatch.npy[" in r.source]
    assert [r.index for r in arrays] == list(test_images[1][:3])


def test_files_are_classified_in_batches_and_streamed(models_dir, photo_dir, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    d, _ = photo_dir
    clf = Classifier(models_dir / "int8.tflite", buffer_size=4)
    calls = []
    real = clf.model.predict_proba
    clf.model.predict_proba = lambda x: calls.append(len(x)) or real(x)
    invokes = []
    real_invoke = Interpreter.invoke
    monkeypatch.setattr(Interpreter, "invoke", lambda self: invokes.append(1) or real_invoke(self))
    consumed = []

    def paths():
        for p in sorted(d.iterdir()):
            consumed.append(p)
            yield p

    stream = clf.predict_files(paths())
    first = next(stream)
    assert isinstance(first, Prediction) and len(consumed) <= 5  # one batch read, not everything
    rest = list(stream)
    assert len(rest) == 9
    assert calls == [4, 4, 2] and len(invokes) == 3  # one interpreter call per batch


def test_array_inputs_npy_and_idx_are_used_as_is(tmp_path, test_images, models_dir):
    from mnist_tflite import Classifier as PublicClassifier

    x, y = test_images
    np.save(tmp_path / "digits.npy", x[:6])
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (6, 28, 28))
    (tmp_path / "digits-idx3-ubyte").write_bytes(header + x[6:12].tobytes())
    clf = PublicClassifier(models_dir / "int8.tflite")
    results = list(clf.predict_files([tmp_path / "digits.npy", tmp_path / "digits-idx3-ubyte"]))
    assert [r.source.split("/")[-1] for r in results[:2]] == ["digits.npy[0]", "digits.npy[1]"]
    np.testing.assert_array_equal(np.stack([r.image for r in results]), x[:12] / np.float32(255))
    expected = clf.model.predict(x[:12] / np.float32(255))
    assert [r.index for r in results] == list(expected)
    assert (expected == y[:12]).mean() >= 0.9


# --- models that must be refused ----------------------------------------------------------


def test_bad_models_are_refused(models_dir, tmp_path):
    good = (models_dir / "int8.tflite").read_bytes()
    (tmp_path / "photo.tflite").write_bytes(b"\xff\xd8\xff\xe0" + b"JFIF" + b"\0" * 200)
    (tmp_path / "cut.tflite").write_bytes(good[: len(good) // 3])
    (tmp_path / "empty.tflite").write_bytes(b"")
    for name, problem in [
        ("photo.tflite", "not a TFLite flatbuffer"),
        ("cut.tflite", "not a valid Flatbuffer|corrupt|cannot load"),
        ("empty.tflite", "empty file"),
        ("missing.tflite", "no such file"),
    ]:
        with pytest.raises(MnistTfliteError, match=problem) as info:
            Classifier(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name))


def test_modified_model_needs_allow_modified(models_dir, tmp_path, photo_dir):
    d, _ = photo_dir
    data = bytearray((models_dir / "int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights: LiteRT would run it silently
    (tmp_path / "int8.tflite").write_bytes(bytes(data))
    shutil.copy(models_dir / "int8.json", tmp_path / "int8.json")
    with pytest.raises(MnistTfliteError, match=r"int8.tflite: SHA-256 .* does not match"):
        Classifier(tmp_path / "int8.tflite")
    r = Classifier(tmp_path / "int8.tflite", allow_modified=True).predict(d / "digit01.jpg")
    assert r.probabilities.shape == (10,)


# --- the command line ---------------------------------------------------------------------


def test_cli_predict_text_json_topk_and_show_input(models_dir, photo_dir, tmp_path, capsys):
    d, y = photo_dir
    model = str(models_dir / "int8.tflite")
    assert main(["predict", model, str(d / "digit01.jpg"), str(d / "digit02.png"), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{d / 'digit01.jpg'}: {y[1]} (")
    assert "next:" in lines[0]
    shown = tmp_path / "seen"
    assert main(["predict", model, str(d), "--json", "--show-input", str(shown), "--buffer-size", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classified"] == 10 and doc["failed"] == 0
    assert [int(r["label"]) for r in doc["results"]] == list(y)
    assert len(doc["results"][0]["top"]) == 1
    saved = np.asarray(Image.open(shown / "digit00.png"))
    assert saved.shape == (28, 28) and saved.dtype == np.uint8
    expected = Classifier(model).predict(d / "digit00.png").image
    np.testing.assert_allclose(saved / 255.0, expected, atol=1 / 255 + 1e-6)


def test_cli_mixed_good_and_bad_inputs_exit_1(models_dir, photo_dir, tmp_path, capsys):
    d, y = photo_dir
    (tmp_path / "zero.png").write_bytes(b"")
    Image.new("RGB", (80, 80), (250, 250, 250)).save(tmp_path / "blank.jpg")
    args = ["predict", str(models_dir / "int8.tflite"), str(d / "digit01.jpg"), str(tmp_path / "zero.png")]
    assert main([*args, str(tmp_path / "blank.jpg"), str(tmp_path / "nope.png")]) == 1
    out, err = capsys.readouterr()
    assert out.strip().startswith(f"{d / 'digit01.jpg'}: {y[1]}")
    errors = err.strip().splitlines()
    errors = [e for e in errors if not e.startswith("INFO")]
    assert len(errors) == 3
    assert "zero.png: empty file" in errors[0]
    assert "blank.jpg" in errors[1] and "no ink" in errors[1]
    assert "nope.png: no such file" in errors[2]


def test_cli_model_errors_exit_2_with_one_line(models_dir, tmp_path, photo_dir):
    d, _ = photo_dir
    (tmp_path / "fake.tflite").write_text("definitely not a model")
    r = run_cli("predict", str(tmp_path / "fake.tflite"), str(d / "digit01.jpg"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"mnist-tflite: error: {tmp_path / 'fake.tflite'}")
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert main(["predict", str(models_dir / "int8.tflite"), str(d / "digit01.jpg"), "--top-k", "0"]) == 2
    help_text = run_cli("predict", "--help").stdout
    assert "exit status" in help_text and "--show-input" in help_text and "--allow-modified" in help_text


def test_predict_never_imports_tensorflow(models_dir, photo_dir):
    d, _ = photo_dir
    code = textwrap.dedent(
        f"""
        import sys
        import mnist_tflite.cli
        heavy = ("tensorflow", "keras", "matplotlib")
        assert not [m for m in sys.modules if m.split(".")[0] in heavy], "import of mnist_tflite.cli"
        rc = mnist_tflite.cli.main(["predict", {str(models_dir / "int8.tflite")!r}, {str(d)!r}])
        assert rc == 0, rc
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print("HEAVY:", loaded)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY: []" in r.stdout, r.stdout


def test_directory_without_images_is_an_error(models_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("no digits here")
    r = run_cli("predict", str(models_dir / "int8.tflite"), str(tmp_path))
    assert r.returncode == 2 and "no input found" in r.stderr and str(tmp_path) in r.stderr
    assert "Traceback" not in r.stderr


def test_a_blank_image_is_refused_the_same_way_everywhere(models_dir, tmp_path, mnist, capsys):
    """One rule (as `serve`'s 422): a 28x28 with no ink is an error, not '1 (14 %)'."""
    from mnist_tflite.edge.preprocess import BlankImageError

    clf = Classifier(models_dir / "int8.tflite")
    for blank in (np.zeros((28, 28), np.uint8), np.zeros((28, 28, 1), np.float32)):
        with pytest.raises(BlankImageError, match="no digit"):
            clf.predict(blank)
    batch = tmp_path / "rows.npy"
    np.save(batch, np.stack([mnist.x_test[0], np.zeros((28, 28), np.uint8), mnist.x_test[1]]))
    assert main(["predict", str(models_dir / "int8.tflite"), str(batch)]) == 1
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.strip().splitlines()] == [f"{batch}[0]", f"{batch}[2]"]
    assert err.strip().startswith(f"mnist-tflite: error: {batch}[1]: no ink found, no digit to classify")
