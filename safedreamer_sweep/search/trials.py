"""A trial of a study: one point of the search space evaluated on k seeds, each seed an ordinary cell
of the store. What a trial's cells say: whether they are all terminal, each seed's objective and cost
from its result, the seeds' curves at aligned env-step rungs (what the pruner judges), and the
device-hours they used. Reads run directories only; the driver (search/driver.py) tells Optuna."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.sweep.backends import Tracked
from safedreamer_sweep.sweep.launch import result_at
from safedreamer_sweep.sweep.plan import PlannedCell
from safedreamer_sweep.tasks.run import cell_result

# the built-in trainer's and an external task's evaluation summary: `<id|ood>.<key>` is a metric
EVAL_SUMMARY_KEYS = ("return_mean", "return_std", "cost_mean", "cost_std", "violation_rate", "length_mean", "episodes")


def pick(result: Any, path: str | None) -> float | None:
    """`id.return_mean` picked out of a cell's result (a dict, or for an app its return value); None
    when the result has no such value. `path` None: the result itself, which must be a number."""
    cur = result_at(result, path)
    try:
        v = float(cur)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class TrialCell:
    """One seed of a trial: its planned cell, and the supervisor's Tracked when this invocation runs
    or watches it (None: it was done or failed at plan time)."""

    seed: int | None
    cell: PlannedCell
    tracked: Tracked | None = None
    pruned: bool = False  # its run dir says this study's pruner stopped it (told before the launcher died?)

    @property
    def outcome(self) -> str | None:
        """done | failed | pruned once terminal, else None."""
        if self.pruned:
            return "pruned"
        if self.tracked is not None:
            return self.tracked.result
        return self.cell.verdict if self.cell.verdict in ("done", "failed") else None

    def result(self) -> Any:
        """The cell's result as the sweep hands it back: an app's stored return value, else the
        built-in's or an external task's evaluations (`{"id": summary, "ood": summary}`)."""
        rd = self.cell.run_dir
        return rd.read_result() if self.cell.spec.done_when == "return" else cell_result(self.cell.spec, rd)

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """(env step, value) of `metric` in the cell's metrics.jsonl (the built-in's log rows, an
        app's heartbeat metrics, an external task's mirrored rows), in step order."""
        points: dict[int, float] = {}
        for row in self.cell.run_dir.read_metrics():
            v = pick(row, metric)
            if v is not None and row.get("env_step") is not None:
                points[int(row["env_step"])] = v
        return sorted(points.items())

    def device_hours(self) -> float:
        """Wall time of every attempt that started (one device each), in hours."""
        try:
            attempts = self.cell.run_dir.read_state().get("attempts") or []
        except StoreError:
            return 0.0
        total = 0.0
        for a in attempts:
            if a.get("started_at") and a.get("ended_at"):
                total += max(0.0, float(a["ended_at"]) - float(a["started_at"]))
        return total / 3600.0


@dataclass
class TrialRun:
    """A trial this invocation asked or adopted, and what has been reported of it."""

    number: int
    trial_id: int
    params: dict[str, Any]
    cells: list[TrialCell]
    reported_step: int = -1
    told: str | None = None  # the Optuna state it was told
    test: bool = False       # a re-run of a best point on test seeds (not a trial of its own)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return all(c.outcome is not None for c in self.cells)

    def seed_values(self, objectives: Sequence[str | None]) -> list[list[float | None]]:
        """Per objective, each seed's value (None: the seed is not done or lacks it)."""
        out: list[list[float | None]] = [[] for _ in objectives]
        for c in self.cells:
            res: Any = None
            if c.outcome == "done":
                try:
                    res = c.result()
                except StoreError:
                    res = None
            for i, path in enumerate(objectives):
                out[i].append(None if res is None else pick(res, path))
        return out

    def curves(self, metric: str) -> list[list[tuple[int, float]]]:
        return [c.curve(metric) for c in self.cells]

    def device_hours(self) -> float:
        return sum(c.device_hours() for c in self.cells)

    def half_budget(self) -> int | None:
        """Half of the cells' budget in env steps, from their heartbeats' total (None: not known)."""
        totals = [(c.cell.run_dir.read_progress() or {}).get("total_steps") for c in self.cells]
        known = [int(t) for t in totals if t]
        return max(known) // 2 if known else None
