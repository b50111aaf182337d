"""``tune``'s progress lines: a Ray Tune callback, one line per finished trial.

Each line says how many trials are done, the best so far and the time left. Ray pickles
the callback with the experiment state and restores it on ``--resume``, so it keeps no
function: lines go to :data:`SINK`, which the driver sets before every ``fit``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

from mnist_tflite.core.errors import last_line

SINK: dict[str, Any] = {"log": None}
FINISHED = ("TERMINATED", "ERROR")


def describe(m: dict[str, Any]) -> str:
    """``tiny: C8k5/2-P C16k3 flatten (9,024 B flash, 4,624 B arena)``."""
    name = f"{m['point']}: " if m.get("point") else ""
    figures = ""
    if m.get("flash"):
        figures = f"{m['flash']:,} B flash" + (f", {m['arena']:,} B arena" if m.get("arena") else "")
    return f"{name}{m.get('arch', '?')}" + (f" ({figures})" if figures else "")


class Progress(Callback):
    def __init__(self, total: int, max_epochs: int) -> None:
        self.total, self.max_epochs = total, max_epochs
        self.setup()

    def setup(self, **info: Any) -> None:  # called by Tune at the start of every fit
        self.t0 = time.monotonic()
        self.done = self.done_here = 0
        self.counted = False
        self.best: dict[str, Any] | None = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.counted:  # a resumed search: the trials that had finished before
            self.counted = True
            self.done = sum(t.status in FINISHED for t in trials)
            for t in trials:
                if t.status == "TERMINATED":
                    self._consider(t.last_result or {})

    def _consider(self, m: dict[str, Any]) -> None:
        if m.get("status") == "ok" and (self.best is None or m["score"] > self.best["score"]):
            self.best = dict(m)

    def _log(self, text: str) -> None:
        log = SINK.get("log") or (lambda m: print(m, file=sys.stderr, flush=True))
        log(text)

    def _line(self, text: str) -> None:
        self.done += 1
        self.done_here += 1
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done_here * max(0, self.total - self.done)
        best = "none yet"
        if self.best:
            best = f"{100 * self.best['val_accuracy']:.2f} % val, {describe(self.best)}"
        self._log(
            f"[{self.done:>3}/{self.total}] {text}\n"
            f"          best so far: {best}; {elapsed / 60:.1f} min elapsed, ~{left / 60:.1f} min left"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        m = trial.last_result or {}
        status = m.get("status")
        if status == "ok":
            self._consider(m)
            text = f"{100 * m['val_accuracy']:.2f} % val  {describe(m)}"
        elif status == "infeasible":
            text = f"infeasible: {m.get('reason')}  {describe(m)}"
        else:
            val = m.get("keras_val_accuracy")
            at = f" ({100 * val:.1f} % val)" if val is not None else ""
            text = f"stopped early at epoch {m.get('epoch', 0)}/{self.max_epochs}{at}  {describe(m)}"
        self._line(text)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"FAILED: {last_line(_error_text(trial))}")


def _error_text(trial: Any) -> str:
    from pathlib import Path

    for attr in ("error_msg",):
        text = getattr(trial, attr, None)
        if text:
            return str(text)
    path = getattr(trial, "error_file", None) or getattr(
        getattr(trial, "run_metadata", None), "error_filename", None
    )
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        return ""
