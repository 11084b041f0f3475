"""Supervision: start queued cells as room frees up, poll scheduler state and heartbeats until every
cell is terminal, classify each ended attempt with its evidence, and apply the retry policy per cause.

Local and Slurm share this one loop; what differs (submitting, reading job state, killing) sits
behind `backends.Backend`; what an ended attempt's evidence is and how its record is closed sits in
sweep/attempt_end.py. Each poll hands every tracked cell to `on_tick` (the live progress view).

The loop never dies of its own I/O: every stage of a poll, and every cell within a stage, runs
guarded (`_guarded`): an exception (a lock a frozen cell holds, a full disk, a vanished file, a
scheduler command that fails) is logged with its cause and the stage is tried again next poll. It
never waits long on a lock a cell can hold: its run dirs write with bounded lock waits
(RunDir.supervised), and lease renewal takes only the lease lock, which cells never take.

A cell another sweep holds is watched; when that sweep is gone (its launcher pid dead here, its
lease expired elsewhere) this one takes the cell over: it kills an orphan that stalled, claims a
new lease generation, classifies the attempt the dead owner left open and retries it by policy.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import read_json
from safedreamer_sweep.core.locks import LockBusy
from safedreamer_sweep.core.run_dir import LeaseLost
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.attempt_end import close_attempt, close_unstarted, ended_evidence, mark_pruned, note_stall
from safedreamer_sweep.sweep.backends import Backend, RecordedJob, Refused, Tracked
from safedreamer_sweep.sweep.claim import (
    add_jobs,
    holder_alive,
    owner_gone,
    race_winner,
    release,
    still_held,
    try_lease,
)
from safedreamer_sweep.sweep.failures import RetryPolicy, classify_failure
from safedreamer_sweep.sweep.observe import CellView, observe_run

__all__ = ["Supervisor", "Tracked"]

_Log = Callable[[str], None]


class Supervisor:
    """The loop: `run()` returns every tracked cell once each is terminal ("done", "failed" or
    "pruned"); a study drives `poll()` itself, adding cells and pruning between polls."""

    def __init__(self, *, store: Store, backend: Backend, sweep_id: str, policy: RetryPolicy,
                 stall_after: float, poll_s: float, exclude: list[str] | None = None, log: _Log = print,
                 on_tick: Callable[[list[Tracked]], None] | None = None, lease_s: float | None = None) -> None:
        self.store, self.backend, self.sweep_id, self.policy = store, backend, sweep_id, policy
        self.stall_after, self.poll_s, self.exclude, self.log = stall_after, poll_s, list(exclude or []), log
        self.on_tick, self.lease_s = on_tick, lease_s
        self._said: dict[str, tuple[str, float]] = {}  # what each guarded stage last logged, and when
        self.queue: list[Tracked] = []
        self.active: list[Tracked] = []
        self.finished: list[Tracked] = []
        self._wake_at = float("inf")  # the next instant a live cell could cross stall_after

    @property
    def tracked(self) -> list[Tracked]:
        return self.active + self.queue + self.finished

    def add(self, t: Tracked) -> None:
        """Track one more cell, before or while the loop runs (a study adds its trials' cells as it asks them)."""
        t.rd = t.rd.supervised()  # every write of ours waits boundedly for a lock a cell could hold
        (self.active if t.watch_only or t.subs else self.queue).append(t)

    def run(self) -> list[Tracked]:
        """Poll until every tracked cell is terminal. Returns them all."""
        while self.queue or self.active:
            self.poll()
        return self.finished

    def poll(self) -> None:
        """One poll: renew leases, start what has room, check every live cell, then sleep one poll
        (less when a live cell would cross stall_after sooner; the backend wakes early when a cell
        ends, locally when its process exits)."""
        self._guarded("renewing leases", self._renew_leases)
        self._guarded("submitting cells", self.submit_ready)
        self._guarded("reading the scheduler's job states", self.backend.refresh, self.active)
        for t in list(self.active):
            self._guarded(t.label, self._check_cell, t)
        self._guarded("submitting cells", self.submit_ready)  # a slot freed just now is refilled now
        if self.on_tick:
            self._guarded("drawing the progress view", self.on_tick, self.tracked)
        if self.queue or self.active:
            timeout = max(0.05, min(self.poll_s, self._wake_at - time.time()))
            if not self._guarded("waiting for cells", self.backend.wait, self.active, timeout):
                time.sleep(timeout)
            self._wake_at = float("inf")

    def prune(self, t: Tracked, note: dict[str, Any]) -> None:
        """Stop a cell a study's pruner judged (its process locally, scancel on Slurm), checkpoints
        kept. `note` ({"pruned_at": env step, "pruned_by": {...}}) is recorded when its attempt is
        closed, as outcome and phase `pruned`: never a failure, never retried."""
        if t.result is not None or t.watch_only:
            return
        t.pruned = note
        if t in self.queue:  # never started: nothing to stop
            self.queue.remove(t)
            self._guarded(t.label, self._close_pruned, t)
            return
        view = t.view or observe_run(t.rd, stall_after=self.stall_after, job_state=self.backend.state_lookup())
        self.log(f"[sds] {t.label}: pruned at env step {note.get('pruned_at')} ({note.get('why', 'by the study')}); stopping it")
        self.backend.kill(t, view)

    def _close_pruned(self, t: Tracked) -> None:
        """Record the pruner's end of the cell (its slot, if it held one, is already released)."""
        mark_pruned(t.rd, t.pruned or {})
        self._close(t, "pruned", reason=f"pruned at env step {(t.pruned or {}).get('pruned_at')}")

    def _guarded(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run one stage of a poll; any exception is logged with its cause (once a minute while it
        repeats) and the stage is tried again next poll. False when it failed."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (the supervisor must outlive its own I/O)
            if isinstance(e, (LockBusy, OSError)):
                cause, fix = str(e), "free space or permissions on the store" if isinstance(e, OSError) else "none needed"
            else:
                frame = traceback.extract_tb(e.__traceback__)[-1]
                cause = f"{type(e).__name__}: {e} (at {Path(frame.filename).name}:{frame.lineno})"
                fix = "none needed if it passes; else report it with this line"
            msg = f"[sds] {what}: {cause}; retrying in {self.poll_s:.0f}s (fix: {fix})"
            last, at = self._said.get(what, ("", 0.0))
            if msg != last or time.time() - at > 60:
                self.log(msg)
                self._said[what] = (msg, time.time())
            return False
        self._said.pop(what, None)
        return True

    def _check_cell(self, t: Tracked) -> None:
        try:
            self._check(t)
        except LeaseLost as e:
            self._lost_lease(t, str(e))

    # --- leases (sweep/claim.py): renewed every poll; a cell whose lease was taken over is only watched
    def _renew_leases(self) -> None:
        for t in [*self.queue, *self.active]:
            if not t.watch_only and t.rd.generation is not None:
                self._guarded(f"{t.label}: renewing its lease", self._renew, t)

    def _renew(self, t: Tracked) -> None:
        if not t.rd.renew_lease():  # the lease lock only: no cell ever holds it
            self._lost_lease(t, still_held(t.rd, self.sweep_id, t.rd.generation)[1])

    def _lost_lease(self, t: Tracked, why: str) -> None:
        """Another sweep took the cell over: stop acting on it (its writes, and those of any process
        of ours still running it, are fenced off) and watch it until it is terminal."""
        self.log(f"[sds] {t.label}: {why}; no longer running it here, watching it")
        if t in self.queue:
            self.queue.remove(t)
        if t not in self.active:
            self.active.append(t)
        t.watch_only = True

    # --- starting cells
    def submit_ready(self) -> None:
        """Hand the backend every queued cell it has room for, in order (each re-checked to hold
        its lease: a cell queued here may have been taken over while it waited). A cell is always
        in exactly one of queue, active or finished, whatever fails on the way."""
        batch: list[Tracked] = []
        try:
            while self.queue and self.backend.has_room(len(self.active), len(batch)):
                t = self.queue[0]
                held, why = (True, "") if t.rd.generation is None else still_held(t.rd, self.sweep_id, t.rd.generation)
                self.queue.pop(0)
                if held:
                    batch.append(t)
                else:
                    self._lost_lease(t, why)
        finally:
            if batch:
                self._submit(batch)

    def _submit(self, batch: list[Tracked]) -> None:
        try:
            results = self.backend.submit(batch, list(self.exclude))
        except Exception:
            self.queue[:0] = batch  # nothing of it is known to have started: try again next poll
            raise
        for t, outcome in results:
            if isinstance(outcome, Refused) or not outcome:
                cause = (outcome.cause if isinstance(outcome, Refused) else None) or t.pending_cause
                evidence = outcome.evidence if isinstance(outcome, Refused) else \
                    "resubmission started no job (see the sweep's plan output)"  # never loop on it
                closed = self._guarded(t.label, self._close, t, "failed", cause=cause or (
                    "error" if isinstance(outcome, Refused) else "lost"), evidence=evidence)
                if not closed and t not in self.finished:
                    self.queue.append(t)  # its failure could not be recorded: it is tried again
                continue
            t.subs = outcome
            self.active.append(t)  # tracked before anything else can fail: its job runs now
            self._guarded(f"{t.label}: recording its jobs in claim.json", add_jobs, t.rd, self.sweep_id,
                          [s.job_id for s in t.subs])
            partitions = ",".join(s.partition for s in t.subs if getattr(s, "partition", None))
            self.log(f"[sds] submitted {t.label}: job {', '.join(s.job_id for s in t.subs)}"
                     + (f" partition {partitions}" if partitions else "")
                     + (f" mem {t.mem_gb} GB" if t.mem_gb else "")
                     + (f" exclude {','.join(self.exclude)}" if self.exclude else ""))

    # --- one poll of one live cell
    def _check(self, t: Tracked) -> None:
        lookup = self.backend.state_lookup()
        view = t.view = observe_run(t.rd, stall_after=self.stall_after, job_state=lookup)
        if t.watch_only:
            self._check_elsewhere(t, view)
            return
        alive = [s for s in t.subs if self.backend.alive(t, s)]
        if len(t.subs) > 1 and alive:
            alive = self._settle_race(t, alive)
        if not alive:
            self._ended(t, view)
            return
        over = self.backend.over_memory(t, view)
        if over and t.stall is None:
            # Slurm enforces mem_gb itself; locally the supervisor does, by polling (like Slurm's
            # OverMemoryKill), so an OOM retry with mem_gb x mem_factor works there too.
            t.stall = {"oom_evidence": over}
            self.log(f"[sds] {t.label}: {over}; killing it")
            self.backend.kill(t, view)
            return
        if view.phase == "running" and view.progress_age_s is not None:
            self._wake_at = min(self._wake_at, time.time() + self.stall_after - view.progress_age_s + 0.05)
        if view.phase == "stalled" and t.stall is None:
            t.stall = self._stall_evidence(view)
            self.log(f"[sds] {t.label}: stalled (env_step {view.env_step} unchanged for "
                     f"{view.progress_age_s:.0f}s); killing it to resume from the checkpoint")
            self._stop_stalled(t, view)

    def _stall_evidence(self, view: CellView) -> dict[str, Any]:
        """What a stall is classified by: how long env_step has not moved, and what was alive."""
        return {"stalled": True, "progress_age_s": view.progress_age_s, "stall_after": self.stall_after,
                "env_step": view.env_step, "alive_what": f"pid {view.pid}" if view.pid else f"job {view.job_id}"}

    def _stop_stalled(self, t: Tracked, view: CellView) -> None:
        """Record the stall in the running attempt, then kill. A cell frozen inside one of its own
        writes holds the data lock: then kill first (the kernel drops its lock with it) and the
        stall is recorded when the attempt is closed (t.stall is the evidence)."""
        try:
            note_stall(t.rd, classify_failure(t.stall or {})[1])
        except LockBusy as e:
            self.log(f"[sds] {t.label}: cannot record the stall before the kill ({e}); killing it first, "
                     f"the attempt is closed as stalled once it is gone")
        self.backend.kill(t, view)

    def _check_elsewhere(self, t: Tracked, view: CellView) -> None:
        """Another sweep holds the cell: wait while its claim is alive (it may still be queued
        there), finish when the cell is terminal, and take it over once its holder is gone."""
        claim = read_json(t.rd.claim_path) or {}
        holder, why = holder_alive(claim, t.rd, stall_after=self.stall_after, job_state=self.backend.state_lookup(),
                                   lease_s=self.lease_s)
        if view.phase in ("done", "failed", "pruned"):
            self.active.remove(t)
            t.result = view.phase
            t.reason = f"ran elsewhere: {view.phase}" + (f" ({view.cause}: {view.evidence})" if view.cause else "")
            self.finished.append(t)
        elif not holder:
            self._take_over(t, view, claim, why)
        elif view.phase == "stalled" and t.stall is None:
            gone, owner = owner_gone(claim, t.rd, lease_s=self.lease_s)
            if gone:  # an orphan that stopped moving: its own sweep would have killed it; nobody else will
                t.stall = self._stall_evidence(view)
                self.log(f"[sds] {t.label}: stalled (env_step {view.env_step} unchanged for {view.progress_age_s:.0f}s) "
                         f"and its sweep is gone ({owner}); killing it to take it over and resume it")
                t.subs = [RecordedJob(key=t.key, job_id=str(j), backend=str(claim.get("backend")))
                          for j in claim.get("job_ids") or []]
                self._stop_stalled(t, view)
                t.subs = []

    def _take_over(self, t: Tracked, view: CellView, claim: dict, why: str) -> None:
        """The holder is gone: claim a new lease generation (its processes' writes are fenced off),
        close the attempt it left open with its cause, and retry it here by policy."""
        lease = try_lease(t.rd, self.sweep_id, backend=self.backend.name, stall_after=self.stall_after,
                          job_state=self.backend.state_lookup(), lease_s=self.lease_s)
        if not lease.ok:
            return  # another sweep was quicker, or it came back: keep watching
        t.rd = t.rd.fenced(lease.generation)
        if getattr(t.payload, "run_dir", None) is not None:
            t.payload.run_dir = t.payload.run_dir.fenced(lease.generation)  # its cell writes with the new lease
        t.watch_only = False
        self.log(f"[sds] {t.label}: took it over from sweep {claim.get('sweep_id')} ({why}); resuming it here")
        attempts = t.rd.read_state().get("attempts") or []
        if attempts and attempts[-1].get("outcome") in ("running", "submitted"):
            self._ended(t, view)  # classified (lost, stalled ...) and retried by policy, as if it were ours
        else:
            self.active.remove(t)
            t.pending_cause = "lost"
            self.queue.append(t)

    def _settle_race(self, t: Tracked, alive: list[Any]) -> list[Any]:
        """Racing copies: keep the first that started, cancel the rest."""
        winner = race_winner(t.rd)
        if not winner:
            return alive
        for s in t.subs:
            if s.job_id != str(winner):
                self.backend.cancel(s)
                self.log(f"[sds] {t.label}: job {winner} started first; cancelled racing copy {s.job_id} ({s.partition})")
        t.subs = [s for s in t.subs if s.job_id == str(winner)]
        return [s for s in alive if s.job_id == str(winner)]

    # --- an attempt ended
    def _ended(self, t: Tracked, view: CellView) -> None:
        state = t.rd.read_state()
        sub = t.subs[-1] if t.subs else None
        self.backend.release(t, sub)
        if view.phase == "done" or state.get("phase") == "done":
            self._close(t, "done")
            return
        if t.pruned is not None:  # we stopped it: its end is the pruner's, not a failure
            self._close_pruned(t)
            return
        if view.phase == "pruned":  # a study's pruner stopped it (another invocation of the study)
            self._close(t, "pruned", reason=view.detail or "pruned")
            return
        attempts = state.get("attempts") or []
        last = attempts[-1] if attempts else {}
        if sub is not None and sub.job_id and str(last.get("job_id", sub.job_id)) != str(sub.job_id):
            last = next((a for a in reversed(attempts) if str(a.get("job_id")) == str(sub.job_id)), last)
        ev = ended_evidence(self.backend, self.store.root / "launcher" / "submitit", t, sub, last)
        cause, evidence = classify_failure(ev)
        node = ev.get("node")
        state = close_attempt(t.rd, last, cause, evidence, node)
        t.failure = (time.time(), cause, evidence)
        act = self.policy.decide(cause, state.get("attempts") or [], mem_gb=t.mem_gb, node=node, exclude=self.exclude)
        self.log(f"[sds] {t.label}: attempt ended, cause {cause}: {evidence[:300]} -> {act.kind}: {act.reason}")
        if act.kind == "retry":
            if act.mem_gb:
                t.mem_gb = act.mem_gb
            if act.exclude and act.exclude != self.exclude:
                self.exclude = act.exclude
                # the jobs already waiting in the queue must not land on the bad node either
                moved = self.backend.exclude_nodes([x for x in self.active if x is not t], self.exclude)
                self.log(f"[sds] node(s) {','.join(self.exclude)} excluded for the rest of the sweep"
                         + (f"; pending job(s) {', '.join(moved)} updated to avoid them" if moved else ""))
            t.subs, t.stall, t.first_seen_unknown = [], None, {}
            t.pending_cause = cause
            self.queue.append(t)
            self.active.remove(t)
            return
        tail = (last.get("traceback_tail") or "").strip().splitlines()[-6:]
        if tail:
            self.log(f"[sds] {t.label}: traceback tail:\n    " + "\n    ".join(tail))
        t.rd.set_phase("failed")
        self._close(t, "failed", reason=f"{cause}: {evidence}")

    def _close(self, t: Tracked, result: str, *, reason: str = "", cause: str | None = None,
               evidence: str | None = None) -> None:
        if cause:
            close_unstarted(t.rd, cause, evidence)
            reason = reason or f"{cause}: {evidence}"
            t.failure = (time.time(), cause, str(evidence))
        t.result, t.reason = result, reason or t.reason
        if t in self.active:
            self.active.remove(t)
        self.finished.append(t)
        release(t.rd, self.sweep_id, result)
