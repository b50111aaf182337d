"""``mnist-tflite tune``: a constraint-aware architecture search on Ray Tune.

The search space is data (:mod:`mnist_tflite.scale.space`); each trial (:mod:`trial`)
measures the point's int8 flash and TFLM arena before training (over budget: infeasible,
reported, not trained), trains on a training split and reports validation accuracy every
epoch, so that ASHA stops the weak ones early; Optuna's TPE (through Ray Tune) proposes
the points. Then (:mod:`finalists`) the best trials are cross-validated on every fold, the
front is chosen on that score and its architectures are trained on all the training data.
The test set is used once, at the end, for those models.

Writes into ``--out``: ``front.json``, ``front.md``, ``front.png`` and, for each budget
(flash x RAM ladder up to the limits), ``best-flash<F>-ram<R>.tflite`` with its sidecar,
ready for ``export-micro`` and ``compile``. Ray's experiment state lives in ``--out/ray/``: ``--resume``
continues it after Ctrl-C or ``kill -9``.

No TensorFlow in this process: trials run in Ray workers.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnist_tflite.core import atomic
from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.report.plots import pareto_front
from mnist_tflite.scale import front as report
from mnist_tflite.scale import space
from mnist_tflite.scale.cluster import cluster_cpus, connected, require_ray
from mnist_tflite.scale.front import FORMAT, budget_text, budgets
from mnist_tflite.scale.space import kib

SETTINGS_FILE = "search.json"
EXPERIMENT = "ray"


class Interrupted(MnistTfliteError):
    """Ctrl-C during the search: Ray saved its state; ``--resume`` continues it."""

    exit_code = 130


class NothingFits(MnistTfliteError):
    """The search ran but no model met the budget (exit status 1; the outputs are written)."""

    exit_code = 1


DEFAULTS: dict[str, Any] = {
    "trials": 30,
    "max_epochs": 30,
    "seed": 0,
    "data": "embedded",
    "ram": None,
    "folds": 3,  # a trial holds out fold 0: 1,667 of the 5k sample; finalists are scored on all 3
    "finalists": 10,
}
MAX_FOLDS = 10
REDUCTION_FACTOR = 2  # ASHA keeps the better half of a budget cell at each rung (a third: too noisy)


@dataclass(frozen=True)
class TuneOptions:
    """``mnist-tflite tune``'s options; sizes in bytes. None: the default (or, with
    ``resume``, the value the search was started with)."""

    out: Path
    flash: int | None = None
    ram: int | None = None
    trials: int | None = None
    max_epochs: int | None = None
    address: str | None = None
    resume: bool = False
    seed: int | None = None
    data: str | None = None
    folds: int | None = None
    finalists: int | None = None

    def settings(self) -> dict[str, Any]:
        """What the trials need, and what ``--resume`` restores."""
        return {
            "flash": self.flash,
            "ram": self.ram,
            "trials": self.trials,
            "max_epochs": self.max_epochs,
            "seed": self.seed,
            "data": self.data,
            "folds": self.folds,
            "finalists": self.finalists,
            "val_fraction": 1 / self.folds if self.folds else None,
        }


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--flash") -> int:
    """``16KB`` / ``16k`` / ``16KiB`` -> 16384 (1 KB = 1,024 bytes); ``9000`` -> 9000 bytes."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise MnistTfliteError(f"{option} {text!r}: expected a positive size such as 16KB, 512KB or 9000")
    unit = (m.group(2) or "b").lower()[0]
    return int(float(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 * 1024}[unit])


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


def _prepare(options: TuneOptions) -> tuple[TuneOptions, Path]:
    """Options with every value set (from the saved search on --resume), and the output dir."""
    out = Path(options.out)
    settings_path = out / SETTINGS_FILE
    keys = ("flash", "ram", "trials", "max_epochs", "seed", "data", "folds", "finalists")
    if options.resume:
        if not settings_path.is_file():
            raise fail(out, f"no search to resume (no {SETTINGS_FILE}); start one without --resume")
        try:
            saved = json.loads(settings_path.read_text(encoding="utf-8"))["settings"]
            saved = {k: saved[k] for k in keys}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(settings_path, f"unreadable search settings ({exc})") from None
        changed = [k for k in keys if getattr(options, k) is not None and getattr(options, k) != saved[k]]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise MnistTfliteError(
                f"--resume continues the search as it was started: {flags} differ from {settings_path} "
                "(leave them out)"
            )
        return replace(options, **saved), out
    if options.flash is None:
        raise MnistTfliteError("--flash is required (e.g. --flash 16KB), unless --resume")
    options = replace(options, **{k: v for k, v in DEFAULTS.items() if getattr(options, k) is None})
    if min(options.trials, options.max_epochs, options.finalists) < 1:
        raise MnistTfliteError(
            f"--trials, --max-epochs and --finalists must be >= 1, received: {options.trials}, "
            f"{options.max_epochs} and {options.finalists}"
        )
    if not 2 <= options.folds <= MAX_FOLDS:
        raise MnistTfliteError(f"--folds must be 2 to {MAX_FOLDS}, received: {options.folds}")
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if settings_path.exists() or (out / EXPERIMENT).exists():
        raise fail(out, "already holds a search; pass --resume to continue it, or choose another --out")
    return options, out


def search(options: TuneOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search and write the outputs; returns the ``front.json`` document.

    Raises:
        NothingFits: no trial met the budget (the outputs are still written).

    Example:
        >>> search(TuneOptions(out=Path("runs/tune"), flash=16 * 1024, ram=8 * 1024))
    """
    require_ray()  # before anything else: without Ray, one line naming the pip command
    options, out = _prepare(options)
    ds = data_mod.load(options.data, log=log)
    settings = options.settings()
    if options.data in ("auto", "keras"):  # every trial, on every node, must train on the same data
        cache = data_mod.keras_cache_path()
        settings["data"] = str(cache) if ds.source.startswith("Keras") else "embedded"
    t0 = time.perf_counter()
    with connected(options.address) as ray:
        cpus = cluster_cpus(ray)
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray instance"
        log(
            f"tune: {options.trials} trials on {where} ({cpus} CPUs, one trial per CPU), "
            f"budget flash {budget_text(options.flash, options.ram)}; data: {ds.source}"
        )
        if not options.resume:
            smallest = ray.get(ray.remote(num_cpus=1)(_smallest_footprint).remote(settings))
            problem = _over(smallest, options)
            if problem:
                raise MnistTfliteError(
                    f"nothing in the search space fits {budget_text(options.flash, options.ram)}: "
                    f"its smallest model ({space.SMALLEST.label()}) needs {smallest['flash']:,} B flash and "
                    f"{smallest['arena']:,} B TFLM arena ({problem})"
                )
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(out / SETTINGS_FILE, {"format": FORMAT, "settings": settings})
        results, algorithm = _fit(ray, options, settings, out, cpus, log)
        searched = time.perf_counter() - t0
        rows = report.rows(results, options.max_epochs)
        front = _select(ray, rows, options, settings, out, log)
    how = search_info(options, algorithm, cpus, (searched, time.perf_counter() - t0))
    doc = report.finish(rows, front, options.settings(), ds, out, how, log)
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
        grid = tuner.fit()
    finally:
        progress.SINK["log"] = None
    finished = grid.num_terminated + grid.num_errors
    if finished < options.trials:  # Ctrl-C: Tune stopped and saved its state
        raise Interrupted(
            f"interrupted after {finished} of {options.trials} trials; continue with: "
            f"mnist-tflite tune --out {out} --resume"
        )
    return [grid[i] for i in range(len(grid))], algorithm


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
    if options.resume and tune.Tuner.can_restore(str(exp_path)):
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
