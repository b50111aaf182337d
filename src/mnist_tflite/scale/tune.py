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

import numpy as np

from mnist_tflite.core import atomic, sidecar
from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import MnistTfliteError, fail
from mnist_tflite.scale import space
from mnist_tflite.scale.cluster import cluster_cpus, connected, require_ray
from mnist_tflite.scale.space import kib

FORMAT = "mnist-tflite-tune/1"
SETTINGS_FILE = "search.json"
EXPERIMENT = "ray"
# the hand-designed points of README's `run` table (int8, seed 0, embedded data), for comparison
HAND_DESIGNED = (
    {"name": "seed int8", "flash": 42_080, "arena": 30_464, "test_accuracy": 0.9871},
    {"name": "tiny int8", "flash": 9_024, "arena": 4_624, "test_accuracy": 0.980},
)


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
    "data": "sample",  # the 5k sample until tune is re-tuned for 60k
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


def budgets(flash: int, ram: int | None) -> list[tuple[int, int | None]]:
    """(flash, RAM) pairs: powers of two from 4 KB (flash) / 2 KB (RAM) up to the limits, and the limits."""

    def ladder(limit: int, start: int) -> list[int]:
        steps = [start << i for i in range(24) if start << i < limit]
        return [*steps, limit]

    rams: list[int | None] = ladder(ram, 2048) if ram else [None]
    return [(f, r) for f in ladder(flash, 4096) for r in rams]


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
            f"budget flash {_budget_text(options.flash, options.ram)}; data: {ds.source}"
        )
        if not options.resume:
            smallest = ray.get(ray.remote(num_cpus=1)(_smallest_footprint).remote(settings))
            problem = _over(smallest, options)
            if problem:
                raise MnistTfliteError(
                    f"nothing in the search space fits {_budget_text(options.flash, options.ram)}: "
                    f"its smallest model ({space.SMALLEST.label()}) needs {smallest['flash']:,} B flash and "
                    f"{smallest['arena']:,} B TFLM arena ({problem})"
                )
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(out / SETTINGS_FILE, {"format": FORMAT, "settings": settings})
        results, algorithm = _fit(ray, options, settings, out, cpus, log)
        searched = time.perf_counter() - t0
        rows = _rows(results, options)
        front = _select(ray, rows, options, settings, out, log)
    wall = (searched, time.perf_counter() - t0)
    doc = _finish(rows, front, options, ds, out, wall, cpus, algorithm, log)
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
            f"no model met {_budget_text(options.flash, options.ram)} in {len(rows)} trials; {found}"
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
    front = pareto_front([r for r in chosen if r.get("cv_accuracy") is not None], "cv_accuracy")
    finalists.refit(ray, front, settings, out, log)
    front = [r for r in front if r.get("model") and not _over_row(r, options)]
    return sorted(front, key=lambda r: (r["flash"], r["arena"]))


def _over_row(r: dict[str, Any], options: TuneOptions) -> str | None:
    why = _over(r, options)
    if why:
        r["refit_error"] = f"the refit model is over budget: {why}"
    return why


def _budget_text(flash: int | None, ram: int | None) -> str:
    return f"<= {kib(flash or 0)}" + (f", RAM (TFLM arena) <= {kib(ram)}" if ram else "")


def _over(fp: dict[str, Any], options: TuneOptions) -> str | None:
    if fp["flash"] > (options.flash or 0):
        return f"flash over {kib(options.flash or 0)}"
    if options.ram and fp["arena"] > options.ram:
        return f"arena over {kib(options.ram)}"
    return None


def _fit(
    ray: Any, options: TuneOptions, settings: dict[str, Any], out: Path, cpus: int, log: Callable[[str], None]
) -> tuple[list[Any], str]:
    from ray import tune

    from mnist_tflite.scale import progress
    from mnist_tflite.scale.schedule import BudgetASHA
    from mnist_tflite.scale.trial import CRASH_ENV

    settings = {**settings, "crash": os.environ.get(CRASH_ENV)}
    trainable = tune.with_resources(tune.with_parameters(_trainable, settings=settings), {"cpu": 1})
    param_space = _param_space(tune)
    exp_path = out.resolve() / EXPERIMENT
    scheduler = BudgetASHA(
        with_ram=bool(options.ram),
        time_attr="epoch",
        metric="rung_score",  # minus the validation loss: steadier than accuracy (see trial.py)
        mode="max",
        max_t=options.max_epochs,
        grace_period=_grace(options.max_epochs),
        reduction_factor=REDUCTION_FACTOR,
    )
    searcher, algorithm = _searcher(options.seed)
    if options.resume and tune.Tuner.can_restore(str(exp_path)):
        tuner = tune.Tuner.restore(
            str(exp_path), trainable, resume_unfinished=True, resume_errored=False, param_space=param_space
        )
        log(f"tune: resuming the search in {exp_path}")
    else:  # a new search (or one interrupted before Ray saved anything: it starts over)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=options.trials,
                max_concurrent_trials=cpus,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(out.resolve()),
                verbose=0,
                # restored with the experiment state on --resume (it writes through progress.SINK)
                callbacks=[progress.Progress(options.trials, options.max_epochs)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
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


# -- results ----------------------------------------------------------------------------------


def _rows(results: list[Any], options: TuneOptions) -> list[dict[str, Any]]:
    from mnist_tflite.scale.progress import first_line

    rows = []
    for i, r in enumerate(results):
        m = dict(r.metrics or {})
        spec, lr = space.from_config(r.config)
        row: dict[str, Any] = {
            "trial": Path(str(r.path)).name.removeprefix("trial_"),
            "point": space.point_name(spec, lr) or "",
            "arch": spec.label(),
            "spec": spec.to_dict(),
            "learning_rate": lr,
            "params": spec.params(),
            "macs": m.get("macs", spec.macs()),
            "flash": m.get("flash"),
            "arena": m.get("arena"),
            "epochs": m.get("epoch"),
            "val_accuracy": m.get("val_accuracy"),
            "val_correct": m.get("val_correct"),
            "val_images": m.get("val_images"),
            "config": dict(r.config),
            "keras_val_accuracy": m.get("keras_val_accuracy"),
            "val_loss": -m["rung_score"] if m.get("rung_score") is not None else None,
            "seconds": m.get("seconds"),
            "order": i,
        }
        if r.error is not None:
            row.update(status="failed", reason=first_line(str(r.error)))
        elif m.get("status") == "ok":
            row["status"] = "ok"
        elif m.get("status") == "infeasible":
            row.update(status="infeasible", reason=m.get("reason"))
        elif m.get("status") == "training":
            row.update(status="stopped", reason=f"by ASHA at epoch {m.get('epoch')} of {options.max_epochs}")
        else:
            row.update(status="failed", reason="ended without reporting")
        rows.append(row)
    return rows


def pareto_front(rows: list[dict[str, Any]], accuracy: str = "cv_accuracy") -> list[dict[str, Any]]:
    """Rows no other row beats on flash, arena and ``accuracy`` at once."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ka = (a["flash"], a["arena"], -a[accuracy])
        kb = (b["flash"], b["arena"], -b[accuracy])
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _finish(
    rows: list[dict[str, Any]],
    front: list[dict[str, Any]],
    options: TuneOptions,
    ds: data_mod.Dataset,
    out: Path,
    wall: tuple[float, float],
    cpus: int,
    algorithm: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Test the front, hand out each budget's best, write front.json/.md/.png.

    ``wall``: (seconds until the trials ended, seconds in all) of this run of the command.
    """
    from mnist_tflite.edge.infer import TfliteModel

    x_test = data_mod.normalize(ds.x_test)
    for r in front:  # the test set, once, for the front only
        model = TfliteModel(r["model"])
        r["test_accuracy"] = float(np.mean(model.predict(x_test) == ds.y_test))
        r["front"] = True
    best = []
    for f, ram in budgets(options.flash or 0, options.ram):
        fits = [r for r in front if r["flash"] <= f and (ram is None or r["arena"] <= ram)]
        if not fits:
            continue
        r = max(fits, key=lambda r: (r["cv_accuracy"], -r["flash"], -r["arena"]))
        name = f"best-flash{kib(f).replace(' ', '')}" + (f"-ram{kib(ram).replace(' ', '')}" if ram else "")
        _export(r, out / f"{name}.tflite", f, ram)
        best.append(
            {
                "flash_budget": f,
                "ram_budget": ram,
                "file": f"{name}.tflite",
                "trial": r["trial"],
                "arch": r["arch"],
                "flash": r["flash"],
                "arena": r["arena"],
                "val_accuracy": r["val_accuracy"],
                "cv_accuracy": r["cv_accuracy"],
                "test_accuracy": r["test_accuracy"],
            }
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "infeasible", "failed")}
    doc = {
        "format": FORMAT,
        "budget": {"flash": options.flash, "ram": options.ram},
        "settings": options.settings(),
        "data": ds.source,
        "search": {
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
            "trials": len(rows),
            **counts,
        },
        "space": space.SPACE.describe(),
        "measures": {
            "flash": "bytes of the int8 .tflite (1 KB = 1,024 B)",
            "arena": "the smallest TFLM tensor arena that allocates and runs the model, by bisection on "
            "this 64-bit host (export-micro recommends +10 %)",
            "val_loss": "Keras cross-entropy on the validation split after the last epoch (breaks ties)",
            "val_accuracy": f"the trial's int8 model (LiteRT) on fold 0 of {options.folds}: the "
            f"{1 / (options.folds or 1):.0%} of the training data it held out",
            "cv_accuracy": f"finalists only: {options.folds}-fold cross-validation, the int8 models' "
            "accuracy on every training image once (fold 0 is the trial's own validation); the front "
            "and each budget's best are chosen on it",
            "test_accuracy": "the front only: the architecture trained again on all the training data "
            "(the model handed out), int8, on the test set",
        },
        "trials": [{k: v for k, v in r.items() if k not in ("order", "config", "model")} for r in rows],
        "front": [r["trial"] for r in front],
        "best": best,
        "hand_designed": _versus_hand_designed(front),
    }
    atomic.write_json(out / "front.json", doc)
    _plot(rows, front, out / "front.png", options)
    atomic.write_text(out / "front.md", _markdown(doc, rows, front))
    log(
        f"tune: {len(rows)} trials in {wall[0] / 60:.1f} min ({counts['ok']} trained, {counts['stopped']} "
        f"stopped early, {counts['infeasible']} infeasible, {counts['failed']} failed); "
        f"{sum(bool(r.get('finalist')) for r in rows)} cross-validated; front of {len(front)}; "
        f"{wall[1] / 60:.1f} min in all"
    )
    return doc


def _export(row: dict[str, Any], path: Path, flash_budget: int, ram_budget: int | None) -> None:
    """The refit model and its sidecar, renamed, with the search's figures in the sidecar."""
    src = Path(row["model"])
    data = src.read_bytes()
    meta = sidecar.read(src) or {}
    meta.pop("format", None)
    meta.update(
        model=path.name,
        tune={
            "trial": row["trial"],
            "budget": {"flash": flash_budget, "ram": ram_budget},
            "flash_bytes": row["flash"],
            "arena_bytes": row["arena"],
            "macs": row["macs"],
            "val_accuracy": row["val_accuracy"],
            "cv_accuracy": row["cv_accuracy"],
            "test_accuracy": row["test_accuracy"],
        },
    )
    atomic.write_bytes(path, data)
    sidecar.write(path, meta)


def _versus_hand_designed(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ref in HAND_DESIGNED:
        fits = [
            r
            for r in front
            if r["flash"] <= ref["flash"]
            and r["arena"] <= ref["arena"]
            and r["test_accuracy"] >= ref["test_accuracy"]
        ]
        win = min(fits, key=lambda r: r["flash"], default=None)
        out.append(
            {
                **ref,
                "dominated_by": win["trial"] if win else None,
                "by": {k: win[k] for k in ("arch", "flash", "arena", "test_accuracy")} if win else None,
            }
        )
    return out


def _val(r: dict[str, Any]) -> float:
    """The int8 validation accuracy; for a trial stopped early, Keras' at its last epoch."""
    return r["val_accuracy"] if r.get("val_accuracy") is not None else r.get("keras_val_accuracy") or 0.0


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f} %"


def _num(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def _cells(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _markdown(doc: dict[str, Any], rows: list[dict[str, Any]], front: list[dict[str, Any]]) -> str:
    s = doc["search"]
    lines = [
        "# mnist-tflite tune: architectures that fit the budget",
        "",
        f"Budget: flash {_budget_text(doc['budget']['flash'], doc['budget']['ram'])}. "
        f"{s['trials']} trials in {s['trials_seconds'] / 60:.1f} min on {s['cpus']} CPUs ({s['cluster']}), "
        f"{s['wall_seconds'] / 60:.1f} min with the finalists' cross-validation and refit: "
        f"{s['ok']} trained to the end, {s['stopped']} stopped early, {s['infeasible']} infeasible "
        f"(not trained), {s['failed']} failed.",
        "",
        f"Search: {s['algorithm']}; {s['scheduler']}. Objective: {s['objective']}. Data: {doc['data']}.",
        "",
        "Flash: "
        + doc["measures"]["flash"]
        + ". Arena: "
        + doc["measures"]["arena"]
        + ". Validation: "
        + doc["measures"]["val_accuracy"]
        + "; test: "
        + doc["measures"]["test_accuracy"]
        + ".",
        "",
        "## Best model under each budget",
        "",
        "| flash budget | RAM budget | file | architecture | flash (B) | arena (B) | val | cv | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in doc["best"]:
        ram = kib(b["ram_budget"]) if b["ram_budget"] else "any"
        lines.append(
            _cells(
                kib(b["flash_budget"]),
                ram,
                b["file"],
                b["arch"],
                _num(b["flash"]),
                _num(b["arena"]),
                _pct(b["val_accuracy"]),
                _pct(b["cv_accuracy"]),
                _pct(b["test_accuracy"]),
            )
        )
    if not doc["best"]:
        lines.append("| | | (no model met the budget) | | | | | | |")
    lines += ["", "## Against the hand-designed models", ""]
    for h in doc["hand_designed"]:
        by = h["by"]
        verdict = "not dominated by this search's front"
        if by:
            figures = f"{by['flash']:,} B, arena {by['arena']:,} B, {_pct(by['test_accuracy'])}"
            verdict = f"dominated by {by['arch']} ({figures})"
        figures = f"{h['flash']:,} B, arena {h['arena']:,} B, {_pct(h['test_accuracy'])} test"
        lines.append(f"- {h['name']} ({figures}): {verdict}")
    lines += [
        "",
        "## Every trial",
        "",
        "Finalists (cross-validated) are marked ◆, front members ★ (no other finalist is smaller in flash "
        "and arena and at least as accurate in cross-validation).",
        "",
        _cells(
            "trial",
            "point",
            "architecture",
            "lr",
            "status",
            "params",
            "MACs",
            "flash (B)",
            "arena (B)",
            "epochs",
            "val",
            "cv",
            "test",
        ),
        "|---" * 13 + "|",
    ]
    for r in sorted(rows, key=lambda r: (r["flash"] or 1 << 40, r["order"])):
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        status += f" ({r['cv_error']})" if r.get("cv_error") else ""
        status += f" ({r['refit_error']})" if r.get("refit_error") else ""
        mark = " ★" if r.get("front") else " ◆" if r.get("finalist") else ""
        val = _val(r) if r["status"] in ("ok", "stopped") else None
        lines.append(
            _cells(
                r["trial"] + mark,
                r["point"],
                r["arch"],
                f"{r['learning_rate']:.2g}",
                status,
                f"{r['params']:,}",
                _num(r["macs"]),
                _num(r["flash"]),
                _num(r["arena"]),
                "" if r["epochs"] is None else r["epochs"],
                _pct(val),
                _pct(r.get("cv_accuracy")),
                _pct(r.get("test_accuracy")),
            )
        )
    lines += ["", "![validation accuracy vs flash](front.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], path: Path, options: TuneOptions) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [r for r in rows if r["status"] in ("ok", "stopped") and r.get("flash") and r.get("arena")]
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=100)
    if pts:
        acc = [
            100 * (r["val_accuracy"] if r["val_accuracy"] is not None else r["keras_val_accuracy"] or 0)
            for r in pts
        ]
        sc = ax.scatter(
            [r["flash"] for r in pts],
            acc,
            c=[r["arena"] for r in pts],
            cmap="viridis",
            s=40,
            zorder=3,
            marker="o",
            edgecolors="none",
        )
        stopped = [(r["flash"], a) for r, a in zip(pts, acc, strict=True) if r["status"] == "stopped"]
        if stopped:
            ax.scatter(
                *zip(*stopped, strict=True),
                s=70,
                facecolors="none",
                edgecolors="grey",
                zorder=2,
                label="stopped early (val at that epoch)",
            )
        fig.colorbar(sc, ax=ax, label="TFLM arena (bytes)")
    lows = [100 * (r["cv_accuracy"] or 0) for r in front if 100 * (r["cv_accuracy"] or 0) >= 80.0] + [97.0]
    floor = min(lows) - 1.5
    shown = [r for r in front if 100 * r["cv_accuracy"] >= floor]  # not a 4 KB model at 50 %
    front, hidden = shown, len(front) - len(shown)
    if front:
        fx, fy = [r["flash"] for r in front], [100 * r["cv_accuracy"] for r in front]
        ax.step(
            fx,
            np.maximum.accumulate(fy),
            where="post",
            color="tab:red",
            alpha=0.6,
            label="Pareto front (cross-validated)"
            + (f"; {hidden} below {floor:.0f} % not shown" if hidden else ""),
        )
        ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="tab:red", zorder=4)
        ax.scatter(
            fx,
            [100 * r["test_accuracy"] for r in front],
            marker="x",
            color="black",
            zorder=5,
            label="front: test accuracy",
        )
    for h in HAND_DESIGNED:
        ax.scatter([h["flash"]], [100 * h["test_accuracy"]], marker="s", color="tab:orange", zorder=5)
        ax.annotate(
            h["name"] + " (test)",
            (h["flash"], 100 * h["test_accuracy"]),
            xytext=(-6, 6),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
    budget = options.flash or 0
    ax.axvline(budget, color="grey", linestyle="--", alpha=0.6, label=f"flash budget {kib(budget)}")
    ax.set_xscale("log")
    xs = [r["flash"] for r in pts] + [h["flash"] for h in HAND_DESIGNED] + [budget]
    lo, hi = min(xs) / 1.15, max(xs) * 1.15
    ticks = [k << 10 for k in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if lo <= k << 10 <= hi]
    ax.set_xlim(lo, hi)
    ax.set_xticks(ticks, [kib(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("flash: int8 .tflite size (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(floor, 100.0)
    ax.set_title("tune: accuracy vs flash, RAM as colour (dots: trials on their validation fold)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summary_text(doc: dict[str, Any]) -> str:
    """What ``tune`` prints at the end: the best model per budget."""
    lines = []
    for b in doc["best"]:
        ram = f", RAM <= {kib(b['ram_budget'])}" if b["ram_budget"] else ""
        lines.append(
            f"flash <= {kib(b['flash_budget'])}{ram}: {b['file']}  {b['arch']}  {b['flash']:,} B flash, "
            f"{b['arena']:,} B arena, {_pct(b['cv_accuracy'])} cross-validated, "
            f"{_pct(b['test_accuracy'])} test"
        )
    return "\n".join(lines)
