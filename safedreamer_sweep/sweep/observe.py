"""What a cell is doing right now, derived only from its run directory and the scheduler.

`observe_run` turns the store files of one run directory (state.json, progress.json, claim.json)
plus process liveness (psutil, same host only) and an optional scheduler job-state callback into a
`CellView`. Truth comes from files the cell writes and from the scheduler, never from a log line's
timestamp: "stalled" means env_step did not move for `stall_after` seconds while the process or job
is alive; "lost" means the process or job is gone and the attempt has no end marker; "pruned" means
its study's pruner stopped it (newest attempt closed with outcome `pruned`, or state.json phase
`pruned` and its process gone): stopped on purpose with its checkpoint kept, never failed nor stalled.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from safedreamer_sweep.core.files import StoreError, read_json
from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir, host
from safedreamer_sweep.core.store import Store

PHASES = ("pending", "running", "stalled", "done", "failed", "lost", "pruned")
# Scheduler states of a job that still holds (or will hold) resources.
SLURM_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
               "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "PREEMPTED_REQUEUE"}
_SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"}

JobState = Callable[[str], "str | None"]


@dataclass
class CellView:
    """One cell as `status` shows it. `phase` is one of PHASES; every other field is evidence."""

    config: str
    seed: int | None  # None: an app without a top-level seed
    hash: str | None
    run_dir: str | None
    phase: str
    env_step: int | None = None
    total_steps: int | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    progress_age_s: float | None = None
    host: str | None = None
    pid: int | None = None
    pid_alive: bool | None = None
    job_id: str | None = None
    job_state: str | None = None
    attempts: int = 0
    cause: str | None = None
    evidence: str | None = None
    trained: bool = False
    eval_id: dict | None = None
    eval_ood: dict | None = None
    state_phase: str | None = None
    detail: str | None = field(default=None)
    stale_eval: str | None = None  # an evaluation of a checkpoint older than the trained steps (stale_evaluations)
    done_when: str | None = None  # "eval" (this package's tasks: ID/OOD results), "return" (any app); None: unknown
    queue_reason: str | None = None  # a queued job's reason from the scheduler (Resources, QOSMaxGRESPerUser, ...)
    queued_since: float | None = None  # when the queued attempt was submitted (epoch seconds)
    pruned_at: int | None = None  # a pruned cell: the env step its study's pruner stopped it at
    pruned_by: dict | None = None  # a pruned cell: {"study": name, "trial": number} (pruned_by_of)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seed(spec: dict) -> int | None:
    """The spec's seed; None for an app without one (and -1 for a spec that lost it)."""
    if "seed" in spec and spec["seed"] is None:
        return None
    return int(spec.get("seed", -1))


def queue_reason(job_state: str | None) -> str | None:
    """The scheduler's reason in a pending job's state (`PENDING (Resources)` -> `Resources`)."""
    m = re.match(r"^PENDING \((.+)\)$", job_state or "")
    return m.group(1) if m else None


def pid_alive(pid: int | None, started_at: float | None = None) -> bool | None:
    """True/False for a pid on this host; a pid reused by a newer process counts as dead. None when
    there is no pid."""
    if not pid:
        return None
    import psutil

    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        # A process created after the attempt started cannot be the one that wrote the record.
        return started_at is None or p.create_time() <= float(started_at) + 2.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def stale_evaluations(checkpoint_steps: dict[str, int | None], trained_steps: int | None) -> str | None:
    """`ID eval of checkpoint 30720 < 40960 trained steps` when an evaluation ran on a checkpoint
    older than what the cell trained (its newest checkpoint was unreadable, or an external script
    saves on a wall-clock timer); None when every evaluation is of the trained policy."""
    if trained_steps is None:
        return None
    stale = [f"{kind.upper()} eval of checkpoint {step} < {int(trained_steps)} trained steps"
             for kind, step in checkpoint_steps.items() if step is not None and int(step) < int(trained_steps)]
    return "; ".join(stale) or None


def _last_attempt(state: dict) -> dict:
    attempts = state.get("attempts") or []
    return attempts[-1] if attempts else {}


def _last_cause(state: dict) -> tuple[str | None, str | None]:
    for a in reversed(state.get("attempts") or []):
        if a.get("cause"):
            return a.get("cause"), a.get("evidence")
    return None, None


def pruned_by_of(record: Any) -> dict | None:
    """An attempt's `pruned_by` as {"study", "trial"}: written as that dict, a [study, trial] pair or
    a study name; None when absent."""
    if record is None:
        return None
    if isinstance(record, dict):
        study, trial = record.get("study", record.get("name")), record.get("trial", record.get("number"))
    elif isinstance(record, (list, tuple)):
        study, trial = [*record, None, None][:2]
    else:
        study, trial = record, None
    try:
        trial = None if trial is None else int(trial)
    except (TypeError, ValueError):
        pass
    return {"study": None if study is None else str(study), "trial": trial}


def pruned_text(pruned_by: dict | None, pruned_at: Any) -> str:
    """`pruned by study lr-search trial 4 at env step 4096` (the parts that are known)."""
    by = pruned_by or {}
    text = "pruned"
    if by.get("study") is not None:
        text += f" by study {by['study']}"
    if by.get("trial") is not None:
        text += f" trial {by['trial']}"
    if pruned_at is not None:
        text += f" at env step {pruned_at}"
    return text


def _pruned_attempt(state: dict) -> dict:
    """The newest attempt closed as pruned (the pruner's record), {} when none is."""
    return next((a for a in reversed(state.get("attempts") or []) if a.get("outcome") == "pruned"), {})


def _as_pruned(v: CellView, state: dict, why: str | None = None) -> CellView:
    """The view of a cell its study's pruner stopped: not failed, so no cause; the detail says who and when."""
    a = _pruned_attempt(state)
    v.phase, v.cause, v.evidence = "pruned", None, None
    v.pruned_by = pruned_by_of(a.get("pruned_by", state.get("pruned_by")))
    at = a.get("pruned_at", state.get("pruned_at"))
    v.pruned_at = None if at is None else int(at)
    v.detail = (pruned_text(v.pruned_by, v.pruned_at) + "; stopped early on purpose, checkpoint kept (planned "
                "again, it resumes from it)" + (f"; {why}" if why else ""))
    return v


def observe_run(rd: RunDir, *, stall_after: float, now: float | None = None,
                job_state: JobState | None = None, spec: dict | None = None) -> CellView:
    """The CellView of one run directory (see module doc). Never writes anything."""
    t = time.time() if now is None else now
    spec = spec if spec is not None else (rd.read_spec() or {})
    try:
        state = rd.read_state()
        progress = rd.read_progress() or {}
        claim = read_json(rd.claim_path) or {}
    except StoreError as e:  # a corrupt file is evidence, not a crash of `status`
        return CellView(config=spec.get("config", "?"), seed=_seed(spec), hash=spec.get("hash"),
                        run_dir=str(rd.path), phase="failed", cause="corrupt", evidence=str(e))
    last = _last_attempt(state)
    docs = {k: (rd.read_eval(k) or {}) if rd.eval_path(k).exists() else None for k in EVAL_KINDS}
    evals = {k: d.get("summary") if d is not None else None for k, d in docs.items()}
    cause, evidence = _last_cause(state)
    v = CellView(config=spec.get("config", rd.path.parent.parent.name), seed=_seed(spec),
                 hash=spec.get("hash", rd.path.name), run_dir=str(rd.path), phase="pending",
                 attempts=len(state.get("attempts") or []), cause=cause, evidence=evidence,
                 trained=bool(state.get("trained")), eval_id=evals["id"], eval_ood=evals["ood"],
                 state_phase=state.get("phase"), done_when=spec.get("done_when", "eval"),
                 stale_eval=stale_evaluations({k: (d or {}).get("checkpoint_step") for k, d in docs.items()},
                                              state.get("trained_steps")))
    v.env_step = progress.get("env_step", state.get("trained_steps"))
    v.total_steps = progress.get("total_steps") or (spec.get("run_config") or {}).get("trainer", {}).get("total_steps")
    v.steps_per_s = progress.get("steps_per_s")
    v.host = last.get("host") or progress.get("host")
    v.pid = last.get("pid") or progress.get("pid")
    v.job_id = str(last.get("job_id") or progress.get("job_id") or claim.get("job_id") or "") or None
    if v.steps_per_s and v.total_steps and v.env_step is not None and v.steps_per_s > 0:
        v.eta_s = max(0.0, (v.total_steps - v.env_step) / v.steps_per_s)

    # Progress age: since env_step last moved, but never before this attempt (or eval phase) began,
    # so a resumed run or a cell evaluating is not called stalled by the previous attempt's heartbeat,
    # and never within the task's start-up allowance (task.startup_s: imports, JIT compile).
    marks = [x for x in (progress.get("env_step_moved_at"), last.get("started_at")) if x]
    startup_s = float(last.get("startup_s") or 0.0)  # recorded by the cell (tasks/run.py) from task.startup_s
    if startup_s > 0 and last.get("started_at") and last.get("outcome") == "running":
        marks.append(last["started_at"] + startup_s)
        if t < last["started_at"] + startup_s:
            v.detail = (f"starting: the first {startup_s:g} s of an attempt (task.startup_s) do not count "
                        f"toward the stall limit")
    if str(state.get("phase", "")).startswith("eval"):
        # an evaluation progresses in episodes (progress.json's eval_moved_at), not in env steps
        marks += [x for x in (state.get("updated_at"), progress.get("eval_moved_at")) if x]
    if marks:
        v.progress_age_s = max(0.0, t - max(marks))
    if spec.get("done_when") == "return" and not progress:
        # An app that never called safedreamer_sweep.heartbeat: no step clock, so no stall test;
        # it is supervised by process (or job) liveness alone, and status says so.
        v.progress_age_s = None
        v.detail = "no heartbeat: supervised by process liveness only (call safedreamer_sweep.heartbeat)"

    if rd.finished(spec.get("done_when", "eval"), state=state):
        v.phase = "done"
        return v

    return _phase(v, state, last, progress, job_state=job_state, stall_after=stall_after, now=t)


def _phase(v: CellView, state: dict, last: dict, progress: dict, *, job_state: JobState | None,
           stall_after: float, now: float) -> CellView:
    """Set the phase of a cell that is not done from its newest attempt and the liveness of its
    process (same host) or job (scheduler), else its heartbeat's age."""
    t = now
    outcome = last.get("outcome")
    if v.job_id and job_state is not None:
        try:
            v.job_state = job_state(v.job_id)
        except Exception as e:  # noqa: BLE001 (the scheduler being unreachable is evidence too)
            v.detail = f"scheduler query failed: {e}"
    same_host = v.host is not None and v.host == host()
    if same_host and v.pid:
        v.pid_alive = pid_alive(v.pid, last.get("started_at"))

    if outcome in ("running", "submitted"):
        job_alive = None if v.job_state is None else v.job_state.split()[0] in SLURM_ALIVE
        if outcome == "submitted":
            # Pre-registered by the launcher: queued until the cell process fills it in.
            if job_alive is False:
                v.phase, v.detail = "lost", f"job {v.job_id} is {v.job_state} and never started the cell"
            else:
                v.phase = "pending"
                v.queue_reason, v.queued_since = queue_reason(v.job_state), last.get("submitted_at")
                if v.queue_reason:
                    waited = f" for {t - v.queued_since:.0f}s" if v.queued_since else ""
                    v.detail = f"queued{waited}: job {v.job_id} pending ({v.queue_reason}, the scheduler's reason)"
            return v
        alive = v.pid_alive if v.pid_alive is not None else job_alive
        if alive is None:
            # Another host and no scheduler answer: the heartbeat is the only evidence left.
            hb_age = t - progress["updated_at"] if progress.get("updated_at") else None
            alive = hb_age is not None and hb_age <= stall_after
            v.detail = (f"liveness from heartbeat only (host {v.host}, updated {hb_age:.0f}s ago)"
                        if hb_age is not None else f"no heartbeat and no way to check host {v.host}")
        if not alive and state.get("phase") == "pruned":  # its pruner killed it; the attempt is not closed yet
            return _as_pruned(v, state, why=f"attempt {last.get('n')} not closed yet")
        if not alive:
            v.phase = "lost"
            if not v.detail:
                who = f"pid {v.pid} on {v.host}" if v.pid_alive is False else f"job {v.job_id} ({v.job_state})"
                v.detail = f"{who} is gone and attempt {last.get('n')} has no end marker"
        elif v.progress_age_s is not None and v.progress_age_s > stall_after:
            v.phase = "stalled"
        else:
            v.phase = "running"
        return v

    if outcome == "pruned" or state.get("phase") == "pruned":
        return _as_pruned(v, state)
    if state.get("phase") == "failed" or outcome == "failed":
        v.phase = "failed"
        return v
    # new, interrupted (resumable), trained-without-eval: nothing runs it now.
    v.phase = "pending"
    return v


def observe_store(store: Store, *, stall_after: float, now: float | None = None,
                  job_state: JobState | None = None) -> list[CellView]:
    """One CellView per expected cell of the store (sweep manifests + run dirs on disk); a cell with
    no run directory yet is `pending`. Sorted by config then seed."""
    out = []
    for cell in store.expected_cells():
        rd = None
        if cell.get("hash"):
            cand = store.run_dir(cell["config"], cell["seed"], cell["hash"])
            if not cand.spec_path.exists():  # stored under another label: found by its identity
                cand = store.locate(cell["config"], cell["seed"], cell["hash"])
            rd = cand if cand.spec_path.exists() else None
        if rd is None:
            found = store.find(cell["config"], cell["seed"])
            rd = next((r for r in found if r.path.name == cell.get("hash")), None)
        if rd is None:
            out.append(CellView(config=cell["config"], seed=cell["seed"], hash=cell.get("hash"),
                                run_dir=None, phase="pending", detail="no run directory yet",
                                done_when=cell.get("done_when")))
        else:
            out.append(observe_run(rd, stall_after=stall_after, now=now, job_state=job_state))
    return out
