"""tune (Ray Tune) and predict --ray (Ray Data): the space, bad input, and a real two-node cluster.

The cluster is a Ray head and a second raylet started with ``ray start`` in a private
network namespace (only loopback inside: Ray cannot reach or expose anything else), once
per module; every process in the namespace is killed at the end, whatever happened.
"""

from __future__ import annotations

from tests.conftest import cli_argv, cli_env, one_error_line, require, run_cli

require("ray", "tensorflow")  # before the imports that need them

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.report.plots import pareto_front
from mnist_tflite.scale import space
from mnist_tflite.scale.front import budgets
from mnist_tflite.scale.options import parse_size

SRC = Path(__file__).resolve().parents[1] / "src"
RAY_PORT = 26379


_cli = run_cli


# -- the search space, as data ------------------------------------------------------------------


def test_seed_and_tiny_are_points_of_the_space():
    from mnist_tflite.training.model import get_architecture

    assert space.SEED.layers() == get_architecture("seed").layers
    assert space.TINY.layers() == get_architecture("tiny").layers
    assert space.SEED.params() == 34_826 and space.TINY.params() == 3_946
    names = [n for n, _ in space.starting_points()]
    assert names[:2] == ["seed", "tiny"]
    for name, config in space.starting_points():
        spec, lr = space.from_config(config)
        augment = space.augments(config)
        assert space.point_name(spec) == name and space.to_config(spec, lr, augment) == config
        assert set(config) == set(space.SPACE.names())


@pytest.mark.parametrize(
    "spec",
    [
        space.ArchSpec(
            blocks=(space.Block(6, 3, 2, separable=False, pool=True), space.Block(12, 5, separable=True)),
            downsample=1,
            head="flatten",
            dense=16,
            batch_norm=True,
            fixed_batch=True,
        ),
        space.ArchSpec(
            blocks=(
                space.Block(8, 3),
                space.Block(16, 3, separable=True, pool=True),
                space.Block(24, 3, separable=True),
            ),
            downsample=2,
            head="gap",
        ),
        space.TINY,
    ],
    ids=["bn-separable-dense", "downsample-gap-3-blocks", "tiny"],
)
def test_geometry_params_and_macs_match_keras_and_the_converter(spec, tmp_path):
    """What the space computes without TensorFlow (used to turn points away early) is exact."""
    import numpy as np

    from mnist_tflite.edge.flatbuffer import parse
    from mnist_tflite.scale.trial import int8_recipe
    from mnist_tflite.training.search import untrained_flatbuffer

    assert spec.problem() is None
    arch = spec.architecture("t")
    model = arch.build(10)
    bn_stats = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)  # folded away
    bn_scales = sum(int(np.prod(w.shape)) for w in model.trainable_weights if w.path.endswith("gamma"))
    assert model.count_params() - bn_stats - bn_scales == spec.params()
    assert [tuple(s[1:]) for s in [model.layers[-2].output.shape]] == [
        (spec.flat_features() if spec.dense == 0 else spec.dense,)
    ]
    fb = untrained_flatbuffer(
        arch, int8_recipe(), np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    )
    assert parse(fb).macs == spec.macs()


def test_untrained_size_is_the_trained_size(mnist):
    """Random biases stop the converter from sharing all-zero buffers: the size is exact before training."""
    from mnist_tflite.core import data
    from mnist_tflite.scale.trial import int8_flatbuffer
    from mnist_tflite.training.train import TrainConfig, train

    arch = space.ArchSpec(
        blocks=(space.Block(7, 5, 2, pool=True), space.Block(18, 3)), batch_norm=True, fixed_batch=True
    ).architecture("t")
    rep = data.normalize(mnist.x_train[:50])
    before = int8_flatbuffer(arch, rep, seed=0)
    small = data.Dataset(mnist.x_train[::10], mnist.y_train[::10], mnist.x_test[:10], mnist.y_test[:10], "t")
    trained = train(small, TrainConfig(arch="t", epochs=1), architecture=arch, log=lambda m: None).model
    assert len(int8_flatbuffer(trained, rep)) == len(before)


def test_tunes_models_lose_only_their_names(mnist, tmp_path):
    """Without names a model is smaller and answers every image as before, in LiteRT and TFLM."""
    from mnist_tflite.core import data
    from mnist_tflite.edge.flatbuffer import parse
    from mnist_tflite.edge.infer import TfliteModel
    from mnist_tflite.scale.trial import int8_recipe, measure_tflm
    from mnist_tflite.training.convert import convert, without_names
    from mnist_tflite.training.train import TrainConfig, train

    arch = space.ArchSpec(blocks=(space.Block(6, 5, 2, pool=True), space.Block(8, 3)), fixed_batch=True)
    small = data.Dataset(mnist.x_train[::20], mnist.y_train[::20], mnist.x_test[:10], mnist.y_test[:10], "t")
    trained = train(
        small, TrainConfig(arch="t", epochs=1), architecture=arch.architecture("t"), log=lambda m: None
    ).model
    named = convert(trained, int8_recipe(), data.normalize(mnist.x_train[:50]))
    bare = without_names(named)
    assert b"serving_default" in named and b"serving_default" not in bare
    assert len(named) - len(bare) >= 400
    assert parse(bare).macs == parse(named).macs
    assert measure_tflm(bare) == measure_tflm(named)
    x = data.normalize(mnist.x_test[:500])
    answers = []
    for name, fb in (("named", named), ("bare", bare)):
        (tmp_path / f"{name}.tflite").write_bytes(fb)
        answers.append(TfliteModel(tmp_path / f"{name}.tflite", num_threads=1).predict(x))
    assert (answers[0] == answers[1]).all()


def test_a_batch_norm_trial_validates_what_it_has_learned(mnist):
    """The moving statistics keep up with the weights: after two epochs the validation accuracy
    is near the training accuracy (with Keras' default momentum a batch-norm model validated at
    12 % after 2 epochs while it trained at 94 %, and early stopping judged it by that)."""
    from mnist_tflite.core import data
    from mnist_tflite.training.train import TrainConfig, train

    spec = space.ArchSpec(
        blocks=(space.Block(8, 3, pool=True), space.Block(16, 3, pool=True), space.Block(16, 3)),
        batch_norm=True,
        fixed_batch=True,
    )
    assert ("BatchNormalization", {"momentum": space.BN_MOMENTUM}) in spec.layers()
    ds = data.Dataset(mnist.x_train[:3000], mnist.y_train[:3000], mnist.x_test[:10], mnist.y_test[:10], "t")
    cfg = TrainConfig(arch="t", epochs=2, learning_rate=3e-3, val_fraction=1 / 3, augment=False)
    history = train(ds, cfg, architecture=spec.architecture("t"), log=lambda m: None).history
    assert history["accuracy"][-1] > 0.8
    assert history["val_accuracy"][-1] > history["accuracy"][-1] - 0.1


def test_unbuildable_points_say_why():
    spec = space.ArchSpec(
        blocks=(space.Block(8, 5, 2, pool=True), space.Block(8, 5, 2, pool=True), space.Block(8, 5))
    )
    assert "shrinks to" in spec.problem()
    assert space.TINY.problem() is None


def test_early_stopping_compares_trials_within_their_budget_cell():
    pytest.importorskip("ray")
    from mnist_tflite.scale.schedule import cell

    assert cell(8120, 4072, True) == (13, 12)  # the 8 KB flash / 4 KB arena cell
    assert cell(8640, 4624, True) == cell(14704, 5528, True) == (14, 13)  # 16 KB / 8 KB
    assert cell(3000, 1500, True) == (12, 11) and cell(8120, 4072, False) == (13, 0)


def test_a_rung_stops_nothing_until_it_holds_two_earlier_results():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from mnist_tflite.scale.schedule import BudgetASHA

    asha = BudgetASHA(
        with_ram=True,
        time_attr="epoch",
        metric="rung_score",
        mode="max",
        max_t=90,
        grace_period=15,
        reduction_factor=2,
    )
    assert asha.rungs() == [15, 30, 60]

    def stopped_at(trial_id, score, flash=14000, arena=5000):
        trial = SimpleNamespace(trial_id=trial_id)
        for epoch in range(1, 91):
            result = {"epoch": epoch, "rung_score": score, "flash": flash, "arena": arena}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP and epoch < 90:
                return epoch  # (at max_t ASHA says STOP too: the trial is done)
        return None

    assert stopped_at("first", -0.1) is None
    assert stopped_at("worse, one peer", -0.5) is None  # plain ASHA stops it at 15
    assert stopped_at("worse, two peers", -0.9) == 15
    assert stopped_at("worse, another cell", -0.9, flash=7000, arena=3000) is None
    assert asha.stopped == 1


def test_sizes_budgets_and_the_front():
    assert parse_size("16KB") == 16384 and parse_size("8k") == 8192 and parse_size("9000") == 9000
    assert parse_size("1.5 KiB") == 1536 and parse_size("1MB") == 1 << 20
    for bad in ("12 parsecs", "-3KB", "0", ""):
        with pytest.raises(MnistTfliteError, match="expected a positive size"):
            parse_size(bad)
    assert budgets(16384, 8192) == [
        (4096, 2048),
        (4096, 4096),
        (4096, 8192),
        (8192, 2048),
        (8192, 4096),
        (8192, 8192),
        (16384, 2048),
        (16384, 4096),
        (16384, 8192),
    ]
    assert budgets(10000, None) == [(4096, None), (8192, None), (10000, None)]
    rows = [
        {"id": "a", "flash": 8000, "arena": 4000, "cv_accuracy": 0.98},
        {"id": "b", "flash": 9000, "arena": 4000, "cv_accuracy": 0.97},  # worse and bigger than a
        {"id": "c", "flash": 9000, "arena": 3000, "cv_accuracy": 0.97},  # less RAM than a: kept
        {"id": "d", "flash": 15000, "arena": 5000, "cv_accuracy": 0.99},
    ]
    front = pareto_front(rows, key=lambda r: (r["flash"], r["arena"], -r["cv_accuracy"]))
    assert [r["id"] for r in front] == ["a", "c", "d"]


def test_each_published_point_faces_the_fronts_best_model_of_at_most_its_bytes():
    from mnist_tflite.scale.front import PUBLISHED, _versus_published

    def row(arch, flash, test):
        return {"arch": arch, "flash": flash, "arena": 4000, "test_accuracy": test}

    front = [row("a", 2_000, 0.97), row("b", 5_000, 0.985), row("c", 5_400, 0.984), row("d", 7_400, 0.991)]
    by_bytes = {p["bytes"]: p["ours"] for p in _versus_published(front)}
    assert len(by_bytes) == len(PUBLISHED) == 3
    assert by_bytes[5_530]["arch"] == "b"  # the more accurate of b and c, both under 5.4 KB
    assert by_bytes[7_475] == {"arch": "d", "flash": 7_400, "test_accuracy": 0.991}
    assert by_bytes[2_867]["arch"] == "a"
    assert all(p["ours"] is None for p in _versus_published([row("big", 9_000, 0.995)]))


def test_finalists_are_the_trials_validation_cannot_tell_from_a_budgets_best():
    from mnist_tflite.scale.finalists import choose, margin

    # two standard errors of a difference near 98.5 % on 1,000 images: about 1.1 points
    assert 0.010 < margin(0.985, 1000) < 0.012 and margin(0.5, 1000) > 0.04

    def row(name, flash, arena, val, status="ok", loss=0.1):
        return {
            "trial": name,
            "status": status,
            "flash": flash,
            "arena": arena,
            "val_accuracy": val,
            "val_images": 1000,
            "val_loss": loss,
        }

    rows = [
        row("garbage", 3000, 2000, 0.45),  # far behind the best (USEFUL_GAP): never a finalist
        row("poor", 3500, 2000, 0.91),  # the best under 4 KB: last of the bests
        row("s1", 7000, 3000, 0.975),
        row("s2", 7500, 3500, 0.960),  # 1.5 points behind s1 under 8 KB / 4 KB: told apart
        row("m1", 14000, 5000, 0.990),
        row("m2", 15000, 6000, 0.984, loss=0.06),
        row("m3", 12000, 6000, 0.984, loss=0.05),  # ties m2 on validation, lower loss: first
        row("m4", 13000, 6000, 0.970),  # 2 points behind m1: told apart
        row("x", 9000, 4000, 0.999, status="stopped"),  # stopped early: never a finalist
        row("big", 30000, 9000, 0.995),  # over every budget of the ladder
    ]
    names = lambda chosen: [r["trial"] for r in chosen]  # noqa: E731
    ladder = budgets(16384, 8192)
    # every budget's best first, most accurate budgets first; then the second bests
    assert names(choose(rows, ladder, 100)) == ["m1", "s1", "poor", "m3", "m2"]
    assert names(choose(rows, ladder, 2)) == ["m1", "s1"]
    assert choose([row("f", 9000, 4000, 0.9, status="failed")], ladder, 8) == []


def test_the_search_trains_on_a_seeded_subset_and_every_image_is_one_of_the_training_set(mnist):
    from mnist_tflite.scale.trial import search_subset

    sub = search_subset(mnist, 1000, seed=0)
    again, other = search_subset(mnist, 1000, seed=0), search_subset(mnist, 1000, seed=1)
    assert len(sub.x_train) == len(sub.y_train) == 1000 and len(sub.x_test) == len(mnist.x_test)
    assert np.array_equal(sub.x_train, again.x_train) and not np.array_equal(sub.x_train, other.x_train)
    rows = {x.tobytes(): y for x, y in zip(mnist.x_train, mnist.y_train, strict=True)}
    assert len({x.tobytes() for x in sub.x_train}) == 1000  # no image drawn twice
    assert all(rows[x.tobytes()] == y for x, y in zip(sub.x_train, sub.y_train, strict=True))
    assert "a seeded subset of 1,000 of the 5,000 training images" in sub.source
    assert search_subset(mnist, 5000, seed=0) is mnist and search_subset(mnist, None, seed=0) is mnist


def test_tune_defaults_to_all_60k_searched_on_a_subset_and_resumes_older_searches(tmp_path):
    from mnist_tflite.scale.options import DEFAULTS, MAX_IMAGES, REFIT_EPOCHS, TuneOptions, prepare

    options, _ = prepare(TuneOptions(out=tmp_path / "a", flash=8192))
    assert options.data == "auto" and options.search_images == DEFAULTS["search_images"] == 12_000
    assert options.refit_epochs == min(DEFAULTS["max_epochs"], REFIT_EPOCHS)
    options, _ = prepare(TuneOptions(out=tmp_path / "b", flash=8192, max_epochs=4))
    assert options.refit_epochs == 4  # never more epochs than a trial unless asked
    options, _ = prepare(TuneOptions(out=tmp_path / "c", flash=8192, max_epochs=4, refit_epochs=9))
    assert options.refit_epochs == 9
    # a search saved before --search-images existed: it trained on all its data, refit as searched
    old = {"flash": 8192, "ram": None, "trials": 3, "max_epochs": 7, "seed": 0, "data": "sample"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "search.json").write_text(
        json.dumps({"settings": {**old, "folds": 3, "finalists": 2}})
    )
    options, _ = prepare(TuneOptions(out=tmp_path / "old", resume=True))
    assert options.search_images == MAX_IMAGES and options.refit_epochs == 7 and options.data == "sample"


# -- predict --ray: work units and Parquet, without Ray -------------------------------------------


def test_work_units_keep_input_order_and_cut_arrays(tmp_path, test_images):
    from PIL import Image

    from mnist_tflite.edge.parquet import read_parquet
    from mnist_tflite.scale.ray_predict import work_units

    np.save(tmp_path / "b.npy", test_images[0][:10])
    for i in range(3):
        Image.fromarray(test_images[0][i]).save(tmp_path / f"a{i}.png")
        Image.fromarray(test_images[0][i]).save(tmp_path / f"c{i}.png")
    _write_parquet(tmp_path / "d.parquet", test_images[0][:5])
    (tmp_path / "e.npy").write_bytes(b"junk")
    units = list(work_units([tmp_path], batch_size=4))
    kinds = [
        (u["kind"], Path(u["path"]).name if u["path"] else len(u["paths"]), u["start"], u["stop"])
        for u in units
    ]
    assert kinds == [
        ("images", 3, 0, 0),
        ("array", "b.npy", 0, 4),
        ("array", "b.npy", 4, 8),
        ("array", "b.npy", 8, 10),
        ("images", 3, 0, 0),
        ("array", "d.parquet", 0, 4),
        ("array", "d.parquet", 4, 5),
        ("error", "e.npy", 0, 0),
    ]
    assert "not a readable .npy array" in units[-1]["error"]
    images = read_parquet(tmp_path / "d.parquet")
    np.testing.assert_array_equal(np.stack([images[i] for i in range(len(images))]), test_images[0][:5])


def _write_parquet(path: Path, images: np.ndarray, column: str = "image") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: [x.reshape(-1).tolist() for x in images]}), path)


def test_parquet_that_holds_no_images_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mnist_tflite.edge.parquet import read_parquet

    pq.write_table(pa.table({"a": [1, 2], "b": [3, 4]}), tmp_path / "two.parquet")
    pq.write_table(pa.table({"image": [1, 2, 3]}), tmp_path / "numbers.parquet")
    pq.write_table(pa.table({"image": [["a"] * 784]}), tmp_path / "text.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MnistTfliteError, match="expected an 'image' column"):
        read_parquet(tmp_path / "two.parquet")
    with pytest.raises(
        MnistTfliteError, match="holds int64, not lists; expected 28x28 = 784 numbers per row"
    ):
        read_parquet(tmp_path / "numbers.parquet")  # a column of 784 single numbers is not one image
    with pytest.raises(MnistTfliteError, match="holds lists of string"):
        read_parquet(tmp_path / "text.parquet")
    with pytest.raises(MnistTfliteError, match="not a readable Parquet file"):
        read_parquet(tmp_path / "junk.parquet")


def test_a_bad_parquet_row_fails_alone_and_is_never_re_cut(tmp_path, test_images, models_dir):
    """[null, 7, 1] is an error for row 0 and answers for rows 1 and 2 (it was "[0]: 7, [1]: 1");
    783 + 785 values are two errors, never one re-cut 784-value image."""
    from mnist_tflite.edge.parquet import read_parquet
    from mnist_tflite.edge.predict import Classifier, Failure

    digits = [x.reshape(-1).tolist() for x in test_images[0][:3]]
    _write_rows(tmp_path / "a.parquet", [None, digits[0], digits[1]])
    _write_rows(tmp_path / "b.parquet", [digits[0][:783], [*digits[1], 0], digits[2]])
    images = read_parquet(tmp_path / "b.parquet")
    assert len(images) == 3 and images.problems() == {
        0: "783 numbers; expected 28x28 = 784 numbers",
        1: "785 numbers; expected 28x28 = 784 numbers",
    }
    np.testing.assert_array_equal(images[2], test_images[0][2])
    results = list(Classifier(models_dir / "int8.tflite").predict_files([tmp_path]))
    got = [(Path(r.source).name, isinstance(r, Failure)) for r in results]
    assert got == [
        ("a.parquet[0]", True),
        ("a.parquet[1]", False),
        ("a.parquet[2]", False),
        ("b.parquet[0]", True),
        ("b.parquet[1]", True),
        ("b.parquet[2]", False),
    ]
    assert "a.parquet[0]: null row" in results[0].problem
    labels = [r.label for r in results if not isinstance(r, Failure)]
    assert labels == [str(d) for d in (test_images[1][0], test_images[1][1], test_images[1][2])]


def _write_rows(path: Path, rows: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array(rows, type=pa.list_(pa.int64()))}), path)


# -- bad input: one line, exit 2, fast --------------------------------------------------------------


def test_without_ray_one_line_names_the_pip_command(tmp_path, models_dir):
    blocker = tmp_path / "blocker" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    (blocker.parent / "sitecustomize.py").write_text(
        "import sys\nsys.modules['ray'] = None\n"  # find_spec('ray') then raises: as if not installed
    )
    env = {"PYTHONPATH": f"{blocker.parent}{os.pathsep}{SRC}"}
    for args in (
        ("tune", "--out", str(tmp_path / "t"), "--flash", "16KB"),
        ("predict", str(models_dir / "int8.tflite"), str(tmp_path), "--ray"),
    ):
        res = run_cli(*args, env=env, timeout=60)
        assert res.returncode == 2, res.stderr
        assert "pip install 'mnist-tflite[scale]'" in one_error_line(res.stderr)


class _NotRay:
    """A TCP server on loopback that answers like a web server, not like Ray's GCS."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


class _Http2Proxy(_NotRay):
    """Speaks HTTP/2 and answers every request 404, as this network's egress proxy does for any
    address: the HTTP/2 preface check passes, and ray.init would retry for 20 s or more."""

    def _serve(self) -> None:
        settings, ack = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                _recv_exactly(conn, 24)  # the client preface
                conn.sendall(settings + ack)
                while True:  # frames: 3 bytes length, type, flags, 4 bytes stream id, payload
                    head = _recv_exactly(conn, 9)
                    _recv_exactly(conn, int.from_bytes(head[:3], "big"))
                    if (
                        head[3] == 1
                    ):  # HEADERS: ":status: 404" (HPACK static entry 13), END_STREAM|END_HEADERS
                        conn.sendall(b"\x00\x00\x01\x01\x05" + head[5:9] + b"\x8d")


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def test_unreachable_address_is_one_line_within_10_s(tmp_path, models_dir):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with _NotRay() as web_port:
        for address, why in (
            (f"127.0.0.1:{port}", "connection refused"),
            (f"127.0.0.1:{web_port}", "not a Ray"),
        ):
            for args in (
                ("tune", "--out", str(tmp_path / "t"), "--flash", "16KB", "--address", address),
                ("predict", str(models_dir / "int8.tflite"), str(models_dir), "--ray", "--address", address),
            ):
                t = time.monotonic()
                res = _cli(*args, timeout=60)
                assert time.monotonic() - t < 10
                assert res.returncode == 2
                assert why in one_error_line(res.stderr)
    with _Http2Proxy() as proxy_port:  # the "unroutable" address of issue 19: 20.6 s, now seconds
        for args in (
            ("tune", "--out", str(tmp_path / "t"), "--flash", "16KB", "--address", f"127.0.0.1:{proxy_port}"),
            (
                "predict",
                str(models_dir / "int8.tflite"),
                str(models_dir),
                "--ray",
                "--address",
                f"127.0.0.1:{proxy_port}",
            ),
        ):
            t = time.monotonic()
            res = _cli(*args, timeout=60)
            assert time.monotonic() - t < 10 and res.returncode == 2
            assert "not a Ray cluster (gRPC unimplemented" in one_error_line(res.stderr)
    res = _cli("tune", "--out", str(tmp_path / "t"), "--flash", "8KB", "--address", "no-port-here")
    assert "expected HOST:PORT" in one_error_line(res.stderr)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tune", "--out", "{tmp}/t"), "--flash is required"),
        (("tune", "--out", "{tmp}/t", "--flash", "lots"), "expected a positive size"),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "8KB", "--trials", "0"),
            "--trials must be >= 1, received: 0",
        ),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "8KB", "--seed", "-1"),
            "--seed must be an integer in 0..4294967295",
        ),
        (("tune", "--out", "{tmp}/t", "--flash", "8KB", "--seed", str(2**32)), "received: 4294967296"),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "99999999999999999999KB"),
            "expected a size from 1 byte to 16 MB",
        ),
        (
            ("tune", "--out", "{tmp}/notes", "--flash", "8KB"),
            "a folder tune did not make and it is not empty",
        ),
        (("tune", "--out", "/", "--flash", "8KB"), "a folder tune did not make and it is not empty"),
        (("tune", "--out", "{tmp}/notes/front.md/t", "--flash", "8KB"), "is not a directory"),
        (("tune", "--out", "{tmp}/text", "--resume"), "'flash' is '16KB'; expected a whole number"),
        (("tune", "--out", "{tmp}/deep", "--resume"), "search.json: nested too deeply"),
        (("tune", "--out", "{tmp}/zero", "--resume"), 'search.json: "trials" must be >= 1, received: 0'),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "8KB", "--folds", "1"),
            "--folds must be 2 to 10, received: 1",
        ),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "8KB", "--search-images", "99"),
            "--search-images must be >= 100, received: 99",
        ),
        (
            ("tune", "--out", "{tmp}/t", "--flash", "8KB", "--refit-epochs", "0"),
            "--refit-epochs must be >= 1, received: 0",
        ),
        (("tune", "--out", "{tmp}/subset", "--resume"), "'search_images' is '12k'; expected a whole number"),
        (("tune", "--out", "{tmp}/t", "--resume"), "no search to resume"),
        (("tune", "--out", "{tmp}/search", "--flash", "8KB"), "already holds a search; pass --resume"),
        (("tune", "--out", "{tmp}/search", "--resume", "--flash", "9KB"), "--flash differ from"),
        (("predict", "{models}/int8.tflite", "{models}", "--address", "127.0.0.1:1"), "go with --ray"),
        (
            ("predict", "{models}/int8.tflite", "{models}", "--ray", "--output", "{tmp}/r.txt"),
            "expected .parquet or .csv",
        ),
        (
            ("predict", "{models}/int8.tflite", "{models}", "--ray", "--show-input", "{tmp}/s"),
            "not available with --ray",
        ),
        (
            ("predict", "{models}/int8.tflite", "{models}", "--ray", "--output", "{tmp}/d.csv"),
            "is a directory",
        ),
        (
            ("predict", "{models}/int8.tflite", "{models}", "--ray", "--output", "{tmp}/old.csv"),
            "--output already exists; expected a new file name",
        ),
        (
            (
                "predict",
                "{models}/int8.tflite",
                "{models}",
                "--ray",
                "--output",
                "{tmp}/notes/front.md/r.csv",
            ),
            "is not a directory",
        ),
    ],
)
def test_usage_errors(args, message, tmp_path, models_dir, capsys):
    from mnist_tflite import cli

    settings = {"flash": 8192, "ram": None, "trials": 3, "max_epochs": 1, "seed": 0, "data": "sample"}
    settings.update(folds=5, finalists=6)
    saved = {
        "search": json.dumps({"settings": settings}),
        "text": json.dumps({"settings": {**settings, "flash": "16KB"}}),
        "zero": json.dumps({"settings": {**settings, "trials": 0}}),
        "subset": json.dumps({"settings": {**settings, "search_images": "12k"}}),
        "deep": '{"settings": ' + "[" * 100_000 + "]" * 100_000 + "}",
    }
    for name, text in saved.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "search.json").write_text(text)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "front.md").write_text("my notes")  # a user's folder: tune overwrote this
    (tmp_path / "d.csv").mkdir()
    (tmp_path / "old.csv").write_text("a user's results: never replaced\n")
    argv = [a.format(tmp=tmp_path, models=models_dir) for a in args]
    assert cli.main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "notes" / "front.md").read_text() == "my notes"


# -- predict --ray and tune on a local Ray instance: bad rows, bad outputs, signals -----------------


@pytest.mark.slow
def test_predict_ray_answers_bad_rows_like_local_predict(tmp_path, models_dir, mnist):
    """20 files of blank, NaN, null, 783- and 785-value rows: the same text, JSON and exit status.
    (benchmarks/bench_ray_predict_parity.py counts it file by file.)"""
    from tests.bad_rows import write_bad_row_files

    files = write_bad_row_files(tmp_path, mnist.x_test)
    assert len(files) == 20
    for form in ((), ("--json",)):
        args = ("predict", str(models_dir / "int8.tflite"), *map(str, files), "--top-k", "2", *form)
        local, ray = _cli(*args, "--single"), _cli(*args, "--ray")  # --ray reads digits: --single
        assert (ray.stdout, ray.stderr, ray.returncode) == (local.stdout, local.stderr, local.returncode)
        assert local.returncode == 1 and local.stderr.count("mnist-tflite: error: ") == 26
        assert "Traceback" not in ray.stderr and "10-null-first.parquet[3]" in local.stdout
    assert _temp_folders() == []  # the actors' copies of the model: removed, or swept once they died


def test_predict_ray_refuses_an_output_it_cannot_write_before_the_job(tmp_path, models_dir):
    ro, src = tmp_path / "ro", tmp_path / "ro-src"
    ro.mkdir()
    src.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], check=True, capture_output=True)
    try:
        t = time.monotonic()
        res = _cli(
            "predict", str(models_dir / "int8.tflite"), str(models_dir), "--ray", "--output", f"{ro}/r.csv"
        )
        assert res.returncode == 2 and "cannot write here (Read-only file system)" in one_error_line(
            res.stderr
        )
        assert time.monotonic() - t < 10  # no Ray job ran
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_the_report_is_swapped_in_whole_and_the_users_files_stay(tmp_path):
    from mnist_tflite.scale.tune import _publish

    out = tmp_path / "tune"
    (out / "ray" / "trial_a").mkdir(parents=True)
    (out / "ray" / "trial_a" / "result.json").write_text("{}")
    for name, text in {
        "search.json": "{}",
        "notes.txt": "mine",
        "front.json": "old",
        "best-flash8KB.tflite": "old",
    }.items():
        (out / name).write_text(text)

    def fails(staging: Path) -> dict:
        (staging / "front.json").write_text("half")
        raise RuntimeError("killed here")

    with pytest.raises(RuntimeError):
        _publish(out, fails)
    assert (out / "front.json").read_text() == "old" and not list(tmp_path.glob(".tune.staging-*"))

    def writes(staging: Path) -> dict:
        (staging / "front.json").write_text("new")
        (staging / "best-flash16KB.tflite").write_text("new")
        return {}

    _publish(out, writes)
    assert sorted(p.name for p in out.iterdir()) == [
        "best-flash16KB.tflite",
        "front.json",
        "notes.txt",
        "ray",
        "search.json",
    ]
    assert (out / "notes.txt").read_text() == "mine" and (out / "ray" / "trial_a" / "result.json").exists()
    assert (out / "front.json").read_text() == "new" and not list(tmp_path.glob(".tune.*"))


def _temp_folders(pids: set[int] | None = None) -> list[Path]:
    """Our workers' temp folders (``<prefix>-<pid>-*``) of ``pids``, or of owners that are gone."""
    from mnist_tflite.core.procs import pid_alive

    prefixes = ("mnist-tflite-ray-", "mnist-tflite-trial-", "mnist-tflite-val-")
    found = [p for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(prefixes)]
    owner = {p: int(p.name.split("-")[3]) for p in found}
    return [p for p in found if (owner[p] in pids if pids is not None else not pid_alive(owner[p]))]


def _gone_within(seen: set[tuple[int, int]], seconds: float) -> list[tuple[int, int]]:
    from mnist_tflite.core.reaper import is_running

    deadline = time.monotonic() + seconds
    while any(is_running(*p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in seen if is_running(*p)]


def _complete_or_absent(out: Path) -> None:
    """--out holds no report or one complete report: every best-* file it lists, vouched for by
    its sidecar, and nothing else of a report."""
    from mnist_tflite.core import sidecar

    if not (out / "front.json").exists():
        assert not list(out.glob("best-*")) and not (out / "front.md").exists()
        return
    doc = json.loads((out / "front.json").read_text())
    files = {b["file"] for b in doc["best"]}
    assert {p.name for p in out.glob("best-*.tflite")} == files
    for name in files:
        meta = sidecar.read(out / name)
        assert meta["sha256"] == sidecar.sha256_bytes((out / name).read_bytes())
    assert (out / "front.md").is_file() and (out / "front.png").read_bytes()[:4] == b"\x89PNG"


def _sigterm_after_first_trial(proc: subprocess.Popen) -> tuple[subprocess.Popen, str]:
    """SIGTERM to a 2-trial tune once its first trial has reported; (the ended process, its output
    after that line)."""
    try:
        _read_until(proc, "[  1/2]")
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    return proc, rest


@pytest.mark.slow
def test_tune_sigterm_then_20_random_kill_9s_then_resume(tmp_path):
    """SIGTERM: exit 130 with the resume hint. Then 20 kill -9 at random moments: each time Ray's
    processes and the temp folders end within 5 s, and --out holds no report or a complete one;
    a last --resume finishes the search."""
    from mnist_tflite.core.reaper import descendants

    out = tmp_path / "tune"
    small = ("--flash", "16KB", "--trials", "2", "--max-epochs", "1", "--folds", "2", "--finalists", "1")
    small += ("--data", "sample")
    env = cli_env({"TUNE_GLOBAL_CHECKPOINT_S": "0"})

    def command() -> list[str]:
        resume = ("--resume",) if (out / "search.json").exists() else small
        return cli_argv("tune", "--out", str(out), *resume)

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

    proc, rest = _sigterm_after_first_trial(start())
    assert proc.returncode == 130, rest
    assert f"continue with: mnist-tflite tune --out {out} --resume" in rest and "Traceback" not in rest
    rng = np.random.default_rng(19)
    for _ in range(20):
        proc = start()
        time.sleep(rng.uniform(1.0, 10.0))
        seen = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert _gone_within(seen, 5.0) == []
        assert _temp_folders({proc.pid, *(pid for pid, _ in seen)}) == []
        _complete_or_absent(out)
    res = subprocess.run(command(), capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    _complete_or_absent(out)
    assert json.loads((out / "front.json").read_text())["best"] and not list(tmp_path.glob(".tune.staging-*"))


@pytest.mark.slow
def test_a_restored_search_that_lost_a_trial_is_started_over(tmp_path):
    """A kill -9 between Ray counting a new trial and saving it leaves a saved search whose
    search algorithm has handed out every trial but whose state holds fewer: Ray restores it,
    runs nothing, and it ends short. That state, made on purpose (SIGTERM after the first trial,
    then the second trial taken out of the saved state): --resume starts the search over and
    finishes it, where it would say "interrupted" on every --resume."""
    out = tmp_path / "tune"
    small = ("--flash", "16KB", "--trials", "2", "--max-epochs", "1", "--folds", "2", "--finalists", "1")
    small += ("--data", "sample", "--search-images", "2000", "--refit-epochs", "1")
    env = cli_env({"TUNE_GLOBAL_CHECKPOINT_S": "0"})
    proc, rest = _sigterm_after_first_trial(
        subprocess.Popen(
            cli_argv("tune", "--out", str(out), *small),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    )
    assert proc.returncode == 130, rest
    (state,) = (out / "ray").glob("experiment_state-*.json")
    doc = json.loads(state.read_text())
    assert len(doc["trial_data"]) == 2, [json.loads(t)["status"] for t, _ in doc["trial_data"]]
    doc["trial_data"] = doc["trial_data"][:1]
    state.write_text(json.dumps(doc))
    res = subprocess.run(
        cli_argv("tune", "--out", str(out), "--resume"), capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the saved search ended with 1 of 2 trials" in res.stdout and "starting it over" in res.stdout
    report = json.loads((out / "front.json").read_text())
    assert len(report["trials"]) == 2 and report["best"]
    _complete_or_absent(out)


# -- a real two-node cluster ------------------------------------------------------------------------


class Cluster:
    def __init__(self, ns: str, env: dict[str, str]) -> None:
        self.ns, self.env = ns, env
        self.address = f"127.0.0.1:{RAY_PORT}"
        self.prefix = ("ip", "netns", "exec", ns)

    def run(self, args: list[str], timeout: float = 300, check: bool = True, **env: str):
        res = subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env, **env},
        )
        if check and res.returncode:
            raise AssertionError(f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def status(self) -> str:
        return self.run(["ray", "status", f"--address={self.address}"], check=False).stdout

    def cli(self, *args: str, timeout: float = 600, **env: str):
        return _cli(
            *args, "--address", self.address, prefix=self.prefix, env={**self.env, **env}, timeout=timeout
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.prefix, *cli_argv(*args, "--address", self.address)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env, **env},
        )

    def kill_all(self) -> None:
        """Every process in the namespace: Ray's daemons, workers and drivers, by pid."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(
                ["ip", "netns", "pids", self.ns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), sig)
            if pids and sig == signal.SIGTERM:
                time.sleep(2)


def _netns_available() -> str | None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "needs root and iproute2 for a private network namespace"
    return None


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head and a second raylet (1 CPU each) over loopback, in a network namespace."""
    pytest.importorskip("ray")
    why = _netns_available()
    if why:
        pytest.skip(why)
    ns = f"mnist-tflite-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {"PYTHONPATH": str(SRC), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = Cluster(ns, env)
    try:
        cluster.run(["ip", "link", "set", "lo", "up"])
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}"]
        cluster.run(
            [
                "ray",
                "start",
                "--head",
                f"--port={RAY_PORT}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                *common,
            ]
        )
        cluster.run(["ray", "start", f"--address={cluster.address}", *common])
        deadline = time.monotonic() + 60
        while cluster.status().count(" node_") < 2:  # `ray start` returns before the node registers
            assert time.monotonic() < deadline, cluster.status()
            time.sleep(1)
        yield cluster
    finally:
        cluster.kill_all()
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def test_cluster_has_two_nodes(ray_cluster):
    status = ray_cluster.status()
    assert "2.0 CPU" in status and status.count(" node_") == 2, status


def test_tune_on_the_cluster_reports_infeasible_and_failed_trials_and_goes_on(ray_cluster, tmp_path):
    out = tmp_path / "tune"
    res = ray_cluster.cli(
        "tune",
        "--out",
        str(out),
        "--flash",
        "16KB",
        "--ram",
        "8KB",
        "--trials",
        "3",
        "--max-epochs",
        "1",
        "--folds",
        "3",
        *("--data", "sample", "--search-images", "3000", "--refit-epochs", "2"),
        MNIST_TFLITE_TUNE_CRASH="tiny",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 CPUs" in res.stdout and "[  3/3]" in res.stdout and "min left" in res.stdout
    assert "best so far" in res.stdout and "FAILED: RuntimeError: injected crash" in res.stdout
    doc = json.loads((out / "front.json").read_text())
    by_point = {t["point"]: t for t in doc["trials"]}
    assert (
        by_point["seed"]["status"] == "infeasible" and "exceed the flash budget" in by_point["seed"]["reason"]
    )
    assert by_point["tiny"]["status"] == "failed" and "injected crash" in by_point["tiny"]["reason"]
    ok = by_point["micro"]
    assert ok["status"] == "ok" and ok["flash"] <= 16384 and ok["arena"] <= 8192 and ok["epochs"] == 1
    assert ok["front"] and 0 < ok["test_accuracy"] <= 1 and doc["front"] == [ok["trial"]]
    # the finalist, cross-validated: its own fold 0 and two more trainings, every search image once
    assert "train on 3,000 of the 5,000 training images (seeded)" in res.stdout
    assert "cross-validating 1 finalists on 3 folds (2 more trainings" in res.stdout
    assert [f["fold"] for f in ok["cv_folds"]] == [0, 1, 2]
    assert (
        sum(f["images"] for f in ok["cv_folds"]) == 3000 and ok["cv_folds"][0]["images"] == ok["val_images"]
    )
    assert ok["cv_accuracy"] == sum(f["correct"] for f in ok["cv_folds"]) / 3000
    assert "training the 1 model of the front on all the training data" in res.stdout
    assert doc["search"]["cpus"] == 2 and doc["search"]["cluster"] == ray_cluster.address
    assert "Optuna" in doc["search"]["algorithm"]
    best = {b["file"] for b in doc["best"]}
    assert "best-flash16KB-ram8KB.tflite" in best
    for name in best:
        meta = json.loads((out / name).with_suffix(".json").read_text())
        assert meta["model"] == name and meta["tune"]["trial"] == ok["trial"]
        assert meta["architecture"] == ok["arch"] and meta["size_bytes"] == (out / name).stat().st_size
        assert meta["train"]["val_fraction"] == 0.0 and meta["tune"]["cv_accuracy"] == ok["cv_accuracy"]
        # the refit: every training image, not only the search's 3,000, for --refit-epochs
        assert meta["train"]["images"] == 5000 and meta["train"]["epochs"] == 2
    md = (out / "front.md").read_text()
    assert "## Best model under each budget" in md and "injected crash" in md and "★" in md
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    # ready for export-micro: int8 in and out, runs in TFLM
    fw = tmp_path / "fw"
    res = _cli("export-micro", str(out / "best-flash16KB-ram8KB.tflite"), "--out", str(fw), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["arena"]["min_bytes"] == ok["arena"]


def _read_until(proc: subprocess.Popen, prefix: str) -> str:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return "".join(lines)
    raise AssertionError(f"no line starting {prefix!r}:\n{''.join(lines)}")


def test_tune_resumes_after_ctrl_c_and_kill_9(ray_cluster, tmp_path):
    out = tmp_path / "tune"
    args = (
        "tune",
        "--out",
        str(out),
        "--flash",
        "16KB",
        "--trials",
        "4",
        "--max-epochs",
        "1",
        "--folds",
        "2",
    )
    args += ("--finalists", "2", "--data", "sample")
    proc = ray_cluster.popen(*args)
    try:
        _read_until(proc, "[  1/4]")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune stops, saves its state, says how to go on
        rest = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert f"continue with: mnist-tflite tune --out {out} --resume" in rest
    # Tune saves its state every 10 s or so; here after every step, so that kill -9 loses nothing
    proc = ray_cluster.popen("tune", "--out", str(out), "--resume", TUNE_GLOBAL_CHECKPOINT_S="0")
    try:
        text = _read_until(proc, "[  3/4]")
        assert "resuming the search" in text and "[  1/4]" not in text, text
        time.sleep(3)  # a trial that ends at the very moment of the kill may be run again
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # `ip netns exec` execs python: this is the driver itself
        proc.wait()
    res = ray_cluster.cli("tune", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[  4/4]" in res.stdout and "[  2/4]" not in res.stdout
    doc = json.loads((out / "front.json").read_text())
    assert len(doc["trials"]) == 4 and doc["search"]["failed"] == 0, doc["trials"]
    assert {t["point"] for t in doc["trials"]} == {name for name, _ in space.starting_points()[:4]}
    # the finalists' folds and refits are kept as they finish: resuming repeats only what is missing
    folds = sorted(out.glob("finalists/*/fold1.json"))
    assert 1 <= len(folds) == sum(bool(t.get("finalist")) for t in doc["trials"]) <= 2
    assert len(list(out.glob("finalists/*/model.tflite"))) == len(doc["front"])
    folds[0].unlink()
    res = ray_cluster.cli("tune", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[ 1/1]" in res.stdout and "[ 1/2]" not in res.stdout and "[  1/4]" not in res.stdout
    again = json.loads((out / "front.json").read_text())
    assert again["best"] == doc["best"] and again["front"] == doc["front"]


def test_budgets_nothing_can_meet_say_so_with_the_smallest_model(ray_cluster, tmp_path):
    res = ray_cluster.cli("tune", "--out", str(tmp_path / "a"), "--flash", "2KB", "--data", "sample")
    assert res.returncode == 2
    line = one_error_line(res.stderr)
    assert "nothing in the search space fits <= 2 KB" in line and "its smallest model" in line
    assert not (tmp_path / "a" / "search.json").exists()
    # the smallest point fits, but none of the trials does: the search says so, exit 1
    res = ray_cluster.cli(
        "tune",
        "--out",
        str(tmp_path / "b"),
        "--flash",
        "6KB",
        "--trials",
        "2",
        "--max-epochs",
        "1",
        "--data",
        "sample",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_error_line(res.stderr)
    assert "no model met <= 6 KB in 2 trials; the smallest model found: tiny" in line
    assert json.loads((tmp_path / "b" / "front.json").read_text())["best"] == []


@pytest.fixture(scope="module")
def inputs_2000(tmp_path_factory, mnist):
    """2,000 images: 1,500 in a .npy, 400 in a Parquet file, 100 PNG photos, and a broken file."""
    from PIL import Image

    d = tmp_path_factory.mktemp("inputs")
    np.save(d / "a.npy", mnist.x_test[:1500])
    _write_parquet(d / "b.parquet", mnist.x_test[1500:1900])
    photos = d / "photos"
    photos.mkdir()
    for i in range(1900, 2000):  # dark ink on paper, 3x larger: the full preprocessing runs
        Image.fromarray(255 - mnist.x_test[i]).resize((84, 84)).save(photos / f"{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    return d


def test_predict_ray_on_the_cluster_gives_the_local_answers(
    ray_cluster, inputs_2000, models_dir, tmp_path, mnist
):
    from mnist_tflite.edge.predict import Classifier, Failure

    model = models_dir / "int8.tflite"
    res = ray_cluster.cli(
        "predict",
        str(model),
        str(inputs_2000),
        str(inputs_2000 / "photos"),
        "--ray",
        "--output",
        str(tmp_path / "r.parquet"),
        "--top-k",
        "2",
    )
    assert res.returncode == 1, res.stderr  # the broken file
    assert "broken.png: not an image" in res.stderr and "wrote 2,001 results (1 failed)" in res.stdout
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(table) == 2001
    clf = Classifier(model)
    np.save(tmp_path / "b.npy", mnist.x_test[1500:1900])  # the Parquet rows, as the local runner reads them
    local = list(clf.predict_files([inputs_2000 / "a.npy", tmp_path / "b.npy", inputs_2000 / "photos"]))
    assert len(local) == len(table)
    for got, want in zip(table, local, strict=True):
        if isinstance(want, Failure):
            assert got["error"] == want.problem and got["label"] == ""
            continue
        assert got["label"] == want.label and got["confidence"] == pytest.approx(want.confidence, abs=1e-7)
        assert got["label_2"] == want.top(2)[1][0]
        assert got["file"].replace("b.parquet", "b.npy").endswith(Path(want.source).name)
    # the printed lines are the local runner's, byte for byte
    photos = inputs_2000 / "photos"
    ray_text = ray_cluster.cli("predict", str(model), str(photos), "--ray", "--top-k", "3")
    local_text = _cli("predict", str(model), str(photos), "--top-k", "3", "--single")
    assert ray_text.stdout == local_text.stdout and ray_text.stdout.count("\n") == 100
    assert ray_text.returncode == local_text.returncode == 1


def test_a_sound_model_tflm_crashes_on_is_not_called_corrupt():
    """A single 16-filter convolution with batch norm and a fixed batch of 1 crashes this TFLM
    build (SIGSEGV while preparing); LiteRT loads and runs the same file. The trial says which
    interpreter failed, and does not call a sound file corrupt."""
    import numpy as np

    from mnist_tflite.edge.probe import probe
    from mnist_tflite.scale.trial import int8_recipe, measure_tflm
    from mnist_tflite.training.search import untrained_flatbuffer

    spec = space.ArchSpec(
        blocks=(space.Block(16, 3, 2, pool=True),), downsample=2, batch_norm=True, fixed_batch=True
    )
    rep = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    fb = untrained_flatbuffer(spec.architecture("t"), int8_recipe(), rep)
    assert probe(fb) is None  # LiteRT: fine
    arena, problem = measure_tflm(fb)
    assert arena is None and problem is not None
    assert "TFLM interpreter crashed" in problem and "LiteRT loads and runs it" in problem
    assert "corrupt" not in problem


def test_a_saved_search_without_trials_is_started_over_not_restored(tmp_path):
    """kill -9 just after Ray first saved its state leaves an experiment state with no trial:
    Ray's restore fails on it (IndexError), so --resume must start over instead."""
    import json

    from mnist_tflite.scale.tune import saved_trials

    assert saved_trials(tmp_path) is None  # nothing saved: a new search anyway
    (tmp_path / "experiment_state-2026-12-07_21-27-30.json").write_text(
        json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}})
    )
    assert saved_trials(tmp_path) == 1
    (tmp_path / "experiment_state-2026-12-07_21-27-39.json").write_text(
        json.dumps({"trial_data": [], "runner_data": {}})
    )
    assert saved_trials(tmp_path) == 0  # the newest one is what Ray would restore
    (tmp_path / "experiment_state-2026-12-07_21-28-00.json").write_text("{trunc")
    assert saved_trials(tmp_path) is None  # unreadable: Ray's own message


def test_a_search_cut_off_while_ray_wrote_tuner_pkl_is_started_over(tmp_path):
    """kill -9 while Ray wrote tuner.pkl (once, when a search begins, not atomically) leaves it
    empty or cut: Ray's restore fails on it (EOFError; seen once in CI), so --resume starts the
    search over, and the new Tuner writes a whole tuner.pkl in its place."""
    from mnist_tflite.scale.options import TuneOptions
    from mnist_tflite.scale.tune import EXPERIMENT, _tuner, tuner_state_readable

    exp = tmp_path / EXPERIMENT
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"")
    assert not tuner_state_readable(exp)
    options = TuneOptions(out=tmp_path, flash=16384, trials=2, max_epochs=1, seed=0, resume=True)
    lines: list[str] = []
    _tuner(options, options.settings(), tmp_path, 2, lines.append)
    assert any("tuner.pkl incomplete" in line and "starting it over" in line for line in lines), lines
    assert tuner_state_readable(exp)
    whole = (exp / "tuner.pkl").read_bytes()
    (exp / "tuner.pkl").write_bytes(whole[: len(whole) // 2])  # cut mid-write
    assert not tuner_state_readable(exp)
    (exp / "tuner.pkl").write_bytes(whole)
    lines.clear()
    _tuner(options, options.settings(), tmp_path, 2, lines.append)  # whole again: Ray restores
    assert any("resuming the search" in line for line in lines), lines
