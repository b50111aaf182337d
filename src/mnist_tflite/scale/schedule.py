"""Early stopping that knows the budget: one ASHA per budget cell.

Plain ASHA compares every trial with every other at the same epoch, and at epoch 15 a
15 KB model is ahead of an 8 KB one that would end as the best model under 8 KB: the small
ones get stopped for learning slower, and the front's small end stays empty. Here a trial
is compared only with the trials of its cell of the budget grid (flash 4, 8, 16 KB...;
arena 2, 4, 8 KB... when there is a RAM budget), the cells that ``tune`` picks its
best-per-budget models from. A trial's cell is known from its first report (the pre-training
measurement of flash and arena).

A cell holds few trials, and ASHA's rule (keep the better half of a rung) applied to one
earlier result means "beat the first trial to get there": in the first 30-trial search the
16 KB cell stopped its two best models (98.6 % test when trained to the end) at epochs 15 and
30 for trailing an 8 KB model mid-schedule. So a rung stops nothing until it holds
:data:`MIN_PEERS` earlier results.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

MIN_PEERS = 2  # earlier results a rung of a cell needs before it stops a trial


def cell(flash: int | None, arena: int | None, with_ram: bool) -> tuple[int, int]:
    """(log2 of the flash budget rung, log2 of the arena rung) a model falls in."""

    def rung(n: int | None, floor: int) -> int:
        return max(floor, math.ceil(math.log2(max(1, n or 1))))

    return rung(flash, 12), rung(arena, 11) if with_ram else 0


class BudgetASHA(FIFOScheduler):
    """ASHA (Ray Tune's ``ASHAScheduler``), separately within each budget cell."""

    def __init__(self, *, with_ram: bool, **asha: Any) -> None:
        super().__init__()
        self.with_ram = with_ram
        self.asha = asha  # time_attr, metric, mode, max_t, grace_period, reduction_factor
        self.cells: dict[tuple[int, int], ASHAScheduler] = {}
        self.cell_of: dict[str, tuple[int, int]] = {}
        self.stopped = 0
        # (cell, rung) -> trials that reached that rung; trial -> rungs it has passed
        self.at_rung: dict[tuple[tuple[int, int], int], int] = {}
        self.passed: dict[str, set[int]] = {}

    def rungs(self) -> list[int]:
        """The epochs at which ASHA compares trials: grace, grace x rf, ... below max_t."""
        grace, rf, max_t = (self.asha.get(k) for k in ("grace_period", "reduction_factor", "max_t"))
        out, t = [], grace
        while t < max_t:
            out.append(int(t))
            t *= rf
        return out

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        key = self.cell_of.get(trial.trial_id)
        if key is None:
            key = cell(result.get("flash"), result.get("arena"), self.with_ram)
            if key not in self.cells:
                self.cells[key] = ASHAScheduler(**self.asha)
            self.cells[key].on_trial_add(tune_controller, trial)
            self.cell_of[trial.trial_id] = key
        action = self.cells[key].on_trial_result(tune_controller, trial, result)
        epoch = result.get(self.asha.get("time_attr", "epoch"), 0)
        peers = self._peers(key, trial.trial_id, epoch)
        if action == TrialScheduler.STOP and epoch < self.asha.get("max_t", 0):
            if peers is not None and peers < MIN_PEERS:
                return TrialScheduler.CONTINUE
            self.stopped += 1
        return action

    def _peers(self, key: tuple[int, int], trial_id: str, epoch: int) -> int | None:
        """How many trials of the cell reached the rung that ``epoch`` reaches before this one
        (None: the epoch reaches no new rung)."""
        passed = self.passed.setdefault(trial_id, set())
        reached = [r for r in self.rungs() if r <= epoch and r not in passed]
        if not reached:
            return None
        rung = max(reached)
        passed.update(reached)
        peers = self.at_rung.get((key, rung), 0)
        self.at_rung[(key, rung)] = peers + 1
        return peers

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        key = self.cell_of.pop(trial.trial_id, None)
        if key is not None:
            self.cells[key].on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        key = self.cell_of.pop(trial.trial_id, None)
        if key is not None:
            self.cells[key].on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        cells = ", ".join(
            f"{1 << f >> 10} KB/{(1 << a >> 10) if a else 'any'}" for f, a in sorted(self.cells)
        )
        return f"ASHA per budget cell ({cells}): {self.stopped} trials stopped early"
