"""The plan: every Hydra job override list of a sweep becomes a PlannedCell, its RunSpec with a
verdict against the store (verdicts.py), before anything is written; and the plan as printed.

The plan is refused as a whole (PlanError) on an invalid job, a confound (checks.py), a conflict
(unless sweep.new_variant) or work computed by other code (with sweep.code_change=refuse). One
identity asked under two labels in one sweep keeps the first label, or the one it is stored under;
the same cell asked twice in one sweep (e.g. seed=1,1) runs once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig

from safedreamer_sweep.core.code_fingerprint import CODE_CHANGE, implicit_code
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store, label_base
from safedreamer_sweep.sweep.checks import check_config_axis_renders, check_confounds
from safedreamer_sweep.sweep.compose import cell_base, job_spec, plan_specs, swept_keys
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.failures import RetryPolicy
from safedreamer_sweep.sweep.observe import JobState
from safedreamer_sweep.sweep.settings import (
    Hint,
    absolute_store_root,
    check_store_root,
    flag_hint,
    sweep_setting,
    sweep_setting_given,
)
from safedreamer_sweep.sweep.verdicts import RUNNABLE, VERDICTS, code_verdict, verdict_for


@dataclass
class PlannedCell:
    """One job of the sweep with its identity and verdict. `cfg` (the job's own composed config, as
    Hydra composes it for that override list, hydra.* included) is composed on first use: planning
    itself needs only the identity, and only cells that are submitted need a composed config."""

    index: int
    overrides: list[str]
    spec: RunSpec
    run_dir: RunDir
    verdict: str
    reason: str = ""
    composed: DictConfig | None = field(default=None, repr=False)
    settings: DictConfig | None = field(default=None, repr=False)  # the sweep/store/cost settings of this job
    composer: Callable[[], DictConfig] | None = field(default=None, repr=False, compare=False)
    code_note: dict | None = None  # work by other code: {"recorded": ..., "now": ..., "code_change": ...}

    @property
    def label(self) -> str:
        return f"{self.spec.label} [{self.spec.hash}]"

    @property
    def cfg(self) -> DictConfig | None:
        """The job's composed config (composed through Hydra now if planning did not need it)."""
        if self.composed is None and self.composer is not None:
            self.composed = self.composer()
        return self.composed


def plan_cells(job_overrides: Sequence[Sequence[str]], *, config_loader: Any, config: DictConfig,
               store: Store | None = None, stall_after: float = 600.0, policy: RetryPolicy | None = None,
               job_state: JobState | None = None, sweep_id: str | None = None,
               log: Any = print, fast: bool = True, launcher: dict | None = None) -> list[PlannedCell]:
    """Plan every job (in order). Reads only: raises PlanError, before anything is written, on an
    invalid job (a non-integer seed, a budget the trainer refuses, a bad external task, a store.root
    that is not a directory), on conflicts (unless sweep.new_variant) and on confounds (with
    sweep.strict_confounds). `fast=False` composes every job through Hydra (see plan_specs)."""
    specs = plan_specs(job_overrides, config_loader=config_loader, config=config, fast=fast)
    if not specs:
        return []
    # A derived job differs from its group's composed first job only by the seed, which is never a
    # confound: the composed jobs alone carry every value the confound check compares. Confounds are
    # differences between the configs of a `config` axis: an app without that group has none.
    if cell_base(specs[0][1])[1] == "config":
        check_confounds([s for s, _, composed in specs if composed is not None], specs[0][1], log=log,
                        swept=swept_keys(config, job_overrides), launcher=launcher)
    check_config_axis_renders(specs)
    judge = _Judge(store=store, launcher=launcher, stall_after=stall_after, policy=policy, job_state=job_state,
                   sweep_id=sweep_id)
    cells: list[PlannedCell] = []
    for i, ((spec, settings, composed), ov) in enumerate(zip(specs, job_overrides)):
        spec, v, why, rd, note = judge.cell(i, spec, settings)
        cells.append(PlannedCell(index=i, overrides=list(ov), spec=spec, run_dir=rd, verdict=v, reason=why,
                                 composed=composed, settings=settings, code_note=note,
                                 composer=None if composed is not None else _composer(config_loader, config, ov, spec)))
    conflicts = [c for c in cells if c.verdict == "conflict"]
    if conflicts:
        raise PlanError("refusing to launch: " + "\n".join(f"{c.label}: {c.reason}" for c in conflicts))
    _refuse_code_changes(cells, flag_hint(cells[0].settings))
    return cells


@dataclass(frozen=True)
class _Settings:
    """What a verdict needs from one job's settings, read once per settings object (every job of a
    seed group shares its group's)."""

    store: Store
    new_variant: bool
    retry_failed: bool
    code_change: str
    code_change_given: bool  # set, not defaulted
    hint: Hint

    @classmethod
    def read(cls, settings: DictConfig, store: Store | None, launcher: dict | None) -> _Settings:
        store = store or Store(check_store_root(absolute_store_root(settings)))
        hint = flag_hint(settings)
        code_change = str(sweep_setting(settings, launcher, "code_change"))
        if code_change not in CODE_CHANGE:
            raise PlanError(f"code_change={code_change!r} is not one of {', '.join(CODE_CHANGE)}. Fix: "
                            f"{hint('code_change', 'refuse')} (default), rerun or accept")
        return cls(store=store,
                   new_variant=bool(sweep_setting(settings, launcher, "new_variant")),
                   retry_failed=bool(sweep_setting(settings, launcher, "retry_failed")),
                   code_change=code_change, code_change_given=sweep_setting_given(settings, launcher, "code_change"),
                   hint=hint)


@dataclass
class _Judge:
    """The verdicts of one sweep's cells, in job order, with what it remembers across them: each
    settings object's reading, each identity's first label and each cell's first job."""

    store: Store | None
    launcher: dict | None
    stall_after: float
    policy: RetryPolicy | None
    job_state: JobState | None
    sweep_id: str | None
    settings: dict[int, _Settings] = field(default_factory=dict)  # id(settings cfg): its reading
    first_label: dict[tuple[str, str, int | None], RunSpec] = field(default_factory=dict)  # (base, hash, seed)
    seen: dict[str, int] = field(default_factory=dict)  # cell key: its first job

    def cell(self, index: int, spec: RunSpec, settings: DictConfig) -> tuple[RunSpec, str, str, RunDir, dict | None]:
        """(spec as planned, verdict, reason, run dir, code note) of job `index`."""
        got = self.settings.get(id(settings))
        if got is None:
            got = self.settings[id(settings)] = _Settings.read(settings, self.store, self.launcher)
        # Unset, an edited main script of an app that declares no code reruns its cells (nothing says
        # which of its lines compute them; Hydra's other launchers always run the script as it is now)
        code_change = "rerun" if not got.code_change_given and implicit_code(spec.code) else got.code_change
        twin = self.first_label.setdefault((label_base(spec.config), spec.hash, spec.seed), spec)
        if twin.config != spec.config and twin.run_config == spec.run_config:
            spec = replace(spec, config=twin.config)  # one identity, two labels in this sweep: the first one's
        try:
            v, why, rd = verdict_for(got.store, spec, new_variant=got.new_variant, stall_after=self.stall_after,
                                     policy=self.policy, job_state=self.job_state, sweep_id=self.sweep_id,
                                     retry_failed=got.retry_failed, hint=got.hint)
        except NotADirectoryError as e:
            raise PlanError(f"store.root={got.store.root}: {e.filename} is not a directory. Fix: point store.root at "
                            f"a store directory (or a new path)") from e
        stored_label = (rd.path.parent if spec.seed is None else rd.path.parent.parent).name
        if stored_label != spec.config:  # stored under the label of the command line that first ran it
            spec = replace(spec, config=stored_label)
            self.first_label[(label_base(spec.config), spec.hash, spec.seed)] = spec
        v, why, note = code_verdict(spec, rd, v, why, code_change, got.hint)
        if spec.key in self.seen:  # the same cell twice in one sweep (e.g. seed=1,1): run it once
            v, why = "running-elsewhere", f"duplicate of job #{self.seen[spec.key]} in this sweep"
        self.seen.setdefault(spec.key, index)
        spec = replace(spec, code_change=code_change)  # RunDir.ensure_spec applies it when the cell is claimed
        return spec, v, why, rd, note


def _refuse_code_changes(cells: list[PlannedCell], hint: Hint) -> None:
    """PlanError naming every cell whose work other code computed, and both fingerprints."""
    changed = [c for c in cells if c.verdict == "code-changed"]
    if not changed:
        return
    lines = [f"  {c.label}: {c.reason}" for c in changed[:20]]
    if len(changed) > 20:
        lines.append(f"  ... and {len(changed) - 20} more")
    raise PlanError(f"refusing to launch: {len(changed)} cell(s) hold work computed by other code "
                    f"({hint('code_change', 'refuse')}):\n" + "\n".join(lines) + f"\nFix: {hint('code_change', 'rerun')} "
                    "trains them again with this code (the old work is moved to superseded/ in each run dir, "
                    f"nothing is deleted); {hint('code_change', 'accept')} keeps them as they are (recorded; the report "
                    "lists which cells came from which code); or restore the code they were computed by")


def _composer(config_loader: Any, config: DictConfig, overrides: Sequence[str], planned: RunSpec
              ) -> Callable[[], DictConfig]:
    """Compose a derived job when it is needed, and check it is the cell that was planned."""
    ov = list(overrides)

    def compose() -> DictConfig:
        spec, cfg = job_spec(config_loader, config, ov, swept=set())
        if spec.hash != planned.hash or spec.seed != planned.seed:
            raise PlanError(f"job {' '.join(ov)} composes to {spec.key} but was planned as {planned.key}: "
                            f"the seed is interpolated in a way the planner's check missed. Fix: report this; "
                            f"launch with hydra.launcher.plan_fast=false meanwhile")
        return cfg

    return compose


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
