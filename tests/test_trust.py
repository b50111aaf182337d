"""Issue 19's first-contact and trust items outside compile and serve: one sidecar loader with
sane ranges, one normalization for every command, run folders that keep what run did not
write, honest lines (counts, escapes, hints)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_tflite.core import rundir, sidecar
from mnist_tflite.core.errors import MnistTfliteError
from tests.conftest import MODELS, cli_argv, edited_model, one_error_line, run_cli

FAST = ("--data", "embedded", "--latency-samples", "0")


def _copy_with_sidecar(tmp_path: Path, edit, name: str = "m") -> Path:
    """int8.tflite and its sidecar, the sidecar changed by ``edit`` (the SHA-256 still matches)."""
    model = tmp_path / f"{name}.tflite"
    shutil.copy(MODELS / "int8.tflite", model)
    meta = json.loads((MODELS / "int8.json").read_text())
    edit(meta)
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    return model


def _digits(tmp_path: Path, n: int = 3) -> Path:
    from mnist_tflite.core import data

    path = tmp_path / "digits.npy"
    np.save(path, data.load("embedded").x_test[:n])
    return path


# -- item 3: one sidecar loader, sane ranges, one normalization ---------------------------------

RANGES = [
    ("normalization", "pixel_scale", 1e300),
    ("normalization", "pixel_scale", 0.0),
    ("normalization", "pixel_offset", -1e9),
    ("normalization", "input_range", [1.0, 0.0]),
    ("input", "scale", 1e300),
    ("output", "zero_point", 2**40),
    ("calibration", "images", 10**12),
]


@pytest.mark.parametrize(("group", "key", "value"), RANGES, ids=[f"{g}.{k}={v}" for g, k, v in RANGES])
def test_every_sidecar_field_has_a_sane_range(tmp_path, group, key, value):
    model = _copy_with_sidecar(tmp_path, lambda m: m[group].__setitem__(key, value))
    with pytest.raises(MnistTfliteError, match=rf"'{group}\.{key}'"):
        sidecar.read(model)


def test_sidecar_seed_out_of_range_is_refused(tmp_path):
    model = _copy_with_sidecar(tmp_path, lambda m: m.__setitem__("seed", -1))
    with pytest.raises(MnistTfliteError, match="'seed'"):
        sidecar.read(model)


NORMALIZATIONS = [
    ("pixel_offset", 0.5),
    ("polarity", "black digit on white background"),
    ("pixel_scale", 1.0),
]


@pytest.mark.parametrize(("key", "value"), NORMALIZATIONS, ids=[k for k, _ in NORMALIZATIONS])
def test_a_normalization_no_command_applies_is_refused_by_predict_evaluate_and_serve(tmp_path, key, value):
    """Before: predict applied it (answering 3 or 8), evaluate ignored it (98.71 %), serve too."""
    model = _copy_with_sidecar(tmp_path, lambda m: m["normalization"].__setitem__(key, value))
    for argv in (("predict", str(model), str(_digits(tmp_path))), ("evaluate", str(model), *FAST)):
        r = run_cli(*argv, timeout=120)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert f"'normalization.{key}'" in one_error_line(r.stderr)
    pytest.importorskip("fastapi")
    from mnist_tflite.serve.app import create_app

    with pytest.raises(MnistTfliteError, match=f"normalization.{key}"):
        create_app(model)


def test_evaluate_refuses_a_model_whose_class_names_are_not_the_datas(tmp_path):
    from mnist_tflite.core.data import FASHION_CLASSES

    model = _copy_with_sidecar(tmp_path, lambda m: m.__setitem__("class_names", list(FASHION_CLASSES)))
    r = run_cli("evaluate", str(model), *FAST, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "class_names [T-shirt/top" in one_error_line(r.stderr)


def _signature_lies(tmp_path: Path) -> Path:
    def edit(model, schema):
        sg = model.subgraphs[0]
        sg.tensors[sg.outputs[0]].shapeSignature = [-1, 7]  # the shape says 10

    path = tmp_path / "sig.tflite"
    path.write_bytes(edited_model((MODELS / "int8.tflite").read_bytes(), edit))
    return path


def test_an_output_shape_signature_that_lies_is_one_line_exit_2(tmp_path):
    """Before: a ValueError traceback in predict and evaluate (serve: a 500 per request)."""
    from mnist_tflite.edge.infer import TfliteModel

    model = _signature_lies(tmp_path)
    with pytest.raises(
        MnistTfliteError, match=r"shape_signature \[-1, 7\] disagrees with its shape \[1, 10\]"
    ):
        TfliteModel(model)
    for argv in (("predict", str(model), str(_digits(tmp_path))), ("evaluate", str(model), *FAST)):
        r = run_cli(*argv, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "shape_signature" in one_error_line(r.stderr)


# -- item 4: run never deletes what it did not write -------------------------------------------


def _fake_run(out: Path) -> Path:
    """A run folder as `run` leaves it (report.json lists what it wrote)."""
    out.mkdir(parents=True)
    for name in ("int8.tflite", "int8.json", "model.keras", "report.md", "size_vs_accuracy.png"):
        (out / name).write_bytes(b"x")
    report = {"variants": [{"name": "int8", "status": "ok"}], "plots": {"size": "size_vs_accuracy.png"}}
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_run_foreign_names_what_run_did_not_write(tmp_path):
    out = _fake_run(tmp_path / "demo")
    assert rundir.run_foreign(out) == []
    (out / "firmware").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "photo.png").write_bytes(b"x")  # a PNG that report.json does not list
    assert rundir.run_foreign(out) == ["firmware/", "notes.txt", "photo.png"]
    (out / "report.json").unlink()  # no report: nothing here is provably run's
    assert "model.keras" in rundir.run_foreign(out)


@pytest.mark.parametrize("option", ["--force", "--resume"])
def test_run_force_or_resume_refuses_a_folder_holding_the_users_files(tmp_path, option):
    """Before: exit 0, and firmware/, compiled/ and the notes were gone."""
    pytest.importorskip("tensorflow")
    out = _fake_run(tmp_path / "demo")
    (out / "firmware").mkdir()
    (out / "firmware" / "main.cc").write_text("int main() {}")
    (out / "compiled").mkdir()
    (out / "NOTES.md").write_text("my notes")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = run_cli("run", "--out", str(out), option, "--data", "embedded", "--epochs", "1", timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_error_line(r.stderr)
    assert "NOTES.md, compiled/, firmware/" in line and "did not write" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_export_micro_into_the_run_folder_during_the_swap_keeps_its_output(tmp_path):
    """`export-micro --out DIR/fw` finishing while `run --force` builds DIR: before, it reported
    success and its output was deleted by the swap; now the run's publish is refused."""
    out = _fake_run(tmp_path / "demo")
    fw = out / "fw"
    refused = pytest.raises(MnistTfliteError, match=r"holds \.fw\.lock|holds fw/")
    with refused, rundir.transaction(out, foreign=rundir.run_foreign) as staging:
        (staging / "report.json").write_text("{}")
        r = subprocess.run(
            cli_argv("export-micro", str(MODELS / "int8.tflite"), "--out", str(fw)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
    assert (fw / "micro.json").is_file()  # the export said "wrote ..." and its files are there
    assert (out / "int8.tflite").read_bytes() == b"x"  # the old run is intact
    assert not list(tmp_path.glob(".demo.*"))  # no staging folder left


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_file_written_into_the_folder_just_before_the_swap_is_kept(tmp_path, monkeypatch, exchange):
    out = _fake_run(tmp_path / "demo")
    real = rundir.run_foreign
    calls = []

    def late_writer(folder: Path) -> list[str]:
        calls.append(folder)
        found = real(folder)
        if len(calls) == 2:  # just after publish's last look before the swap
            (out / "late.txt").write_text("written during the run")
        return found

    staging = rundir.staging_path(out)
    staging.mkdir()
    (staging / "report.json").write_text("{}")
    with pytest.raises(
        MnistTfliteError, match="late.txt, which mnist-tflite did not write here .written during"
    ):
        rundir.refuse_foreign(out, late_writer)
        rundir.publish(staging, out, exchange=exchange, foreign=late_writer)
    assert (out / "late.txt").read_text() == "written during the run"
    assert (out / "int8.tflite").read_bytes() == b"x"


def test_next_steps_point_outside_the_run_folder():
    from mnist_tflite.training.pipeline import next_steps

    pytest.importorskip("tensorflow")
    steps = "\n".join(next_steps([{"name": "int8", "status": "ok"}], Path("runs/demo")))
    assert "--out runs/demo-firmware" in steps and "--out runs/demo-compiled" in steps
    assert "runs/demo/firmware" not in steps and "runs/demo/compiled" not in steps


# -- item 10: first contact ----------------------------------------------------------------------


def test_auto_data_prints_nothing_on_stdout_and_needs_no_notice(tmp_path, monkeypatch, capsys):
    """The embedded copy is the full official set now: no command has a sample to warn about,
    and nothing reaches stdout (a --json document stays the only thing there)."""
    from mnist_tflite.core import data

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-cache"))
    data.load("auto")  # evaluate, export-micro --verify, compile
    data.load("auto", log=print)
    ds = data.load("auto", downloader=lambda: None, log=print)  # train, convert, run: no download
    assert capsys.readouterr() == ("", "")
    assert len(ds.x_train) == 60_000 and ds.source.startswith("embedded MNIST")


def test_verification_line_counts_in_words():
    from mnist_tflite.micro.tflm.check import verification_line

    def v(rows: int, steps: float, predictions: int) -> dict:
        diff = {"rows_differing": rows, "max_abs_diff": steps, "predictions_differing": predictions}
        return {
            "output_dtype": "int8",
            "images": 10_000,
            "of_images": 10_000,
            "accuracy": 0.99,
            "tflm_seconds": 1.0,
            "vs_litert_builtin": diff,
            "vs_litert_xnnpack": diff,
        }

    one = verification_line("int8", v(1, 1.0, 1))
    assert "(s)" not in one and "by at most 1 step, 1 prediction)" in one and "1 row differ" in one
    many = verification_line("int8", v(37, 2.0, 3))
    assert "by at most 2 steps, 3 predictions)" in many and "37 rows differ" in many


def test_predict_on_a_keras_file_suggests_convert():
    r = run_cli("predict", str(MODELS / "model.keras"), str(MODELS / "int8.tflite"), timeout=120)
    assert r.returncode == 2
    assert "mnist-tflite convert" in one_error_line(r.stderr)


def test_predict_on_a_run_folder_uses_its_int8_model_as_serve_does(tmp_path):
    digits = _digits(tmp_path, 5)
    folder = run_cli("predict", str(MODELS), str(digits), "--json", timeout=120)
    direct = run_cli("predict", str(MODELS / "int8.tflite"), str(digits), "--json", timeout=120)
    assert folder.returncode == 0, folder.stderr
    assert json.loads(folder.stdout)["results"] == json.loads(direct.stdout)["results"]
    assert json.loads(folder.stdout)["model"] == str(MODELS / "int8.tflite")
    (tmp_path / "empty-run").mkdir()
    r = run_cli("predict", str(tmp_path / "empty-run"), str(digits), timeout=120)
    assert r.returncode == 2 and "no .tflite model" in one_error_line(r.stderr)


def test_control_characters_in_class_names_and_file_names_are_escaped(tmp_path):
    """An ANSI escape in class_names or a newline in a file name must not forge output lines."""
    names = [f"\x1b[31m{i}\x1b[0m" for i in range(10)]
    model = _copy_with_sidecar(tmp_path, lambda m: m.__setitem__("class_names", names))
    from mnist_tflite.core import data

    img = tmp_path / "seven\nfake.png"
    Image.fromarray(data.load("embedded").x_test[0]).save(img, format="PNG")
    bad = tmp_path / "bad\nmnist-tflite: error: forged.png"
    bad.write_bytes(b"not an image")
    r = run_cli("predict", str(model), str(img), str(bad), "--top-k", "2", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stdout + r.stderr
    (line,) = r.stdout.splitlines()
    assert line.startswith(f"{tmp_path}/seven\\nfake.png: \\x1b[31m7\\x1b[0m (")
    assert "next: \\x1b[31m" in line
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    assert "bad\\nmnist-tflite: error: forged.png" in r.stderr


# -- item 11: plots ---------------------------------------------------------------------------

ROWS = [  # the seed run's variants: flash equals file size, accuracies a test image or two apart
    {
        "name": "float32",
        "size_bytes": 143_280,
        "flash_bytes": 143_280,
        "arena_bytes": 111_424,
        "accuracy": 0.9871,
    },
    {"name": "dynamic", "size_bytes": 40_960, "flash_bytes": 40_960, "accuracy": 0.9870},
    {"name": "int8", "size_bytes": 41_824, "flash_bytes": 41_824, "arena_bytes": 30_288, "accuracy": 0.9871},
    {
        "name": "int16x8",
        "size_bytes": 43_952,
        "flash_bytes": 43_952,
        "arena_bytes": 59_760,
        "accuracy": 0.9872,
    },
    {"name": "tiny", "size_bytes": 9_000, "flash_bytes": 9_000, "arena_bytes": 4_800, "accuracy": 0.9790},
]


def test_the_pareto_line_does_not_rank_variants_a_test_image_apart(tmp_path):
    """Before: int16x8 (+0.01 points over int8, 2 KB larger) was drawn as a step of the front."""
    from mnist_tflite.report.plots import pareto_front, plot_accuracy_vs_size

    front = plot_accuracy_vs_size(ROWS, tmp_path / "p.png")
    assert [r["name"] for r in front] == ["tiny", "dynamic"]
    assert pareto_front([(1, 90.0), (2, 90.04), (3, 90.1)], tie=0.05) == [(1, 90.0), (3, 90.1)]
    assert pareto_front([(1, 90.0), (2, 90.04), (3, 90.1)]) == [(1, 90.0), (2, 90.04), (3, 90.1)]


def test_run_draws_ram_not_a_second_copy_of_the_size_plot(tmp_path):
    pytest.importorskip("tensorflow")
    from mnist_tflite.training.pipeline import plot_stage

    plots = plot_stage(ROWS, {}, [str(i) for i in range(10)], tmp_path)
    assert sorted(plots.values()) == ["ram_vs_accuracy.png", "size_vs_accuracy.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ram_vs_accuracy.png", "size_vs_accuracy.png"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "flash_vs_accuracy" not in readme and "ram_vs_accuracy.png" in readme


def test_progress_and_summary_lines_escape_control_characters_in_paths(tmp_path):
    out = tmp_path / "fw\x1b[2J\nwrote"
    r = run_cli("export-micro", str(MODELS / "int8.tflite"), "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "micro.json").is_file()
    assert "\x1b" not in r.stdout + r.stderr and "fw\\x1b[2J\\nwrote/" in r.stdout
