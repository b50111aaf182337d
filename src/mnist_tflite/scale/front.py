"""The report of a ``tune`` search: ``front.json``, ``front.md``, ``front.png`` and each budget's best.

The driver (:mod:`mnist_tflite.scale.tune`) hands over the trials as rows and the front it
chose; here the front meets the test set (once), each budget of the flash x RAM ladder gets
its best model (``best-flash<F>-ram<R>.tflite`` with its sidecar) and the results are written.
No Ray and no TensorFlow: the front's models run on LiteRT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import atomic, sidecar
from mnist_tflite.core import data as data_mod
from mnist_tflite.core.errors import last_line
from mnist_tflite.scale import space
from mnist_tflite.scale.front_plot import plot_front
from mnist_tflite.scale.space import kib

__all__ = ["FORMAT", "HAND_DESIGNED", "PUBLISHED", "budget_text", "budgets", "finish", "rows", "summary_text"]

FORMAT = "mnist-tflite-tune/1"
# the hand-designed points of README's `run` table (int8, seed 0, all 60,000 training images)
HAND_DESIGNED = (
    {"name": "seed int8", "flash": 41_848, "arena": 30_288, "test_accuracy": 0.9927},
    {"name": "tiny int8", "flash": 8_768, "arena": 4_448, "test_accuracy": 0.9883},
)
# published tiny MNIST models, as their authors report them (not measured here): ``bytes`` is
# what they count, which is not always our flash (the whole int8 .tflite)
PUBLISHED = (
    {
        "name": "BitNetMCU",
        "bytes": 5_530,
        "counted": "5.4 KB of 2-4-bit weights, 16x16 input",
        "test_accuracy": 0.9906,
    },
    {
        "name": "BitNetMCU",
        "bytes": 7_475,
        "counted": "7.3 KB of 2-4-bit weights, 16x16 input",
        "test_accuracy": 0.9928,
    },
    {"name": "SpArSe", "bytes": 2_867, "counted": "2.8 KB of flash", "test_accuracy": 0.9864},
)


def budgets(flash: int, ram: int | None) -> list[tuple[int, int | None]]:
    """(flash, RAM) pairs: powers of two from 4 KB (flash) / 2 KB (RAM) up to the limits, and the limits."""

    def ladder(limit: int, start: int) -> list[int]:
        steps = [start << i for i in range(24) if start << i < limit]
        return [*steps, limit]

    rams: list[int | None] = ladder(ram, 2048) if ram else [None]
    return [(f, r) for f in ladder(flash, 4096) for r in rams]


def budget_text(flash: int | None, ram: int | None) -> str:
    """``<= 16 KB, RAM (TFLM arena) <= 8 KB``."""
    return f"<= {kib(flash or 0)}" + (f", RAM (TFLM arena) <= {kib(ram)}" if ram else "")


def rows(results: list[Any], max_epochs: int | None) -> list[dict[str, Any]]:
    """One row per Ray Tune result: the trial's architecture, figures and status."""
    out = []
    for i, r in enumerate(results):
        m = dict(r.metrics or {})
        spec, lr = space.from_config(r.config)
        row: dict[str, Any] = {
            "trial": Path(str(r.path)).name.removeprefix("trial_"),
            "point": space.point_name(spec, lr) or "",
            "arch": spec.label(),
            "spec": spec.to_dict(),
            "learning_rate": lr,
            "augment": space.augments(r.config),
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
        row.update(_status(r.error, m, max_epochs))
        out.append(row)
    return out


def _status(error: Any, m: dict[str, Any], max_epochs: int | None) -> dict[str, Any]:
    if error is not None:
        return {"status": "failed", "reason": last_line(str(error))}
    if m.get("status") == "ok":
        return {"status": "ok"}
    if m.get("status") == "infeasible":
        return {"status": "infeasible", "reason": m.get("reason")}
    if m.get("status") == "training":
        return {"status": "stopped", "reason": f"by ASHA at epoch {m.get('epoch')} of {max_epochs}"}
    return {"status": "failed", "reason": "ended without reporting"}


def finish(
    rows: list[dict[str, Any]],
    front: list[dict[str, Any]],
    settings: dict[str, Any],
    ds: data_mod.Dataset,
    out: Path,
    search: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Test the front, hand out each budget's best, write front.json/.md/.png; returns front.json.

    ``settings``: the search's (``TuneOptions.settings()``); ``search``: how it ran (algorithm,
    scheduler, objective, cluster, cpus, trials_seconds, wall_seconds).
    """
    _test(front, ds)
    best = _hand_out(front, settings["flash"] or 0, settings["ram"], out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "infeasible", "failed")}
    doc = {
        "format": FORMAT,
        "budget": {"flash": settings["flash"], "ram": settings["ram"]},
        "settings": settings,
        "data": ds.source,
        "search": {**search, "trials": len(rows), **counts},
        "space": space.SPACE.describe(),
        "measures": _measures(settings),
        "trials": [{k: v for k, v in r.items() if k not in ("order", "config", "model")} for r in rows],
        "front": [r["trial"] for r in front],
        "best": best,
        "hand_designed": _versus_hand_designed(front),
        "published": _versus_published(front),
    }
    atomic.write_json(out / "front.json", doc)
    plot_front(rows, front, out / "front.png", settings["flash"] or 0, HAND_DESIGNED)
    atomic.write_text(out / "front.md", _markdown(doc, rows, front))
    log(
        f"tune: {len(rows)} trials in {search['trials_seconds'] / 60:.1f} min ({counts['ok']} trained, "
        f"{counts['stopped']} stopped early, {counts['infeasible']} infeasible, {counts['failed']} failed); "
        f"{sum(bool(r.get('finalist')) for r in rows)} cross-validated; front of {len(front)}; "
        f"{search['wall_seconds'] / 60:.1f} min in all"
    )
    return doc


def _test(front: list[dict[str, Any]], ds: data_mod.Dataset) -> None:
    """The test set, once, for the front only."""
    from mnist_tflite.edge.infer import TfliteModel

    x_test = data_mod.normalize(ds.x_test)
    for r in front:
        model = TfliteModel(r["model"])
        r["test_accuracy"] = float(np.mean(model.predict(x_test) == ds.y_test))
        r["front"] = True


def _hand_out(
    front: list[dict[str, Any]], flash: int, ram_limit: int | None, out: Path
) -> list[dict[str, Any]]:
    """Each budget's most accurate front member (cross-validated), written as ``best-flash<F>[-ram<R>]``."""
    best = []
    for f, ram in budgets(flash, ram_limit):
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
                **{k: r[k] for k in ("trial", "arch", "flash", "arena")},
                **{k: r[k] for k in ("val_accuracy", "cv_accuracy", "test_accuracy")},
            }
        )
    return best


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


def _measures(settings: dict[str, Any]) -> dict[str, str]:
    """What each figure of the report is, measured how."""
    folds, images = settings["folds"], settings.get("search_images")
    subset = f"the search's {images:,} training images" if images else "the training data"
    return {
        "flash": "bytes of the int8 .tflite (1 KB = 1,024 B)",
        "arena": "the smallest TFLM tensor arena that allocates and runs the model, by bisection on "
        "this 64-bit host (export-micro recommends +10 %)",
        "val_loss": "Keras cross-entropy on the validation split after the last epoch (breaks ties)",
        "val_accuracy": f"the trial's int8 model (LiteRT) on fold 0 of {folds}: the "
        f"{1 / (folds or 1):.0%} of {subset} (at most; all when there are fewer) it held out",
        "cv_accuracy": f"finalists only: {folds}-fold cross-validation on {subset}, the int8 models' "
        "accuracy on each of them once (fold 0 is the trial's own validation); the front "
        "and each budget's best are chosen on it",
        "test_accuracy": f"the front only: the architecture trained again on all the training data for "
        f"{settings.get('refit_epochs')} epochs (the model handed out), int8, on the test set",
    }


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


def _versus_published(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each published point beside the front's most accurate model of at most its byte count
    (our bytes: the whole int8 file, a stricter count than weights alone)."""
    out = []
    for ref in PUBLISHED:
        fits = [r for r in front if r["flash"] <= ref["bytes"]]
        ours = max(fits, key=lambda r: (r["test_accuracy"], -r["flash"]), default=None)
        out.append(
            {**ref, "ours": {k: ours[k] for k in ("arch", "flash", "test_accuracy")} if ours else None}
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
    lines = _header(doc) + _best_table(doc) + _versus_lines(doc) + _trial_table(rows)
    return "\n".join([*lines, "", "![validation accuracy vs flash](front.png)", ""])


def _header(doc: dict[str, Any]) -> list[str]:
    s, measures = doc["search"], doc["measures"]
    return [
        "# mnist-tflite tune: architectures that fit the budget",
        "",
        f"Budget: flash {budget_text(doc['budget']['flash'], doc['budget']['ram'])}. "
        f"{s['trials']} trials in {s['trials_seconds'] / 60:.1f} min on {s['cpus']} CPUs ({s['cluster']}), "
        f"{s['wall_seconds'] / 60:.1f} min with the finalists' cross-validation and refit: "
        f"{s['ok']} trained to the end, {s['stopped']} stopped early, {s['infeasible']} infeasible "
        f"(not trained), {s['failed']} failed.",
        "",
        f"Search: {s['algorithm']}; {s['scheduler']}. Objective: {s['objective']}. Data: {doc['data']}.",
        "",
        f"Flash: {measures['flash']}. Arena: {measures['arena']}. Validation: {measures['val_accuracy']}; "
        f"test: {measures['test_accuracy']}.",
        "",
    ]


def _best_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Best model under each budget",
        "",
        "| flash budget | RAM budget | file | architecture | flash (B) | arena (B) | val | cv | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in doc["best"]:
        ram = kib(b["ram_budget"]) if b["ram_budget"] else "any"
        figures = (_num(b["flash"]), _num(b["arena"]))
        accuracies = (_pct(b["val_accuracy"]), _pct(b["cv_accuracy"]), _pct(b["test_accuracy"]))
        lines.append(_cells(kib(b["flash_budget"]), ram, b["file"], b["arch"], *figures, *accuracies))
    if not doc["best"]:
        lines.append("| | | (no model met the budget) | | | | | | |")
    return lines


def _versus_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["", "## Beside published tiny MNIST models", ""]
    lines.append("Their figures as their authors report them; ours: the whole int8 `.tflite`, tested here.")
    lines.append("")
    for p in doc.get("published", []):
        ours = p["ours"]
        mine = "no model of the front is that small"
        if ours:
            mine = f"ours: {ours['arch']}, {ours['flash']:,} B, {_pct(ours['test_accuracy'])}"
        lines.append(f"- {p['name']}: {_pct(p['test_accuracy'])} in {p['counted']}; {mine}")
    lines += ["", "## Against the hand-designed models", ""]
    for h in doc["hand_designed"]:
        by = h["by"]
        verdict = "not dominated by this search's front"
        if by:
            figures = f"{by['flash']:,} B, arena {by['arena']:,} B, {_pct(by['test_accuracy'])}"
            verdict = f"dominated by {by['arch']} ({figures})"
        figures = f"{h['flash']:,} B, arena {h['arena']:,} B, {_pct(h['test_accuracy'])} test"
        lines.append(f"- {h['name']} ({figures}): {verdict}")
    return lines


_TRIAL_COLUMNS = ("trial", "point", "architecture", "lr", "aug", "status", "params", "MACs")
_TRIAL_COLUMNS += ("flash (B)", "arena (B)", "epochs", "val", "cv", "test")


def _trial_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Every trial",
        "",
        "Finalists (cross-validated) are marked ◆, front members ★ (no other finalist is smaller in flash "
        "and arena and at least as accurate in cross-validation).",
        "",
        _cells(*_TRIAL_COLUMNS),
        "|---" * len(_TRIAL_COLUMNS) + "|",
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
                "yes" if r.get("augment") else "no",
                status,
                f"{r['params']:,}",
                *(_num(r[k]) for k in ("macs", "flash", "arena")),
                "" if r["epochs"] is None else r["epochs"],
                *(_pct(x) for x in (val, r.get("cv_accuracy"), r.get("test_accuracy"))),
            )
        )
    return lines


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
