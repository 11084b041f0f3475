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
from safedreamer_sweep.sweep.failures import PRUNED
from safedreamer_sweep.sweep.observe import pruned_by_of, pruned_text

__all__ = ["close_attempt", "close_pruned", "close_unstarted", "ended_evidence", "note_stall"]

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
    if last.get("outcome") == PRUNED:  # its pruner's kill: not a failure (classify_failure answers pruned)
        ev["pruned"] = pruned_text(pruned_by_of(last.get("pruned_by")), last.get("pruned_at"))
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
        if cause == PRUNED or target.get("outcome") == PRUNED:  # its pruner stopped it: outcome pruned, no cause
            target["classified_by"] = "supervisor"
            return
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


def close_pruned(rd: RunDir, *, study: str, trial: int, env_step: int | None, **fields: Any) -> dict:
    """Close the newest attempt of a cell its study's pruner stopped, in one write: outcome `pruned`,
    cause null, `pruned_at` (env step) and `pruned_by` ({"study", "trial"}), and the cell's phase
    `pruned` (its checkpoints are kept). The cell may have closed it first on the kill's signal
    (interrupted, failed): its account is kept as `cell_outcome` / `cell_cause`. A cell that finished
    (`done`) before the kill is left done. Returns the new state."""

    def change(s: dict) -> None:
        a = s.setdefault("attempts", [])
        if a and (a[-1].get("outcome") == "done" or s.get("phase") == "done"):
            return  # it finished first: nothing to prune
        if not a:
            a.append({"n": 1})
        last = a[-1]
        if last.get("outcome") not in (None, "running", "submitted", PRUNED):
            last.update(cell_outcome=last.get("outcome"), cell_cause=last.get("cause"), cell_evidence=last.get("evidence"))
        last.update(outcome=PRUNED, cause=None, evidence=None, ended_at=last.get("ended_at") or time.time(),
                    pruned_at=env_step, pruned_by={"study": study, "trial": int(trial)}, **fields)
        s["phase"] = PRUNED

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
    """close_pruned from the supervisor's note ({"pruned_at", "pruned_by": {"study", "trial"}})."""
    by = note.get("pruned_by") or {}
    return close_pruned(rd, study=str(by.get("study")), trial=int(by.get("trial", -1)), env_step=note.get("pruned_at"))
