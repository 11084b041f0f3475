"""The verdict of one planned cell against the store, and what the code that computed its work says.

Verdicts: done (skip, return the cached result), eval-only (trained, an evaluation is missing),
resume (a checkpoint exists; also a cell its study's pruner stopped, asked for again: pruned is not
failed, so no retry policy applies), retry (failed, attempts left, cause retryable), running-elsewhere
(another live sweep or job holds it), new, conflict (same config+seed, different resolved-config
hash: refused, naming the differing keys, unless sweep.new_variant=true), failed (attempts used up
or a non-retryable error; shown, not run). A cell whose work was computed by other code (its
spec.json code fingerprint differs from this code's) gets sweep.code_change's verdict:
code-changed (refuse, the default: the plan is refused naming the cells and both fingerprints),
rerun (trained again from scratch; the old work is moved to superseded/ in its run dir), or, with
accept, its own verdict with the change named (recorded in spec.json when it runs, and in the
sweep manifest; the report's first warning lists which cells came from which code).
"""

from __future__ import annotations

from safedreamer_sweep.core.code_fingerprint import describe_code, implicit_code, recorded_fingerprint
from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.identity import RunSpec, diff_keys
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.claim import live_holder
from safedreamer_sweep.sweep.failures import RELAUNCHABLE, RetryPolicy
from safedreamer_sweep.sweep.observe import CellView, JobState, observe_run, pruned_text
from safedreamer_sweep.sweep.settings import Hint, default_hint

VERDICTS = ("done", "eval-only", "resume", "retry", "running-elsewhere", "new", "rerun", "conflict", "code-changed",
            "failed")
RUNNABLE = {"eval-only", "resume", "retry", "new", "rerun"}


def verdict_for(store: Store, spec: RunSpec, *, new_variant: bool = False, stall_after: float = 600.0,
                policy: RetryPolicy | None = None, job_state: JobState | None = None,
                sweep_id: str | None = None, retry_failed: bool = False,
                hint: Hint = default_hint) -> tuple[str, str, RunDir]:
    """(verdict, reason, run dir) of one RunSpec against the store. Reads only (but for the store
    index, a cache). The run dir is the cell's identity's wherever it is in the store (Store.locate),
    whatever label this command line gives it; a cell stored nowhere gets its label path."""
    policy = policy or RetryPolicy()
    rd = store.locate(spec.config, spec.seed, spec.hash, spec.run_config)
    if not rd.spec_path.exists():
        return (*_unstored_verdict(store, spec, new_variant=new_variant, hint=hint), rd)

    # Finished cells are most of a re-launched sweep: observe_run's "done" test (state phase done and
    # both evaluations on disk) on one file read, before reading everything else.
    try:
        state = rd.read_state()
    except StoreError:
        state = None  # corrupt: observe_run turns it into evidence
    finished = "trained and evaluated (id, ood)" if spec.done_when == "eval" else "finished (return value stored)"
    if state and rd.finished(spec.done_when, state=state):
        return "done", finished, rd
    view = observe_run(rd, stall_after=stall_after, job_state=job_state)
    if view.phase == "done":
        return "done", finished, rd
    held = _held_elsewhere(rd, view, sweep_id=sweep_id, stall_after=stall_after, job_state=job_state)
    if held:
        return "running-elsewhere", held, rd
    state = rd.read_state()
    if view.phase == "pruned":
        return (*_pruned_verdict(rd, view), rd)
    if view.phase == "failed":
        return (*_failed_verdict(view, state.get("attempts") or [], policy, retry_failed=retry_failed, hint=hint), rd)
    if state.get("trained"):
        return "eval-only", "trained; missing eval: " + ", ".join(
            k for k, ok in rd.evaluated.items() if not ok), rd
    return (*_checkpoint_verdict(rd, view), rd)


def _unstored_verdict(store: Store, spec: RunSpec, *, new_variant: bool, hint: Hint) -> tuple[str, str]:
    """A cell with no run directory of its own: `conflict` when a run dir of the same label, seed,
    primary config and app holds another hash (unless new_variant), else `new`."""
    # another primary config or another app (a recorded one that differs): another experiment
    others = [r for r in store.find(spec.config, spec.seed) if r.path.name != spec.hash
              and (o := r.read_spec() or {}).get("primary_config", spec.primary) == spec.primary
              and o.get("app", spec.app) == spec.app]
    if others and not new_variant:
        old = others[-1].read_spec() or {}
        diff = diff_keys(old.get("run_config") or {}, spec.run_config)
        keys = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in list(diff.items())[:8]))
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        if not diff and spec.app and "app" not in old:
            keys = ("none: it was stored by an older safedreamer-sweep, before an app's cells were told "
                    f"apart by the app they belong to (this app: {spec.app})")
        why = (f"{others[-1].path} holds {spec.config} seed {spec.seed} with hash {old.get('hash')}; this "
               f"sweep resolves to {spec.hash}; differing keys: {keys}{more}. Fix: revert those overrides, "
               f"or pass {hint('new_variant', True)} to train a new variant")
        return "conflict", why
    return "new", "no run directory" + (" (new variant)" if others else "")


def _held_elsewhere(rd: RunDir, view: CellView, *, sweep_id: str | None, stall_after: float,
                    job_state: JobState | None) -> str | None:
    """Why the cell is running elsewhere (another live sweep's claim, or a live process of it), or None."""
    held = live_holder(rd, stall_after=stall_after, job_state=job_state, other_than=sweep_id)
    if held:
        return held
    if view.phase in ("running", "stalled") and view.pid_alive:
        return f"pid {view.pid} on {view.host} is alive (env_step {view.env_step})"
    return None


def _failed_verdict(view: CellView, attempts: list[dict], policy: RetryPolicy, *, retry_failed: bool,
                    hint: Hint) -> tuple[str, str]:
    """A failed cell: `retry` while the policy allows it (or sweep.retry_failed), else `failed`."""
    cause = view.cause or "error"
    used = policy.counted_attempts(attempts)
    # a cancelled cell is resumed by launching the sweep again (the user asking again is the retry)
    if retry_failed or ((cause in RELAUNCHABLE or policy.retry_errors) and used < policy.max_attempts):
        return "retry", f"last attempt failed ({cause}: {view.evidence}); {used}/{policy.max_attempts} used"
    tail = (attempts[-1].get("traceback_tail") or "").strip().splitlines()[-3:] if attempts else []
    return "failed", (f"{cause}: {view.evidence}; {used}/{policy.max_attempts} attempts used; "
                      f"not retried (pass {hint('retry_failed', True)} to run it again)"
                      + (" | " + " / ".join(tail) if tail else ""))


def _pruned_verdict(rd: RunDir, view: CellView) -> tuple[str, str]:
    """A cell its study's pruner stopped, planned again (by a grid, or a study that promotes it): it
    resumes from its checkpoint (else starts anew). Not failed: no attempt counted, no retry policy."""
    verdict, why = _checkpoint_verdict(rd, view)
    why = why.removesuffix(f" ({view.phase})")
    how = "resumed because asked again" if verdict == "resume" else "asked again, it starts from scratch"
    return verdict, f"{pruned_text(view.pruned_by, view.pruned_at)}; {how} ({why})"


def _checkpoint_verdict(rd: RunDir, view: CellView) -> tuple[str, str]:
    """An unfinished cell: `resume` from the newest checkpoint that verifies, else `new`."""
    phase = f" ({view.phase})" if view.phase != "pending" else ""
    bad: list[str] = []
    for step, path in reversed(rd.checkpoints()):  # the newest checkpoint that verifies is what the cell resumes from
        if RunDir.verify_checkpoint(path):
            why = f"checkpoint at env_step {step}"
            if bad:
                why = f"{'; '.join(bad)}; resumes from env_step {step}"
            return "resume", why + phase
        bad.append(f"checkpoint {path.name} (env_step {step}) is unreadable (truncated or corrupt)")
    if bad:
        return "new", f"{'; '.join(bad)}; starts from scratch" + phase
    return "new", "run directory without checkpoint" + phase


def code_verdict(spec: RunSpec, rd: RunDir, verdict: str, reason: str, code_change: str,
                 hint: Hint = default_hint) -> tuple[str, str, dict | None]:
    """(verdict, reason, note) of a cell once the code that computed its work is compared with this
    code's (spec.code): unchanged, without work or without declared code, the verdict stands;
    otherwise `code-changed` (refuse), `rerun`, or with accept the verdict stands, the change named."""
    now = spec.code or {}
    if not now.get("fingerprint") or verdict in ("new", "conflict", "running-elsewhere"):
        return verdict, reason, None  # nothing computed here yet, someone else's, or nothing to compare
    old = rd.read_spec() or {}
    if recorded_fingerprint(old) == now["fingerprint"]:
        return verdict, reason, None
    if recorded_fingerprint(old) is None and implicit_code(now):
        return verdict, reason, None  # stored before an app's main script was its code: kept (run_dir._settle_code_change)
    recorded = (old.get("code_accepted") or [old.get("code")])[-1]
    note = {"recorded": recorded, "now": now, "code_change": code_change}
    what = f"its work was computed by code {describe_code(recorded)}; this code is {describe_code(now)}"
    if code_change == "refuse":
        return "code-changed", what, note
    if code_change == "rerun":
        why = f"{what}: trained again by this code (the old work moves to superseded/)"
        if implicit_code(now):
            why += (f"; an app that declares no sds.code has its main script as its code and reruns on an edit: "
                    f"to keep finished cells across edits pass {hint('code_change', 'accept')}")
        return "rerun", why, note
    return verdict, f"{reason}; {what}: accepted ({hint('code_change', 'accept')})", note

