"""After the search: cross-validate the finalists, then refit the front on all the training data.

A trial is scored on one fold of the search's training images (4,000 of the 12,000 with the
default 3 folds). That ranks models only to within a few tenths of a point: an image is
0.025 point, and two models a few tenths apart swap places from one split to the next. The
first search ran on 500 images and handed out an 8 KB model (98.1 % test) as the best
under 16 KB while it had trained two that reached 98.6 % and 98.8 % test. So the search
ends in three steps:

1. **Finalists** (:func:`choose`): under each budget of the ladder, the trials that its
   validation fold cannot tell apart from the budget's most accurate one (less than two
   standard errors of a difference behind it). Every budget's best is taken first, the
   budgets with the most accurate bests first, then every budget's second, and so on, up
   to ``--finalists``; a trial more than ``USEFUL_GAP`` behind the most accurate one is
   never a finalist. (Taking budgets smallest first let budgets below any useful size, a
   45 % model the best under 4 KB, take the places of the 16-32 KB contenders; taking the
   most accurate trials first left the 8 KB budget without a finalist.)
2. **Cross-validation** (:func:`cross_validate`): each finalist is trained again with
   each other fold held out (Ray tasks, one CPU each), so its score counts every training
   image once: 12,000 predictions instead of 4,000. The budget's best model and the front
   are chosen on this score. The test set is still not used.
3. **Refit** (:func:`refit`): the front's architectures are trained once more on all the
   training data (nothing held out) and those models are handed out and tested.

Each result is saved as it arrives (``DIR/finalists/<trial>/``), so ``--resume`` after an
interruption repeats only what had not finished.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mnist_tflite.core import atomic
from mnist_tflite.core.errors import last_line, plural

FOLDER = "finalists"


Z = 2.0  # standard errors of a difference: closer than this, validation cannot rank two trials
# a finalist is at most this far behind the search's most accurate trial on validation: a 2.7 KB
# model at 28 % was the best under 4 KB and took a finalist's place, its cross-validation and refit
USEFUL_GAP = 0.10


def margin(accuracy: float, images: int) -> float:
    """``Z`` standard errors of the difference of two accuracies near ``accuracy`` on ``images``."""
    return Z * math.sqrt(2 * accuracy * (1 - accuracy) / max(images, 1))


def choose(
    rows: list[dict[str, Any]], ladder: Iterable[tuple[int, int | None]], limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` trained trials that validation cannot tell apart from the best under some
    budget of the ladder: every budget's best first (the most accurate budgets first, so that
    budgets below any useful size come last), then every budget's second, and so on. Within a
    budget: most accurate first (ties: lower validation loss, then smaller). A trial more than
    ``USEFUL_GAP`` behind the most accurate one is never a finalist."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("val_accuracy") is not None]
    if ok:
        useful = max(r["val_accuracy"] for r in ok) - USEFUL_GAP
        ok = [r for r in ok if r["val_accuracy"] >= useful]
    contenders: list[list[dict[str, Any]]] = []
    for f, ram in ladder:
        fits = [r for r in ok if r["flash"] <= f and (ram is None or r["arena"] <= ram)]
        if not fits:
            continue
        fits.sort(key=lambda r: (-r["val_accuracy"], r.get("val_loss") or 9.9, r["flash"], r["arena"]))
        top = fits[0]["val_accuracy"]
        floor = top - margin(top, fits[0].get("val_images") or 0)
        contenders.append([r for r in fits if r["val_accuracy"] >= floor])
    contenders.sort(key=lambda c: -c[0]["val_accuracy"])
    chosen: list[dict[str, Any]] = []
    for rank in range(max((len(c) for c in contenders), default=0)):
        for c in contenders:
            if len(chosen) == limit:
                return chosen
            if rank < len(c) and c[rank] not in chosen:
                chosen.append(c[rank])
    return chosen


def _run(
    ray: Any,
    jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...], Path]],
    describe: Callable[[int, dict[str, Any] | None, str | None], str],
    log: Callable[[str], None],
) -> list[dict[str, Any] | str]:
    """Run ``(function, args, cache file)`` jobs as one-CPU Ray tasks, skipping those whose cache
    file exists; one progress line per job. Returns each job's result, or its error's last line."""
    results: list[dict[str, Any] | str] = [""] * len(jobs)
    pending: dict[Any, int] = {}
    remote: dict[Any, Any] = {}
    for i, (fn, args, cache) in enumerate(jobs):
        saved = _saved(cache)
        if saved is not None:
            results[i] = saved
        else:
            task = remote.setdefault(fn, ray.remote(num_cpus=1, max_retries=0)(fn))
            pending[task.remote(*args)] = i
    total, done, t0 = len(pending), 0, time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as exc:  # a crashed job is recorded, the others go on
            results[i] = last_line(str(exc))
            line = describe(i, None, results[i])
        else:
            results[i] = result
            atomic.write_json(jobs[i][2], result)
            line = describe(i, result, None)
        done += 1
        left = (time.monotonic() - t0) / done * (total - done)
        log(f"  [{done:>2}/{total}] {line}; ~{left / 60:.1f} min left")
    return results


def _saved(cache: Path) -> dict[str, Any] | None:
    """A job's saved result, or None when it has none (or an unreadable one: run it again)."""
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _folder(out: Path, row: dict[str, Any]) -> Path:
    """Where a finalist's fold results, refit model and refit figures are kept."""
    folder = out / FOLDER / row["trial"]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cross_validate(
    ray: Any,
    finalists: list[dict[str, Any]],
    settings: dict[str, Any],
    out: Path,
    log: Callable[[str], None],
) -> None:
    """Set each finalist's ``cv_accuracy`` (all folds) and ``cv_folds``, or its ``cv_error``."""
    from mnist_tflite.scale.trial import cross_validation_fold

    folds = int(settings["folds"])
    jobs, owners = [], []
    for r in finalists:
        folder = _folder(out, r)
        for k in range(1, folds):  # fold 0 is the trial's own validation
            jobs.append((cross_validation_fold, (r["config"], settings, k), folder / f"fold{k}.json"))
            owners.append(r)
    log(
        f"tune: cross-validating {len(finalists)} finalists on {folds} folds "
        f"({len(jobs)} more trainings; fold 0 is each trial's own validation)"
    )

    def describe(i: int, result: dict[str, Any] | None, error: str | None) -> str:
        r = owners[i]
        what = f"{r['arch']} fold {jobs[i][1][2]}"
        if error:
            return f"{what}: FAILED: {error}"
        assert result is not None
        return f"{what}: {result['correct']}/{result['images']} ({result['seconds']:.0f} s)"

    results = _run(ray, jobs, describe, log)
    for r in finalists:
        mine = [res for res, owner in zip(results, owners, strict=True) if owner is r]
        errors = [res for res in mine if isinstance(res, str)]
        if errors:
            r["cv_error"] = f"cross-validation failed: {errors[0]}"
            continue
        scores = [{"fold": 0, "correct": r["val_correct"], "images": r["val_images"]}]
        scores += [{k: res[k] for k in ("fold", "correct", "images")} for res in mine]  # type: ignore[index]
        r["cv_folds"] = scores
        r["cv_accuracy"] = sum(s["correct"] for s in scores) / sum(s["images"] for s in scores)


def refit(
    ray: Any,
    front: list[dict[str, Any]],
    settings: dict[str, Any],
    out: Path,
    log: Callable[[str], None],
) -> None:
    """Train each front member on all the training data; set ``model`` (its file) and the
    refit model's ``flash``, ``arena`` and ``macs``, or ``refit_error``."""
    from mnist_tflite.scale.trial import refit as refit_one

    jobs = []
    for r in front:
        folder = _folder(out, r)
        jobs.append((refit_one, (r["config"], settings, str(folder / "model.tflite")), folder / "refit.json"))
    log(f"tune: training the {plural(len(front), 'model')} of the front on all the training data")

    def describe(i: int, result: dict[str, Any] | None, error: str | None) -> str:
        if error:
            return f"{front[i]['arch']}: FAILED: {error}"
        assert result is not None
        figures = f"{result['flash']:,} B flash, {result['arena']:,} B arena"
        return f"{front[i]['arch']}: {figures} ({result['seconds']:.0f} s)"

    for r, (_, args, _), res in zip(front, jobs, _run(ray, jobs, describe, log), strict=True):
        if isinstance(res, str):
            r["refit_error"] = f"refit failed: {res}"
        elif res.get("problem"):
            r["refit_error"] = f"the refit model does not run in TFLM: {res['problem']}"
        else:
            r.update(model=args[2], flash=res["flash"], arena=res["arena"], macs=res["macs"])
