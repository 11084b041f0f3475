"""Where cells run: one small interface (`Backend`: submit, job state, kill, here with the records it
passes around), one implementation per backend. The supervisor only talks to this interface, so
adding a backend touches no supervisor code.

    local.py        the local backend: GPU slots, a cell's pid is its job id, the RSS guard
    warm_pool.py    the local slots' warm workers, the launcher's side: the pool, a cell's process
    warm_worker.py  a warm worker, the process: preloads, forks one child per cell, its exit record
    slurm.py        the Slurm backend: job arrays, squeue/sacct, scancel
    slurm_pack.py   packing on Slurm: k cells in one job, each cell a job step with its exit record
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.sweep.observe import CellView, JobState

__all__ = ["Backend", "RecordedJob", "Refused", "Started", "Tracked",
           "local", "slurm", "slurm_pack", "warm_pool", "warm_worker"]


@dataclass
class Tracked:
    """One cell under supervision: its run dir, the live copies submitted for it, and how it ended."""

    key: str
    rd: RunDir
    label: str
    payload: Any = None                 # what the backend needs to submit it (the planned cell)
    subs: list[Any] = field(default_factory=list)   # live Submission copies
    mem_gb: float | None = None
    slot_gpu: str | None = None
    watch_only: bool = False            # another sweep runs it: observe until terminal
    result: str | None = None           # "done" | "failed" | "pruned" once terminal
    stall: dict | None = None           # evidence when we killed it (stalled, over memory)
    first_seen_unknown: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    pending_cause: str | None = None    # why it is queued again (a retry keeps its cause)
    view: CellView | None = None        # the newest observation (progress, ETA)
    failure: tuple[float, str, str] | None = None  # (when, cause, evidence) of its newest failed attempt
    pruned: dict | None = None          # a study's pruner stopped it: {"pruned_at": env step, "pruned_by": ...}


@dataclass
class RecordedJob:
    """A job known by its id only (recorded in a manifest or a claim; no submitit Job object)."""

    key: str
    job_id: str
    backend: str
    partition: str | None = None
    job: Any = None
    slot: int | None = None


@dataclass
class Refused:
    """A cell the backend could not start. `cause` None: the cell's pending cause (a retry keeps
    the cause that sent it back), else `error`."""

    evidence: str
    cause: str | None = None


Started = list[Any]  # the Submission copies of one cell (several when racing partitions)


class Backend:
    """What differs between running cells locally and on a scheduler. Defaults suit a scheduler
    that queues everything it is given and whose state is read per job id."""

    name = "abstract"

    def has_room(self, active: int, picked: int) -> bool:
        """May one more cell start now (`active` cells supervised, `picked` already picked this round)?"""
        return True

    def submit(self, cells: list[Tracked], exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        """Start each cell (with its `mem_gb`, avoiding `exclude`d nodes); one outcome per cell."""
        raise NotImplementedError

    def refresh(self, active: list[Tracked]) -> None:
        """Read the scheduler's state of the active cells' jobs once per poll."""

    def state_lookup(self) -> JobState | None:
        """`job_id -> scheduler state` for observe/claim, or None where liveness is a pid."""
        return None

    def alive(self, t: Tracked, sub: Any) -> bool:
        """Whether this submitted copy still holds (or will hold) resources."""
        raise NotImplementedError

    def kill(self, t: Tracked, view: Any) -> None:
        """Stop the cell at once (a hung or over-memory cell): no grace period."""
        raise NotImplementedError

    def cancel(self, sub: Any) -> None:
        """Cancel one copy of a cell politely (a racing copy that did not start first)."""
        raise NotImplementedError

    def over_memory(self, t: Tracked, view: Any) -> str | None:
        """Evidence text when the backend itself must enforce `mem_gb` and the cell exceeds it."""
        return None

    def end_evidence(self, sub: Any, last: dict[str, Any]) -> dict[str, Any]:
        """What the scheduler knows about an ended copy (state, node, exit code, signal, job steps),
        keyed as `classify_failure` reads it; `last` is the cell's newest attempt record."""
        return {"slurm_state": None, "node": last.get("node") or last.get("host")}

    def exclude_nodes(self, active: list[Tracked], nodes: list[str]) -> list[str]:
        """Keep the active cells' jobs that have not started yet off `nodes`; returns the job ids
        changed (a backend without nodes changes none)."""
        return []

    def own_stderr(self, sub: Any, stderr: str, evidence: dict[str, Any]) -> str:
        """The part of the job's scheduler stderr that is this copy's (all of it, unless several
        cells share the job); `evidence` is what end_evidence returned."""
        return stderr

    def release(self, t: Tracked, sub: Any) -> None:
        """The cell ended: give back whatever it held (a local slot)."""

    def wait(self, active: list[Tracked], timeout: float) -> None:
        """Sleep until the next look, at most `timeout` seconds. A backend that can tell when a cell
        ends returns as soon as one does, so its slot is refilled at once, not a poll later."""
        time.sleep(timeout)
