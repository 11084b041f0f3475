"""An attempt's end, on the supervisor's side: the evidence `failures.classify_failure` reads,
gathered for one ended copy of a cell (our kill's reason, the scheduler's account, the exit record,
the stderr tails, the cell's own closing record), and the supervisor's writes to the cell's attempts
in state.json: a stall noted before the kill, the cause of an attempt that ended, a submission that
started nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.sweep.backends import Backend, Tracked
from safedreamer_sweep.sweep.exit_records import read_exit_record

__all__ = ["close_attempt", "close_unstarted", "ended_evidence", "note_stall"]

_INTERRUPTED = ("timeout", "preempted", "stalled")  # causes whose attempt was interrupted, not failed


def ended_evidence(backend: Backend, submitit_root: Path, t: Tracked, sub: Any, last: dict[str, Any]) -> dict[str, Any]:
    """Everything `classify_failure` reads about the end of `sub` (a copy of cell `t`, None when none
    was submitted), whose newest attempt record is `last`; `submitit_root` is where a reattached job's
    submitit logs are found."""
    ev: dict[str, Any] = dict(t.stall or {})
    ev.update(backend.end_evidence(sub, last))
    if sub is not None and getattr(sub, "job", None) is not None and getattr(sub.job, "_process", None) is not None:
        rec = read_exit_record(sub.job.paths.folder, str(sub.job_id))  # local: how the cell process ended
        if rec:
            ev["exit_record"] = rec
    steps = ev.pop("sacct_steps", None)
    stderr = ""
    if sub is not None:
        try:
            stderr = Path(sub.job.paths.stderr).read_text(errors="replace")[-4000:]
        except (OSError, AttributeError):  # reattached (no submitit Job object): find its file
            from safedreamer_sweep.sweep.submit import submitit_stderr

            stderr = submitit_stderr(submitit_root, sub.job_id)
        stderr = backend.own_stderr(sub, stderr, ev)
    if last.get("n"):
        err = t.rd.attempt_log_paths(int(last["n"]))[1]
        if err.exists():
            stderr += "\n" + err.read_text(errors="replace")[-3000:]
    if steps:
        stderr += f"\n[sacct steps] {steps}"
    ev["stderr_tail"] = stderr
    if last.get("outcome") in ("failed", "interrupted"):
        ev.update(cell_cause=last.get("cause"), cell_evidence=last.get("evidence"),
                  traceback_tail=last.get("traceback_tail"))
    return ev


def note_stall(rd: RunDir, evidence: str) -> None:
    """Write the stall into the running attempt before killing it: the evidence survives even if
    the kill is slow and the process wakes up and finishes (scancel SIGCONTs it first)."""

    def change(s: dict) -> None:
        a = s.get("attempts") or []
        if a and a[-1].get("outcome") in ("running", "submitted"):
            a[-1].update(cause="stalled", evidence=evidence, stall_detected_at=time.time())

    rd.update_state(change)


def close_attempt(rd: RunDir, last: dict[str, Any], cause: str, evidence: str, node: str | None) -> dict:
    """Record the supervisor's cause on the attempt that ended (the cell's own cause is kept as
    `cell_cause` when they differ). Returns the new state."""

    def change(s: dict) -> None:
        a = s.get("attempts") or []
        target = next((x for x in reversed(a) if x is last or x.get("n") == last.get("n")), None) if last else None
        if target is None:
            a.append({"n": len(a) + 1})
            target = a[-1]
        if target.get("outcome") in (None, "running", "submitted"):
            target.update(outcome="interrupted" if cause in _INTERRUPTED else "failed", ended_at=time.time())
        if target.get("cause") != cause:
            if target.get("cause"):
                target["cell_cause"] = target.get("cause")
            target.update(cause=cause, evidence=evidence)
        target["classified_by"] = "supervisor"
        if node and not target.get("node"):
            target["node"] = node

    return rd.update_state(change)


def close_unstarted(rd: RunDir, cause: str, evidence: str | None) -> None:
    """A cell whose submission started nothing: its pre-registered attempt (or a new one) failed with
    `cause`, and the cell with it."""

    def change(s: dict) -> None:
        a = s.setdefault("attempts", [])
        if a and a[-1].get("outcome") == "submitted":
            a[-1].update(outcome="failed", cause=cause, evidence=evidence, ended_at=time.time())
        else:
            a.append({"n": len(a) + 1, "outcome": "failed", "cause": cause, "evidence": evidence,
                      "ended_at": time.time(), "classified_by": "supervisor"})
        s["phase"] = "failed"

    rd.update_state(change)


def mark_pruned(rd: RunDir, note: dict[str, Any]) -> dict:
    """A study's pruner stopped the cell: its newest attempt (if it started one) ends with outcome
    `pruned` and no cause, the phase is `pruned`, the checkpoints stay. Returns the new state."""

    def change(s: dict) -> None:
        a = s.get("attempts") or []
        if a and a[-1].get("outcome") in (None, "running", "submitted", "interrupted", "failed") \
                and not a[-1].get("pruned_at"):
            last = a[-1]
            if last.get("outcome") not in (None, "running", "submitted"):
                last["cell_outcome"] = last.get("outcome")  # what the killed process itself wrote
            last.update(outcome="pruned", ended_at=last.get("ended_at") or time.time(), classified_by="supervisor")
            for k in ("cause", "evidence"):
                if k in last:
                    last[f"cell_{k}"] = last.pop(k)
            last.update({k: v for k, v in note.items() if k in ("pruned_at", "pruned_by")})
        s["phase"] = "pruned"
        s["pruned"] = {k: v for k, v in note.items() if k in ("pruned_at", "pruned_by")}

    return rd.update_state(change)
