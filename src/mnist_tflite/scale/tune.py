"""``mnist-tflite tune``: a constraint-aware architecture search on Ray Tune.

The search space is data (:mod:`mnist_tflite.scale.space`); each trial (:mod:`trial`)
measures the point's int8 flash and TFLM arena before training (over budget: infeasible,
reported, not trained), trains on a seeded subset of the training images (``--search-images``,
12,000 of the 60,000 by default, one fold held out) and reports validation accuracy every
epoch, so that ASHA stops the weak ones early; Optuna's TPE (through Ray Tune) proposes
the points. Then (:mod:`finalists`) the best trials are cross-validated on every fold, the
front is chosen on that score and its architectures are trained on all the training data
(``--refit-epochs``).
The test set is used once, at the end, for those models.

Writes into ``--out``: ``front.json``, ``front.md``, ``front.png`` and, for each budget
(flash x RAM ladder up to the limits), ``best-flash<F>-ram<R>.tflite`` with its sidecar,
ready for ``export-micro`` and ``compile``. Ray's experiment state lives in ``--out/ray/``: ``--resume``
continues it after Ctrl-C or ``kill -9``.

No TensorFlow in this process: trials run in Ray workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from mnist_tflite.core import atomic, procs, rundir
from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.core.reaper import reaping
from mnist_tflite.report.plots import pareto_front
from mnist_tflite.scale import front as report
from mnist_tflite.scale import space
from mnist_tflite.scale.cluster import cluster_cpus, connected, require_ray
from mnist_tflite.scale.front import FORMAT, budget_text, budgets
from mnist_tflite.scale.options import EXPERIMENT, SETTINGS_FILE, TuneOptions, prepare
from mnist_tflite.scale.space import kib
from mnist_tflite.scale.trial import TEMP_PREFIXES


class Interrupted(MnistTfliteError):
    """Ctrl-C during the search: Ray saved its state; ``--resume`` continues it."""

    exit_code = 130


class NothingFits(MnistTfliteError):
    """The search ran but no model met the budget (exit status 1; the outputs are written)."""

    exit_code = 1


REDUCTION_FACTOR = 2  # ASHA keeps the better half of a budget cell at each rung (a third: too noisy)


# -- the trainable (runs in Ray workers) ------------------------------------------------------


def _trainable(config: dict[str, Any], settings: dict[str, Any]) -> None:
    from ray import tune

    from mnist_tflite.scale.trial import run_trial

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    run_trial(config, settings, report)


def _smallest_footprint(settings: dict[str, Any]) -> dict[str, Any]:
    """Flash and arena of the space's smallest point (a Ray task: TensorFlow stays in workers)."""
    from mnist_tflite.scale.trial import footprint

    return footprint(space.SMALLEST, settings)


# -- the search -----------------------------------------------------------------------------


def search(options: TuneOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search and write the outputs; returns the ``front.json`` document.

    ``kill PID`` stops it as Ctrl-C does (exit 130, ``--resume`` continues); after ``kill -9``
    what Ray started ends too, and ``--out`` holds the previous complete outputs or none.

    Raises:
        Interrupted: Ctrl-C or SIGTERM.
        NothingFits: no trial met the budget (the outputs are still written).

    Example:
        >>> search(TuneOptions(out=Path("runs/tune"), flash=16 * 1024, ram=8 * 1024))
    """
    require_ray()  # before anything else: without Ray, one line naming the pip command
    options, out = prepare(options)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # kill -9 in the swap of the report: the watcher removes the half-built copy
        with procs.sigterm_as_ctrl_c(), rundir.lock(out), reaping(TEMP_PREFIXES, [rundir.staging_path(out)]):
            rundir.sweep(out, log)  # a publish that a kill -9 cut short
            rows, doc = _search(options, out, log)
    except KeyboardInterrupt:
        if not (out / SETTINGS_FILE).is_file():
            raise Interrupted("interrupted before the search started; nothing to resume") from None
        raise Interrupted(f"interrupted; continue with: mnist-tflite tune --out {out} --resume") from None
    if not doc["best"]:
        from mnist_tflite.scale.progress import describe  # imports Ray: only once the search ran

        measured = [r for r in rows if r.get("flash")]
        smallest = min(measured, key=lambda r: (r["flash"], r.get("arena") or 0), default=None)
        found = (
            f"the smallest model found: {describe(smallest)}, {smallest['status']}"
            if smallest
            else "no trial was measured"
        )
        raise NothingFits(
            f"no model met {budget_text(options.flash, options.ram)} in {len(rows)} trials; {found}"
        )
    return doc


def _search(options: TuneOptions, out: Path, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict]:
    """The trials, the finalists and the report; returns the rows and ``front.json``."""
    ds = data_mod.load(options.data, log=log)
    settings = options.settings()
    if options.data in ("auto", "keras"):  # every trial, on every node, must train on the same data
        cache = data_mod.keras_cache_path()
        settings["data"] = str(cache) if ds.source.startswith("Keras") else "embedded"
    t0 = time.perf_counter()
    with connected(options.address, temp_prefixes=TEMP_PREFIXES) as ray:
        cpus = cluster_cpus(ray)
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray instance"
        log(
            f"tune: {options.trials} trials on {where} ({cpus} CPUs, one trial per CPU), "
            f"budget flash {budget_text(options.flash, options.ram)}; data: {ds.source}"
        )
        searched_on = min(options.search_images or 0, len(ds.x_train))
        log(
            f"tune: trials and cross-validation train on {searched_on:,} of the {len(ds.x_train):,} "
            f"training images (seeded); the front is refit on all of them, {options.refit_epochs} epochs"
        )
        if not options.resume:
            _check_smallest_fits(ray, options, settings)
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(out / SETTINGS_FILE, {"format": FORMAT, "settings": settings})
        results, algorithm = _fit(ray, options, settings, out, cpus, log)
        searched = time.perf_counter() - t0
        rows = report.rows(results, options.max_epochs)
        front = _select(ray, rows, options, settings, out, log)
    how = search_info(options, algorithm, cpus, (searched, time.perf_counter() - t0))
    doc = _publish(out, lambda staging: report.finish(rows, front, options.settings(), ds, staging, how, log))
    return rows, doc


def _check_smallest_fits(ray: Any, options: TuneOptions, settings: dict[str, Any]) -> None:
    smallest = ray.get(ray.remote(num_cpus=1)(_smallest_footprint).remote(settings))
    problem = _over(smallest, options)
    if problem:
        raise MnistTfliteError(
            f"nothing in the search space fits {budget_text(options.flash, options.ram)}: "
            f"its smallest model ({space.SMALLEST.label()}) needs {smallest['flash']:,} B flash and "
            f"{smallest['arena']:,} B TFLM arena ({problem})"
        )


_REPORT_FILE = re.compile(r"^(front\.(json|md|png)|best-flash[\d.]+KB(-ram[\d.]+KB)?\.(tflite|json))$")


def _publish(out: Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Write the report into a copy of ``out`` and swap it in whole (:mod:`core.rundir`): at every
    instant ``out`` holds the previous report or the new one, never a mix. The search's state
    (search.json, ray/, finalists/) and anything else in ``out`` come along as hard links."""
    staging = rundir.staging_path(out)
    try:
        staging.mkdir()
        for entry in out.iterdir():
            if _REPORT_FILE.match(entry.name):
                continue  # the previous report: replaced as a whole
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link)
            else:
                _link(entry, staging / entry.name)
        doc = write(staging)
        rundir.publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return doc


def _link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _select(
    ray: Any,
    rows: list[dict[str, Any]],
    options: TuneOptions,
    settings: dict[str, Any],
    out: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The finalists, cross-validated; the front on that score, refit on all the training data."""
    from mnist_tflite.scale import finalists

    chosen = finalists.choose(rows, budgets(options.flash or 0, options.ram), options.finalists or 1)
    for r in chosen:
        r["finalist"] = True
    if not chosen:
        return []
    finalists.cross_validate(ray, chosen, settings, out, log)
    scored = [r for r in chosen if r.get("cv_accuracy") is not None]
    front = pareto_front(scored, key=lambda r: (r["flash"], r["arena"], -r["cv_accuracy"]))
    finalists.refit(ray, front, settings, out, log)
    front = [r for r in front if r.get("model") and not _over_row(r, options)]
    return sorted(front, key=lambda r: (r["flash"], r["arena"]))


def _over_row(r: dict[str, Any], options: TuneOptions) -> str | None:
    why = _over(r, options)
    if why:
        r["refit_error"] = f"the refit model is over budget: {why}"
    return why


def _over(fp: dict[str, Any], options: TuneOptions) -> str | None:
    if fp["flash"] > (options.flash or 0):
        return f"flash over {kib(options.flash or 0)}"
    if options.ram and fp["arena"] > options.ram:
        return f"arena over {kib(options.ram)}"
    return None


def _fit(
    ray: Any, options: TuneOptions, settings: dict[str, Any], out: Path, cpus: int, log: Callable[[str], None]
) -> tuple[list[Any], str]:
    """Run (or resume) Ray Tune's search; the results of every trial and the algorithm's name."""
    from mnist_tflite.scale import progress

    tuner, algorithm = _tuner(options, settings, out, cpus, log)
    progress.SINK["log"] = log
    try:
        for attempt in (1, 2):
            with _stop_gracefully() as stopped:
                grid = tuner.fit()
            finished = grid.num_terminated + grid.num_errors
            if attempt == 2 or not options.resume or stopped or finished >= options.trials:
                break
            # a kill -9 between Ray counting a new trial and saving it: the restored search ends
            # short and would end so on every --resume; only a new search runs them all
            log(
                f"tune: the saved search ended with {finished} of {options.trials} trials (a kill -9 "
                "cut the others off before Ray saved them): starting it over"
            )
            tuner, algorithm = _tuner(replace(options, resume=False), settings, out, cpus, log)
    finally:
        progress.SINK["log"] = None
    results = [grid[i] for i in range(len(grid))]
    if stopped or finished < options.trials:  # Ctrl-C or SIGTERM: Tune stopped and saved its state
        done = sum(
            r.error is not None or (r.metrics or {}).get("status") in ("ok", "infeasible") for r in results
        )
        raise Interrupted(
            f"interrupted with {done} of {options.trials} trials finished; continue with: "
            f"mnist-tflite tune --out {out} --resume"
        )
    return results, algorithm


@contextlib.contextmanager
def _stop_gracefully() -> Iterator[list[int]]:
    """During ``fit``, Ctrl-C or SIGTERM asks Tune to stop and save its state (a second one stops
    at once); yields the signals received. Tune's own Ctrl-C handler is kept out: it cannot say
    that it fired, and the trials it stops then look finished."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def stop(signum: int, frame: Any) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's "stop and save", set by fit
        if callable(tune_stop):
            tune_stop(signum, frame)

    before = os.environ.get(_NO_TUNE_SIGINT)
    os.environ[_NO_TUNE_SIGINT] = "1"
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if before is None:
            os.environ.pop(_NO_TUNE_SIGINT, None)
        else:
            os.environ[_NO_TUNE_SIGINT] = before


_NO_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


def saved_trials(exp_path: Path) -> int | None:
    """How many trials Ray's newest saved experiment state holds (the file Ray restores from:
    the greatest ``experiment_state-*.json``); None when there is none or it cannot be read."""
    states = sorted(exp_path.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        state = json.loads(states[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # let Ray say what is wrong with it
    trials = state.get("trial_data") if isinstance(state, dict) else None
    return len(trials) if isinstance(trials, list) else None


def tuner_state_readable(exp_path: Path) -> bool:
    """Whether Ray's ``tuner.pkl`` in ``exp_path`` unpickles whole. Ray writes it once, when a
    new search begins, straight into place: a kill -9 at that moment leaves it empty or cut."""
    import pickle

    try:
        pickle.loads((exp_path / "tuner.pkl").read_bytes())
    except Exception:  # any failure to unpickle: a file Ray cannot restore from
        return False
    return True


def _tuner(
    options: TuneOptions, settings: dict[str, Any], out: Path, cpus: int, log: Callable[[str], None]
) -> tuple[Any, str]:
    """Ray Tune's ``Tuner``: restored from ``--out/ray`` on --resume, else a new one."""
    from ray import tune

    from mnist_tflite.scale import progress
    from mnist_tflite.scale.schedule import BudgetASHA
    from mnist_tflite.scale.trial import CRASH_ENV

    settings = {**settings, "crash": os.environ.get(CRASH_ENV)}
    trainable = tune.with_resources(tune.with_parameters(_trainable, settings=settings), {"cpu": 1})
    param_space = _param_space(tune)
    exp_path = out.resolve() / EXPERIMENT
    searcher, algorithm = _searcher(options.seed)
    restorable = options.resume and tune.Tuner.can_restore(str(exp_path))
    if restorable and not tuner_state_readable(exp_path):
        # killed while Ray wrote tuner.pkl (once, when the search began, not atomically): Ray's
        # restore fails on it (EOFError), and no trial can have run yet
        log("tune: the saved search was cut off while it began (tuner.pkl incomplete): starting it over")
    elif restorable and saved_trials(exp_path) == 0:
        # killed after Ray saved its state but before any trial was in it: Ray cannot restore
        # that (IndexError in its controller), and there is nothing to continue
        log("tune: the saved search holds no trial yet: starting it over")
    elif restorable:
        log(f"tune: resuming the search in {exp_path}")
        restored = tune.Tuner.restore(
            str(exp_path), trainable, resume_unfinished=True, resume_errored=False, param_space=param_space
        )
        return restored, algorithm
    # a new search (or one interrupted before Ray saved anything: it starts over)
    scheduler = BudgetASHA(
        with_ram=bool(options.ram),
        time_attr="epoch",
        metric="rung_score",  # minus the validation loss: steadier than accuracy (see trial.py)
        mode="max",
        max_t=options.max_epochs,
        grace_period=_grace(options.max_epochs),
        reduction_factor=REDUCTION_FACTOR,
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=options.trials,
        max_concurrent_trials=cpus,
        trial_dirname_creator=_trial_dirname,
    )
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=str(out.resolve()),
        verbose=0,
        # restored with the experiment state on --resume (it writes through progress.SINK)
        callbacks=[progress.Progress(options.trials, options.max_epochs)],
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return tuner, algorithm


def search_info(options: TuneOptions, algorithm: str, cpus: int, wall: tuple[float, float]) -> dict[str, Any]:
    """How the search ran, for ``front.json``'s ``search``. ``wall``: (seconds until the trials
    ended, seconds in all) of this run of the command."""
    return {
        "algorithm": algorithm,
        "scheduler": f"ASHA within each budget cell (flash 4/8/16 KB..., arena 2/4/8 KB...) on the "
        f"validation loss per epoch: grace {_grace(options.max_epochs or 1)} epochs, reduction factor "
        f"{REDUCTION_FACTOR}, max {options.max_epochs}",
        "objective": "int8 validation accuracy + 0.2 points per halving of flash below the budget; "
        "0 when over budget",
        "search_images": options.search_images,
        "refit_epochs": options.refit_epochs,
        "cluster": options.address or "local",
        "cpus": cpus,
        "trials_seconds": round(wall[0], 1),
        "wall_seconds": round(wall[1], 1),
    }


def _grace(max_epochs: int) -> int:
    return max(1, max_epochs // 6)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _param_space(tune: Any) -> dict[str, Any]:
    out = {}
    for d in space.SPACE.dimensions:
        out[d.name] = tune.choice(list(d.choices)) if d.choices else tune.loguniform(d.low, d.high)
    return out


def _searcher(seed: int) -> tuple[Any, str]:
    points = [config for _, config in space.starting_points()]
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        from ray.tune.search import BasicVariantGenerator

        return (
            BasicVariantGenerator(points_to_evaluate=points, random_state=seed),
            "random search (Tune's BasicVariantGenerator; install optuna for TPE)",
        )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, len(points) + 2))
    searcher = OptunaSearch(metric="score", mode="max", points_to_evaluate=points, sampler=sampler)
    return searcher, "Optuna TPE through Ray Tune (OptunaSearch)"
