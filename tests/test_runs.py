"""Output folders are transactions, a model and its sidecar are a unit, and children die with us.

Kills are real SIGKILLs: of `run` at random moments, of `write_tflite` at every file-system
step, of the parent during the TFLM check and during QAT fine-tuning.
"""

from __future__ import annotations

from tests.conftest import require

require("tensorflow", "tflite_micro")  # before the imports that need them

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnist_tflite.cli import main
from mnist_tflite.core import procs, rundir
from mnist_tflite.core.errors import MnistTfliteError
from tests.conftest import MODELS, cli_argv, run_cli
from tests.processes import assert_group_dies, children_of, live_group, wait_until

# a fast but complete `run`: every stage, two recipes, a short TFLM check
FAST_RUN = [
    "--epochs", "1", "--recipes", "float32,int8", "--micro-images", "50",
    "--data", "sample", "--latency-samples", "0",
]  # fmt: skip


# -- helpers ------------------------------------------------------------------------------


def run_state(out: Path) -> int | None:
    """None if ``out`` is absent; else assert it is one complete run and return its seed.

    Independent of ``rundir.run_problem``: report.json lists exactly the models present,
    every model's sidecar hash matches it, and every sidecar's seed is the report's.
    """
    if not out.exists():
        return None
    names = sorted(p.name for p in out.iterdir())
    report = json.loads((out / "report.json").read_text())
    ok = {r["name"] for r in report["variants"] if r["status"] == "ok"}
    assert ok and ok == {p.stem for p in out.glob("*.tflite")}, names
    for name in ok:
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["sha256"] == hashlib.sha256((out / f"{name}.tflite").read_bytes()).hexdigest(), name
        assert meta["seed"] == report["seed"], name
    assert (out / "model.keras").stat().st_size > 0
    assert not [n for n in names if n.startswith(".")], names
    assert rundir.run_problem(out) is None
    return int(report["seed"])


def start_run(out: Path, seed: int, *extra: str, logs: Path) -> subprocess.Popen:
    """Start `mnist-tflite run` in its own process group; its output goes to a file in ``logs``."""
    logs.mkdir(exist_ok=True)
    err = logs / f"{out.parent.name}-{out.name}-{seed}-{time.monotonic_ns()}.err"
    with open(err, "w") as f:
        p = subprocess.Popen(
            cli_argv("run", "--out", str(out), *FAST_RUN, "--seed", str(seed), *extra),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    p.err_path = err  # type: ignore[attr-defined]
    return p


def stderr_of(p: subprocess.Popen) -> str:
    return p.err_path.read_text()  # type: ignore[attr-defined]


# -- rundir: lock, publish, sweep ---------------------------------------------------------


def make_run(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text(tag)
    (folder / f"only-{tag}.txt").write_text(tag)
    return folder


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_replaces_the_whole_folder(tmp_path, exchange):
    out = make_run(tmp_path / "out", "old")
    staging = make_run(rundir.staging_path(out), "new")
    rundir.publish(staging, out, exchange=exchange)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "only-new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILL_IN_PUBLISH = """
import os, signal, sys
from pathlib import Path
from mnist_tflite.core import rundir
k, exchange, out = int(sys.argv[1]), sys.argv[2] == "1", Path(sys.argv[3])
staging = rundir.staging_path(out)
staging.mkdir()
(staging / "a.txt").write_text("new")
calls = [0]
real_rename = os.rename
def rename(a, b):
    real_rename(a, b)
    calls[0] += 1
    if calls[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
rundir.publish(staging, out, exchange=exchange)
"""


@pytest.mark.parametrize(("k", "exchange"), [(1, False), (2, False), (99, True)])
def test_sweep_finishes_a_swap_killed_between_its_renames(tmp_path, k, exchange):
    """The fallback swap renames twice; killed in between, the next writer rolls forward."""
    out = make_run(tmp_path / "out", "old")
    r = subprocess.run(
        [sys.executable, "-c", KILL_IN_PUBLISH, str(k), "1" if exchange else "0", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == (0 if exchange else -signal.SIGKILL), r.stderr
    state = (out / "a.txt").read_text() if out.exists() else None
    assert state == {1: None, 2: "new", 99: "new"}[k]  # None: only inside the two-rename window
    with rundir.lock(out):
        rundir.sweep(out)
    assert (out / "a.txt").read_text() == "new"  # the staging was complete: roll forward
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sweep_removes_a_dead_writers_staging(tmp_path):
    out = make_run(tmp_path / "out", "old")
    make_run(rundir.staging_path(out, 999_999_999), "half")
    with rundir.lock(out):
        done = rundir.sweep(out)
    assert "left by a killed run" in done[0]
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lock_refuses_a_second_writer_with_one_line(tmp_path):
    out = tmp_path / "out"
    busy = r"another mnist-tflite process \(pid \d+\) is writing"
    with rundir.lock(out), pytest.raises(MnistTfliteError, match=busy), rundir.lock(out):
        pass
    assert not rundir.lock_path(out).exists()  # released and removed
    with rundir.lock(out):  # and free again
        pass


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_transaction_leaves_the_folder_as_it_was(tmp_path, exc):
    out = make_run(tmp_path / "out", "old")
    with pytest.raises(exc), rundir.transaction(out) as staging:
        (staging / "a.txt").write_text("new")
        raise exc()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "only-old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_run_with_missing_data_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    assert main(["run", "--out", str(out), "--data", str(tmp_path / "nope"), "--epochs", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- a .tflite and its sidecar are one unit -----------------------------------------------


def _write_pair_and_die(path: Path, flatbuffer: bytes, k: int, when: str) -> None:
    """In a forked child: write_tflite, SIGKILLed before/after its k-th rename or unlink."""
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.training.convert import write_tflite

    calls = [0]

    def hook(fn):
        def wrapped(*args, **kwargs):
            if calls[0] == k and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if calls[0] == k and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            calls[0] += 1
            return result

        return wrapped

    os.replace, os.unlink = hook(os.replace), hook(os.unlink)
    write_tflite(path, flatbuffer, get_recipe("float32"), extra={"seed": 7})


@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "overwrite"])
def test_a_kill_at_any_step_of_write_tflite_is_never_modified_nor_unchecked(tmp_path, previous):
    from mnist_tflite.core.recipes import get_recipe
    from mnist_tflite.edge.infer import read_model_bytes
    from mnist_tflite.training.convert import write_tflite

    old, new = (MODELS / "int8.tflite").read_bytes(), (MODELS / "float32.tflite").read_bytes()
    outcomes = []
    for k in range(10):
        for when in ("before", "after"):
            folder = tmp_path / f"{k}-{when}"
            folder.mkdir()
            path = folder / "m.tflite"
            if previous:
                write_tflite(path, old, get_recipe("int8"), extra={"seed": 6})
            pid = os.fork()
            if pid == 0:
                try:
                    _write_pair_and_die(path, new, k, when)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            killed = os.WIFSIGNALED(status)
            try:
                data, meta, verified = read_model_bytes(path)
            except MnistTfliteError as exc:
                msg = str(exc)
                assert "modified" not in msg, msg
                assert "incomplete write" in msg or (not previous and "no such file" in msg), msg
                outcomes.append("incomplete" if "incomplete" in msg else "absent")
            else:
                assert verified, "a model used without a hash check"
                assert data in (old, new) and meta["seed"] == (7 if data == new else 6)
                outcomes.append("new" if data == new else "old")
            # the next write of this model leaves exactly the pair: temp files and mark swept
            write_tflite(path, new, get_recipe("float32"), extra={"seed": 7})
            assert sorted(p.name for p in folder.iterdir()) == ["m.json", "m.tflite"]
            if not killed:
                assert outcomes[-1] == "new"
                break
        else:
            continue
        break
    assert outcomes[-1] == "new" and "incomplete" in outcomes, outcomes


def test_convert_refuses_an_out_that_is_not_tflite(tmp_path, capsys):
    model = tmp_path / "o" / "x.json"
    model.parent.mkdir()
    model.write_text("{}")
    assert main(["convert", str(MODELS / "model.keras"), "--out", str(model), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out must end in .tflite" in err[0]
    assert model.read_text() == "{}"


# -- children die with their parent ------------------------------------------------------


def _export_micro(out: Path, tmp: Path) -> subprocess.Popen:
    args = ["export-micro", str(MODELS / "int8.tflite"), "--out", str(out), "--verify", "--data", "embedded"]
    return subprocess.Popen(
        cli_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_tflm_check(p: subprocess.Popen) -> list[int]:
    """Wait until the verification children run (two TFLM forks after the arena search)."""
    for line in p.stdout:  # "verifying in TFLM on ..." is logged just before they are forked
        if line.startswith("verifying in TFLM"):
            break
    assert wait_until(lambda: children_of(p.pid), 20), "no TFLM children"
    time.sleep(0.3)
    return children_of(p.pid)


def test_sigkill_during_tflm_check_kills_the_children_and_the_temp_folder_is_swept(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = _export_micro(tmp_path / "fw", tmp)
    try:
        kids = _wait_for_tflm_check(p)
        assert kids
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert_group_dies(p.pid, within=2.0)
    finally:
        os.killpg(p.pid, signal.SIGKILL) if live_group(p.pid) else None
    left = [d.name for d in tmp.iterdir()]
    assert left and all(n.startswith(f"mnist-tflite-tflm-{p.pid}-") for n in left)
    removed = procs.sweep_temp("mnist-tflite-tflm", root=tmp)
    assert [d.name for d in removed] == left and not list(tmp.iterdir())
    assert not (tmp_path / "fw").exists()
    assert [d.name for d in tmp_path.iterdir()] == ["tmp"]  # no staging folder either


def test_sigterm_during_tflm_check_is_an_interrupt_that_cleans_up(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = _export_micro(tmp_path / "fw", tmp)
    try:
        _wait_for_tflm_check(p)
        os.kill(p.pid, signal.SIGTERM)
        rest = p.communicate(timeout=10)[0]
        assert p.returncode == 130, rest
        assert "mnist-tflite: interrupted" in rest and "Traceback" not in rest
        assert_group_dies(p.pid, within=2.0)
    finally:
        os.killpg(p.pid, signal.SIGKILL) if live_group(p.pid) else None
    assert not list(tmp.iterdir())  # removed on the way out, not left for a sweep
    assert [d.name for d in tmp_path.iterdir()] == ["tmp"]


def test_tflm_check_shows_progress(mnist):
    from mnist_tflite.micro.tflm.check import verify

    lines: list[str] = []
    v = verify(
        MODELS / "int8.tflite",
        mnist.x_test[:1500],
        mnist.y_test[:1500],
        arena_bytes=64 << 10,
        log=lines.append,
    )
    assert v["images"] == 1500
    done = [int(ln.split("TFLM check: ")[1].split("/")[0].replace(",", "")) for ln in lines]
    assert len(done) >= 2 and done == sorted(done) and done[-1] < 1500, lines
    assert all("/1,500 images (" in ln for ln in lines)


@pytest.mark.slow
def test_sigkill_during_fine_tuning_kills_the_tf_keras_child(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = [
        "convert",
        str(MODELS / "model.keras"),
        "--recipe",
        "qat-int8",
        "--out",
        str(tmp_path / "q.tflite"),
    ]
    p = subprocess.Popen(
        cli_argv(*args, "--data", "sample"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:

        def child_started() -> bool:
            for pid in children_of(p.pid):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"optimize_child" in cmd:
                    return True
            return False

        assert wait_until(child_started, 120), "the fine-tuning child never started"
        time.sleep(1.0)  # let it get into TensorFlow
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert_group_dies(p.pid, within=2.0)
    finally:
        os.killpg(p.pid, signal.SIGKILL) if live_group(p.pid) else None
    assert [d.name.startswith(f"mnist-tflite-optimize-{p.pid}-") for d in tmp.iterdir()] == [True]
    procs.sweep_temp("mnist-tflite-optimize", root=tmp)
    assert not list(tmp.iterdir())
    assert not list(tmp_path.glob("q*")) and not list(tmp_path.glob(".q*"))


# -- `run` end to end: kills, lock, re-run, --force ---------------------------------------

KILLS = int(os.environ.get("MNIST_TFLITE_TEST_KILLS", "20"))


def _lane(folder: Path, seed0: int, kills: int, rng: random.Random, log: list[str]) -> None:
    """One complete run, then ``kills`` runs with --force SIGKILLed at random moments."""
    out, logs = folder / "run", folder.parent / "logs"
    t = time.monotonic()
    p = start_run(out, seed0, logs=logs)
    assert p.wait(timeout=600) == 0, stderr_of(p)[-3000:]
    duration = time.monotonic() - t
    assert run_state(out) == seed0
    current, seed, done = seed0, seed0, 0
    while done < kills:
        seed += 1
        p = start_run(out, seed, "--force", logs=logs)
        delay = rng.uniform(0, duration)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)  # only the parent: its children must follow by themselves
            p.wait()
            assert_group_dies(p.pid, within=2.0)
            done += 1
            what = "kill at"
        else:
            assert p.returncode == 0, stderr_of(p)[-3000:]
            what = "finished before"
        state = run_state(out)
        assert state in (current, seed), (state, current, seed)
        log.append(f"{folder.name}: {what} {delay:4.1f} s of {duration:.0f} s: seed {state} (was {current})")
        current = state
    # the next run sweeps what the kills left; --force with fewer recipes replaces the whole run
    p = start_run(out, 1000 + seed0, "--force", "--recipes", "float32", logs=logs)
    assert p.wait(timeout=600) == 0, stderr_of(p)[-3000:]
    assert run_state(out) == 1000 + seed0
    assert sorted(p.name for p in folder.iterdir()) == ["run"]  # no staging, old or lock left
    assert not (out / "int8.tflite").exists()


@pytest.mark.slow
def test_run_killed_at_random_moments_leaves_a_complete_run(tmp_path):
    """>= 20 SIGKILLs of `run`, in two folders at once; each leaves the previous or the new run."""
    rng = random.Random(int(os.environ.get("MNIST_TFLITE_TEST_SEED", time.time_ns() % 10_000)))
    log: list[str] = []
    errors: list[BaseException] = []

    def lane(i: int) -> None:
        try:
            _lane(
                tmp_path / f"lane{i}", 100 * (i + 1), (KILLS + 1 - i) // 2, random.Random(rng.random()), log
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print("\n".join(log))
    if errors:
        raise errors[0]
    assert sum(1 for line in log if "kill at" in line) >= KILLS


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["locked", "training"])
def test_second_run_into_the_same_folder_is_refused_and_sigterm_cleans_up(tmp_path, moment):
    """SIGTERM as soon as the lock is taken (TensorFlow still importing) or during training."""
    out, logs = tmp_path / "runs" / "demo", tmp_path / "logs"
    a = start_run(out, 3, logs=logs)
    try:
        assert wait_until(lambda: rundir.lock_path(out).exists(), 120), stderr_of(a)
        b = run_cli("run", "--out", str(out), *FAST_RUN)
        assert b.returncode == 2, b.stderr[-2000:]
        errors = [ln for ln in b.stderr.splitlines() if ln.startswith("mnist-tflite: error:")]
        assert len(errors) == 1 and "another mnist-tflite process" in errors[0], b.stderr[-2000:]
        if moment == "training":
            assert wait_until(lambda: "[2/4] training" in stderr_of(a), 120), stderr_of(a)
            time.sleep(1.0)
        os.kill(a.pid, signal.SIGTERM)
        assert a.wait(timeout=30) == 130, stderr_of(a)[-2000:]
        assert "mnist-tflite: interrupted" in stderr_of(a) and "Traceback" not in stderr_of(a)
        assert_group_dies(a.pid)
    finally:
        os.killpg(a.pid, signal.SIGKILL) if live_group(a.pid) else None
    assert list((tmp_path / "runs").iterdir()) == []  # no half run, no staging folder, no lock file


@pytest.mark.slow
def test_rerun_is_a_no_op_other_options_are_refused_and_resume_reuses_the_model(tmp_path):
    out, logs = tmp_path / "demo", tmp_path / "logs"
    assert start_run(out, 4, logs=logs).wait(timeout=600) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = start_run(out, 4, logs=logs)
    assert again.wait(timeout=120) == 0
    assert "already holds a complete run with these options" in stderr_of(again), stderr_of(again)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    other = start_run(out, 5, logs=logs)
    assert other.wait(timeout=120) == 2
    assert "holds a run with another configuration (pass --force" in stderr_of(other)
    assert run_state(out) == 4
    # --resume reuses model.keras (byte for byte) and redoes the rest, here with fewer recipes
    keras_before = (out / "model.keras").read_bytes()
    resumed = start_run(out, 4, "--resume", "--recipes", "float32", logs=logs)
    assert resumed.wait(timeout=600) == 0, stderr_of(resumed)[-3000:]
    assert "reusing" in stderr_of(resumed) and "epoch" not in stderr_of(resumed)
    assert (out / "model.keras").read_bytes() == keras_before
    assert run_state(out) == 4 and not (out / "int8.tflite").exists()
    other = start_run(out, 5, "--resume", logs=logs)
    assert other.wait(timeout=120) == 2
    assert "--resume: its model was trained with other train options" in stderr_of(other)


def _export_state(out: Path) -> str:
    """The C name of the complete export in ``out``; assert every file micro.json lists is there."""
    summary = json.loads((out / "micro.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])
    return summary["name"]


def test_export_micro_force_killed_at_random_moments_never_loses_the_folder(tmp_path):
    out, model = tmp_path / "fw", str(MODELS / "int8.tflite")
    cmd = cli_argv("export-micro", model, "--out", str(out))
    t = time.monotonic()
    assert subprocess.run([*cmd, "--name", "m0"], capture_output=True).returncode == 0
    duration, current, rng = time.monotonic() - t, "m0", random.Random(11)
    for i in range(1, 7):
        p = subprocess.Popen([*cmd, "--name", f"m{i}", "--force"], stdout=subprocess.DEVNULL)
        try:
            p.wait(timeout=rng.uniform(0.3 * duration, 1.1 * duration))  # the swap is near the end
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        state = _export_state(out)  # never missing, never a mix
        assert state in (current, f"m{i}")
        current = state
    assert subprocess.run([*cmd, "--name", "last", "--force"], capture_output=True).returncode == 0
    assert _export_state(out) == "last"
    assert [p.name for p in tmp_path.iterdir()] == ["fw"]  # leftovers swept


def _proc_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.parametrize("platform", ["linux", "other"])
def test_a_child_dies_when_its_parent_is_killed(platform):
    """prctl(PR_SET_PDEATHSIG) on Linux; elsewhere the parent-pid watchdog thread."""
    script = f"""
import os, signal, sys, time
from mnist_tflite.core import procs
sys.platform = {platform!r}  # "other": no prctl, the watchdog thread has to do it
r, w = os.pipe()
if os.fork() == 0:
    procs.die_with_parent()
    os.write(w, b"armed")
    time.sleep(60)
    os._exit(0)
os.read(r, 5)
print(os.getpid(), flush=True)
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert int(parent.stdout.readline()) == parent.pid
        (child,) = children_of(parent.pid)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not _proc_running(child), 2.0), f"child {child} outlived its parent"
    finally:
        for pid in children_of(parent.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_run_that_finished_while_we_loaded_data_is_kept_not_replaced(tmp_path, monkeypatch, mnist):
    """Under the lock `run` looks again: a complete run with its options that appeared is left as is."""
    import shutil

    from mnist_tflite.training import pipeline
    from mnist_tflite.training.train import TrainConfig

    out = tmp_path / "demo"
    config = pipeline.RunConfig(out=out, data="sample", recipes="float32,int8", train=TrainConfig(seed=0))
    fp = pipeline.fingerprint(config, config.validate())

    def other_run_finishes(*args, **kwargs):  # what another process does while we load the data
        out.mkdir()
        for name in ("float32", "int8"):
            for ext in (".tflite", ".json"):
                shutil.copy(MODELS / f"{name}{ext}", out / f"{name}{ext}")
        (out / "model.keras").write_bytes((MODELS / "model.keras").read_bytes())
        variants = [{"name": n, "status": "ok"} for n in ("float32", "int8")]
        (out / "report.json").write_text(json.dumps({"seed": 0, "run_config": fp, "variants": variants}))
        return mnist

    monkeypatch.setattr(pipeline.data_mod, "load", other_run_finishes)
    lines: list[str] = []
    report = pipeline.run(config, log=lines.append)
    assert report["run_config"] == fp and "already holds a complete run" in lines[-1]
    assert run_state(out) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
