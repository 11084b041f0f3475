"""Plan: every Hydra job override list becomes a RunSpec with a verdict against the store.

Verdicts: done (skip, return the cached result), eval-only (trained, an evaluation is missing),
resume (a checkpoint exists), retry (failed, attempts left, cause retryable), running-elsewhere
(another live sweep or job holds it), new, conflict (same config+seed, different resolved-config
hash: refused, naming the differing keys, unless sweep.new_variant=true), failed (attempts used up
or a non-retryable error; shown, not run).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from safedreamer_sweep.claim import holder_alive
from safedreamer_sweep.failures import RESUMABLE, RetryPolicy
from safedreamer_sweep.identity import RunSpec, config_choice, diff_keys
from safedreamer_sweep.observe import JobState, observe_run
from safedreamer_sweep.store import RunDir, Store, read_json

VERDICTS = ("done", "eval-only", "resume", "retry", "running-elsewhere", "new", "conflict", "failed")
RUNNABLE = {"eval-only", "resume", "retry", "new"}


class PlanError(Exception):
    """The sweep cannot be planned as asked (conflict, confound, bad config). Names the fix."""


@dataclass
class PlannedCell:
    index: int
    overrides: list[str]
    spec: RunSpec
    run_dir: RunDir
    verdict: str
    reason: str = ""
    cfg: DictConfig | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.spec.config} seed {self.spec.seed} [{self.spec.hash}]"


def absolute_store_root(cfg: DictConfig, cwd: str | os.PathLike | None = None) -> Path:
    """store.root made absolute against the original working directory (jobs may run elsewhere)."""
    root = Path(str(cfg.store.root)).expanduser()
    if not root.is_absolute():
        base = cwd
        if base is None:
            try:
                from hydra.utils import get_original_cwd

                base = get_original_cwd()
            except (ImportError, ValueError):  # not inside a Hydra run
                base = os.getcwd()
        root = Path(base) / root
    return root.resolve()


def job_spec(config_loader: Any, config: DictConfig, overrides: Sequence[str],
             cwd: str | None = None) -> tuple[RunSpec, DictConfig]:
    """The RunSpec and the composed per-job config of one override list (store.root made absolute)."""
    sweep_cfg = config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_cfg):
        sweep_cfg.store.root = str(absolute_store_root(sweep_cfg, cwd))
    name = config_choice(sweep_cfg)
    task_overrides = tuple(o for o in overrides if not o.startswith("hydra"))
    return RunSpec.from_cfg(sweep_cfg, config_name=name, overrides=task_overrides), sweep_cfg


def verdict_for(store: Store, spec: RunSpec, *, new_variant: bool = False, stall_after: float = 600.0,
                policy: RetryPolicy | None = None, job_state: JobState | None = None,
                sweep_id: str | None = None, retry_failed: bool = False) -> tuple[str, str, RunDir]:
    """(verdict, reason, run dir) of one RunSpec against the store. Reads only."""
    policy = policy or RetryPolicy()
    rd = store.run_dir(spec.config, spec.seed, spec.hash)
    if not rd.spec_path.exists():
        others = [r for r in store.find(spec.config, spec.seed) if r.path.name != spec.hash]
        if others and not new_variant:
            old = others[-1].read_spec() or {}
            diff = diff_keys(old.get("run_config") or {}, spec.run_config)
            keys = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in list(diff.items())[:8]))
            more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
            why = (f"{others[-1].path} holds {spec.config} seed {spec.seed} with hash {old.get('hash')}; this "
                   f"sweep resolves to {spec.hash}; differing keys: {keys}{more}. Fix: revert those overrides, "
                   f"or pass sweep.new_variant=true to train a new variant")
            return "conflict", why, rd
        return "new", "no run directory" + (" (new variant)" if others else ""), rd

    view = observe_run(rd, stall_after=stall_after, job_state=job_state)
    claim = read_json(rd.claim_path) or {}
    if view.phase == "done":
        return "done", "trained and evaluated (id, ood)", rd
    if claim and not claim.get("released_at") and claim.get("sweep_id") != sweep_id:
        alive, why = holder_alive(claim, rd, stall_after=stall_after, job_state=job_state)
        if alive:
            return "running-elsewhere", f"sweep {claim.get('sweep_id')}: {why}", rd
    if view.phase in ("running", "stalled") and view.pid_alive:
        return "running-elsewhere", f"pid {view.pid} on {view.host} is alive (env_step {view.env_step})", rd
    state = rd.read_state()
    attempts = state.get("attempts") or []
    if view.phase == "failed":
        cause = view.cause or "error"
        used = policy.counted_attempts(attempts)
        if retry_failed or ((cause in RESUMABLE or policy.retry_errors) and used < policy.max_attempts):
            return "retry", f"last attempt failed ({cause}: {view.evidence}); {used}/{policy.max_attempts} used", rd
        tail = (attempts[-1].get("traceback_tail") or "").strip().splitlines()[-3:] if attempts else []
        return "failed", (f"{cause}: {view.evidence}; {used}/{policy.max_attempts} attempts used; "
                          f"not retried (pass sweep.retry_failed=true to run it again)"
                          + (" | " + " / ".join(tail) if tail else "")), rd
    if state.get("trained"):
        return "eval-only", "trained; missing eval: " + ", ".join(
            k for k, ok in rd.evaluated.items() if not ok), rd
    ck = rd.checkpoints()
    if ck:
        return "resume", f"checkpoint at env_step {ck[-1][0]}" + (f" ({view.phase})" if view.phase != "pending" else ""), rd
    return "new", "run directory without checkpoint" + (f" ({view.phase})" if view.phase != "pending" else ""), rd


def check_confounds(specs: list[RunSpec], cfg: DictConfig, log: Any = print) -> None:
    """Call the status engineer's confound check (safedreamer_sweep/confounds.py) when it exists.
    With sweep.strict_confounds=true a confound stops the launch."""
    try:
        from safedreamer_sweep import confounds
    except ImportError:
        log("[plan] confound check skipped: safedreamer_sweep/confounds.py is not available")
        return
    knobs = list(cfg.get("sweep", {}).get("ablation_knobs", []) or [])
    found = confounds.find_confounds(specs, knobs)
    if not found:
        return
    fmt = getattr(confounds, "format_confounds", None)
    text = fmt(found) if fmt else "\n".join(map(str, found))
    if bool(cfg.get("sweep", {}).get("strict_confounds", True)):
        raise PlanError(f"confounds between the configs on the `config` axis:\n{text}\n"
                        f"Fix: make those keys equal, declare them in sweep.ablation_knobs, or pass "
                        f"sweep.strict_confounds=false to launch anyway")
    log(f"[plan] WARNING confounds (sweep.strict_confounds=false):\n{text}")


def plan_cells(job_overrides: Sequence[Sequence[str]], *, config_loader: Any, config: DictConfig,
               store: Store | None = None, stall_after: float = 600.0, policy: RetryPolicy | None = None,
               job_state: JobState | None = None, sweep_id: str | None = None,
               log: Any = print) -> list[PlannedCell]:
    """Plan every job (in order). Raises PlanError on conflicts (unless sweep.new_variant) and on
    confounds (with sweep.strict_confounds)."""
    cells: list[PlannedCell] = []
    specs = []
    for i, ov in enumerate(job_overrides):
        spec, cfg = job_spec(config_loader, config, ov)
        specs.append((spec, cfg, list(ov)))
    if not specs:
        return []
    check_confounds([s for s, _, _ in specs], specs[0][1], log=log)
    seen: dict[str, int] = {}
    for i, (spec, cfg, ov) in enumerate(specs):
        st = store or Store(cfg.store.root)
        sw = cfg.get("sweep", {}) or {}
        v, why, rd = verdict_for(st, spec, new_variant=bool(sw.get("new_variant", False)), stall_after=stall_after,
                                 policy=policy, job_state=job_state, sweep_id=sweep_id,
                                 retry_failed=bool(sw.get("retry_failed", False)))
        if spec.key in seen:  # the same cell twice in one sweep (e.g. seed=1,1): run it once
            v, why = "running-elsewhere", f"duplicate of job #{seen[spec.key]} in this sweep"
        seen.setdefault(spec.key, i)
        cells.append(PlannedCell(index=i, overrides=ov, spec=spec, run_dir=rd, verdict=v, reason=why, cfg=cfg))
    conflicts = [c for c in cells if c.verdict == "conflict"]
    if conflicts:
        raise PlanError("refusing to launch: " + "\n".join(f"{c.label}: {c.reason}" for c in conflicts))
    return cells


def format_plan(cells: list[PlannedCell]) -> str:
    """The plan as printed before anything is submitted: counts per verdict, then each cell."""
    counts = Counter(c.verdict for c in cells)
    runnable = sum(counts[v] for v in RUNNABLE)
    head = f"plan: {len(cells)} cells, {runnable} to submit | " + ", ".join(
        f"{v} {counts[v]}" for v in VERDICTS if counts.get(v))
    lines = [head]
    for c in cells:
        lines.append(f"  #{c.index:<3} {c.verdict:<17} {c.label}  {c.reason}")
    return "\n".join(lines)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
