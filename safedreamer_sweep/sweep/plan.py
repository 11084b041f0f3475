"""Plan: every Hydra job override list becomes a RunSpec with a verdict against the store.

Verdicts: done (skip, return the cached result), eval-only (trained, an evaluation is missing),
resume (a checkpoint exists), retry (failed, attempts left, cause retryable), running-elsewhere
(another live sweep or job holds it), new, conflict (same config+seed, different resolved-config
hash: refused, naming the differing keys, unless sweep.new_variant=true), failed (attempts used up
or a non-retryable error; shown, not run). A cell whose work was computed by other code (its
spec.json code fingerprint differs from this code's) gets sweep.code_change's verdict:
code-changed (refuse, the default: the plan is refused naming the cells and both fingerprints),
rerun (trained again from scratch; the old work is moved to superseded/ in its run dir), or, with
accept, its own verdict with the change named (recorded in spec.json when it runs, and in the
sweep manifest; the report's first warning lists which cells came from which code).

Any Hydra app can be planned: a cell's label is the `config` choice (the built-in app) or the app's
job name, followed by the overrides the sweep itself varies, so keys swept on the command line, in
hydra.sweeper.params or by a sweeper such as Optuna define distinct cells, while a changed key that
nobody swept is still a conflict (the mislabel trap).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from safedreamer_sweep.core.identity import (
    CODE_CHANGE,
    IDENTITY_EXCLUDE,
    RunSpec,
    absolute_code_globs,
    cell_label,
    config_choice,
    declared_exclusions,
    describe_code,
    diff_keys,
    identity_excluded,
    identity_hash,
    implicit_code,
    recorded_fingerprint,
    resolved_without_hydra,
)
from safedreamer_sweep.core.store import (
    RunDir,
    Store,
    StoreError,
    label_base,
    read_json,
)
from safedreamer_sweep.sweep.claim import holder_alive
from safedreamer_sweep.sweep.failures import RELAUNCHABLE, RetryPolicy
from safedreamer_sweep.sweep.observe import JobState, observe_run

VERDICTS = ("done", "eval-only", "resume", "retry", "running-elsewhere", "new", "rerun", "conflict", "code-changed",
            "failed")
RUNNABLE = {"eval-only", "resume", "retry", "new", "rerun"}
# The settings that steer a sweep, with their defaults: the built-in app's `sweep.<key>`, and for any
# app `hydra.launcher.<key>` (set there, it wins; unset, the app's sweep.<key> or the default).
SWEEP_SETTINGS: dict[str, Any] = {"new_variant": False, "retry_failed": False, "code_change": "refuse",
                                  "strict_confounds": True}


def sweep_setting(settings: DictConfig | None, launcher: dict | None, key: str) -> Any:
    """The value of sweep setting `key` for a job: hydra.launcher.<key> when set, else the app's own
    sweep.<key>, else the default (SWEEP_SETTINGS)."""
    value = (launcher or {}).get(key)
    if value is not None:
        return value
    return _app_sweep(settings).get(key, SWEEP_SETTINGS[key])


def sweep_setting_given(settings: DictConfig | None, launcher: dict | None, key: str) -> bool:
    """Whether `key` is set for the job (hydra.launcher.<key> or the app's sweep.<key>), not defaulted."""
    return (launcher or {}).get(key) is not None or key in _app_sweep(settings)


def _app_sweep(settings: DictConfig | None) -> Any:
    return (settings.get("sweep") if settings is not None else None) or {}


def flag_hint(settings: DictConfig | None) -> Callable[[str, Any], str]:
    """How a message names a sweep setting so it works on this app's command line: `sweep.<key>=v`
    for an app whose config has that key (the built-in app), else `hydra.launcher.<key>=v` (any app
    under the sds launchers; `sweep.<key>` would not exist there)."""
    sw = _app_sweep(settings)

    def hint(key: str, value: Any) -> str:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return f"sweep.{key}={text}" if key in sw else f"hydra.launcher.{key}={text}"

    return hint


def _default_hint(key: str, value: Any) -> str:
    return f"sweep.{key}={str(value).lower() if isinstance(value, bool) else value}"


class PlanError(CompactHydraException):
    """The sweep cannot be planned as asked (conflict, confound, bad config). Names the fix. A
    CompactHydraException: raised through Hydra, it prints as its message alone (no traceback), exit 1."""


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


DEFAULT_STORE = "sds_store"


def store_root_setting(cfg: DictConfig) -> str:
    """Where the store is, as configured: the app's own `store.root` (the built-in app), else
    hydra.launcher.store_root, else $SDS_STORE, else ./sds_store."""
    root = OmegaConf.select(cfg, "store.root", default=None)
    if root is None:
        root = OmegaConf.select(cfg, "hydra.launcher.store_root", default=None)
    return str(root if root is not None else os.environ.get("SDS_STORE") or DEFAULT_STORE)


def absolute_store_root(cfg: DictConfig, cwd: str | os.PathLike | None = None) -> Path:
    """The store root (store_root_setting) made absolute against the original working directory
    (jobs may run elsewhere)."""
    setting = store_root_setting(cfg)
    if not setting.strip():  # Path("") would silently be the working directory
        raise PlanError("store.root='' is not allowed: must be a directory path. Fix: e.g. store.root=experiments")
    root = Path(setting).expanduser()
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


def check_store_root(root: Path) -> Path:
    """PlanError unless `root` is a directory or can become one (nothing on its path is a file)."""
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        what = "is a file" if p == root else f"sits under {p}, which is a file"
        raise PlanError(f"store.root={root} is not a directory: it {what}. Fix: point store.root at a directory "
                        f"(it is created if missing), e.g. store.root={root.parent if p == root else p.parent}/store")
    try:  # a real probe (root ignores permission bits; a read-only mount refuses everyone)
        os.rmdir(tempfile.mkdtemp(prefix=".sds-writable-", dir=p))
    except OSError as e:
        raise PlanError(f"store.root={root} is not writable: {p} refuses new files ({e.strerror}). Fix: point "
                        f"store.root at a directory you can write (e.g. store.root=$HOME/sds-store), or fix the "
                        f"permissions or the mount of {p}") from None
    return root


def compose_job(config_loader: Any, config: DictConfig, overrides: Sequence[str],
                cwd: str | None = None) -> DictConfig:
    """The composed per-job config of one override list, as Hydra composes it (store.root made absolute).
    A job the sds sweeper composed already is not composed again (shapes.take_composed)."""
    from safedreamer_sweep.sweep.shapes import take_composed

    sweep_cfg = take_composed(config, overrides)
    if sweep_cfg is None:
        sweep_cfg = config_loader.load_sweep_config(config, list(overrides))
    if OmegaConf.select(sweep_cfg, "store.root", default=None) is not None:
        with open_dict(sweep_cfg):
            sweep_cfg.store.root = str(absolute_store_root(sweep_cfg, cwd))
    if OmegaConf.select(sweep_cfg, "task.kind", default=None) == "external" and sweep_cfg.task.get("code"):
        with open_dict(sweep_cfg):  # a cell process started elsewhere hashes the same files
            sweep_cfg.task.code = absolute_code_globs(sweep_cfg)
    return sweep_cfg


def task_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides recorded in spec.json: the job's own, without hydra.* settings."""
    return tuple(o for o in overrides if not o.startswith("hydra"))


def _override_key(text: str) -> tuple[str, str]:
    """(key, value text) of one override string: `+a.b=1` -> ("a.b", "1")."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def swept_keys(config: DictConfig, job_overrides: Sequence[Sequence[str]] = ()) -> set[str]:
    """The keys this sweep varies: a sweep on the command line (`a=1,2`, `lr=interval(0,1)`), a key
    of hydra.sweeper.params (the basic sweeper's and Optuna's search space), or a key whose value
    differs between the jobs of this launch."""
    keys: set[str] = set()
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if params:
        keys.update(str(k).lstrip("+~") for k in params)
    task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    if task:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        except Exception:  # noqa: BLE001 (Hydra has parsed these already; never fail planning on them)
            parsed = []
        keys.update(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())
    values: dict[str, set[str]] = {}
    for ov in job_overrides:
        for text in ov:
            k, v = _override_key(str(text))
            values.setdefault(k, set()).add(v)
    keys.update(k for k, vs in values.items() if len(vs) > 1)
    return {k for k in keys if not k.startswith("hydra.") and k != "hydra"}


def cell_base(cfg: DictConfig) -> tuple[str, str | None]:
    """(label base, the override key it stands for): the `config` group choice of the built-in app
    (key "config"), else the app's job name (no key)."""
    try:
        return config_choice(cfg), "config"
    except ValueError:
        return str(OmegaConf.select(cfg, "hydra.job.name", default=None) or "app"), None


def job_spec(config_loader: Any, config: DictConfig, overrides: Sequence[str],
             cwd: str | None = None, swept: set[str] | None = None) -> tuple[RunSpec, DictConfig]:
    """The RunSpec and the composed per-job config of one override list (store.root made absolute).
    Its label: cell_base, then every override of `swept` (default: swept_keys(config)) that is not
    the seed, the base or a key outside the identity. PlanError for a config that is not a valid
    cell (e.g. a seed that is not an integer)."""
    sweep_cfg = compose_job(config_loader, config, overrides, cwd)
    try:
        spec = cell_spec(sweep_cfg, overrides, swept_keys(config) if swept is None else swept)
    except ValueError as e:
        raise PlanError(f"job {' '.join(overrides)}: {e}") from e
    return spec, sweep_cfg


def cell_spec(cfg: DictConfig, overrides: Sequence[str], swept: set[str]) -> RunSpec:
    """The RunSpec of one job's composed config: label = cell_base, then the job's overrides of
    `swept` keys other than the seed, the base and keys outside the identity. ValueError for a
    config that is not a valid cell (a seed that is not an integer, a bad sds.identity_exclude)."""
    base, base_key = cell_base(cfg)
    sds = OmegaConf.to_container(cfg.sds, resolve=True) if "sds" in cfg else {}
    excluded = (*IDENTITY_EXCLUDE, *declared_exclusions({"sds": sds}))
    label = cell_label(base, [(k, v) for k, v in map(_override_key, task_overrides(overrides))
                              if k in swept and k not in ("seed", base_key) and not identity_excluded(k, excluded)])
    return RunSpec.from_cfg(cfg, config_name=label, overrides=task_overrides(overrides))


def validate_job(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Run the task's own config check at plan time, so a cell that would fail on its first line
    is refused before any run directory, claim or manifest is written: the builtin trainer's budget
    check (jax-free), or the external adapter's template/probe check."""
    if "task" not in cfg or "kind" not in (cfg.task or {}):  # any other app: its own code checks its config
        return
    from safedreamer_sweep.core.schema import check_cell, check_env_ids

    refused = check_cell(cfg) or check_env_ids(cfg)  # every key's declared type and range (core/schema.py)
    if refused:
        raise PlanError(f"job {' '.join(overrides)}: refused before anything was written:\n"
                        + "\n".join(f"  {r}" for r in refused))
    try:
        if (cfg.get("task") or {}).get("kind", "builtin") == "external":
            from safedreamer_sweep.tasks.external import validate_task

            validate_task(cfg)
        else:
            from safedreamer_sweep.trainer.budget import check_config

            check_config(cfg)
    except Exception as e:  # any refusal by the task's own check becomes a plan error
        raise PlanError(f"job {' '.join(overrides)}: {e}") from e


# `seed=<int>` exactly as Hydra's grammar reads an integer: the one override the fast path substitutes.
_SEED_RE = re.compile(r"^seed=(-?(?:0|[1-9][0-9]*))$")


def _seed_split(overrides: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
    """(the other overrides, the seed) when the job sets the seed with one plain `seed=<int>`."""
    idx = [i for i, o in enumerate(overrides) if o.lstrip("+~").startswith("seed=")]
    if len(idx) != 1:
        return None
    m = _SEED_RE.match(overrides[idx[0]])
    if not m:
        return None
    return tuple(o for i, o in enumerate(overrides) if i != idx[0]), int(m.group(1))


def seed_is_a_leaf(cfg: DictConfig) -> bool:
    """True when changing the top-level seed changes nothing else in the resolved config (no other
    key interpolates it), i.e. a job's config is its group's config with the seed leaf substituted.
    Checked by resolving the composed config with two different seeds."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return False
    try:
        a = resolved_without_hydra(cfg)
        other = cfg.copy()
        with open_dict(other):
            other.seed = seed + 1
        b = resolved_without_hydra(other)
    except Exception:  # noqa: BLE001 (anything unusual: compose every job instead)
        return False
    a.pop("seed", None)
    b.pop("seed", None)
    return a == b


@dataclass
class _Group:
    """The jobs that differ only by `seed=<int>`: composed once, each job's spec derived."""

    cfg: DictConfig
    spec: RunSpec
    fast: bool


def plan_specs(job_overrides: Sequence[Sequence[str]], *, config_loader: Any, config: DictConfig,
               fast: bool = True) -> list[tuple[RunSpec, DictConfig, DictConfig | None]]:
    """(spec, settings cfg, composed cfg or None) of every job, each job validated.

    Fast path: jobs that differ only by a plain `seed=<int>` are composed once (the first of them);
    every other job's resolved run config is that one with the `seed` leaf substituted, then hashed.
    Exactly what composing it would give, as long as nothing else interpolates the seed: that is
    checked on the composed config (seed_is_a_leaf); if it fails, or for any other override form,
    every job is composed through Hydra. The composed cfg is None for derived jobs (PlannedCell
    composes it when it is submitted)."""
    out: list[tuple[RunSpec, DictConfig, DictConfig | None]] = []
    groups: dict[tuple[str, ...], _Group] = {}
    swept = swept_keys(config, job_overrides)
    for ov in job_overrides:
        ov = list(ov)
        split = _seed_split(ov) if fast else None
        g = groups.get(split[0]) if split else None
        if g is not None and g.fast:
            seed = split[1]  # type: ignore[index]
            if seed < 0:  # the one key a derived job does not get checked by validate_job
                raise PlanError(f"job {' '.join(ov)}: seed={seed} is not allowed: must be an integer >= 0. Fix: seed=0")
            rc = dict(g.spec.run_config)
            rc["seed"] = seed
            spec = RunSpec(config=g.spec.config, seed=seed, hash=identity_hash(rc, g.spec.app), run_config=rc,
                           overrides=task_overrides(ov), done_when=g.spec.done_when, code=g.spec.code,
                           primary=g.spec.primary, app=g.spec.app)
            out.append((spec, g.cfg, None))
            continue
        spec, cfg = job_spec(config_loader, config, ov, swept=swept)
        if g is None or not g.fast:  # a fast group's first job validates for it (only the seed differs after it)
            validate_job(cfg, ov)
        if split and split[0] not in groups:
            groups[split[0]] = _Group(cfg=cfg, spec=spec, fast=seed_is_a_leaf(cfg))
        out.append((spec, cfg, cfg))
    return out


def verdict_for(store: Store, spec: RunSpec, *, new_variant: bool = False, stall_after: float = 600.0,
                policy: RetryPolicy | None = None, job_state: JobState | None = None,
                sweep_id: str | None = None, retry_failed: bool = False,
                hint: Callable[[str, Any], str] = _default_hint) -> tuple[str, str, RunDir]:
    """(verdict, reason, run dir) of one RunSpec against the store. Reads only (but for the store
    index, a cache). The run dir is the cell's identity's wherever it is in the store (Store.locate),
    whatever label this command line gives it; a cell stored nowhere gets its label path."""
    policy = policy or RetryPolicy()
    rd = store.locate(spec.config, spec.seed, spec.hash, spec.run_config)
    if not rd.spec_path.exists():
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
            return "conflict", why, rd
        return "new", "no run directory" + (" (new variant)" if others else ""), rd

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
    claim = read_json(rd.claim_path) or {}
    if view.phase == "done":
        return "done", finished, rd
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
        # a cancelled cell is resumed by launching the sweep again (the user asking again is the retry)
        if retry_failed or ((cause in RELAUNCHABLE or policy.retry_errors) and used < policy.max_attempts):
            return "retry", f"last attempt failed ({cause}: {view.evidence}); {used}/{policy.max_attempts} used", rd
        tail = (attempts[-1].get("traceback_tail") or "").strip().splitlines()[-3:] if attempts else []
        return "failed", (f"{cause}: {view.evidence}; {used}/{policy.max_attempts} attempts used; "
                          f"not retried (pass {hint('retry_failed', True)} to run it again)"
                          + (" | " + " / ".join(tail) if tail else "")), rd
    if state.get("trained"):
        return "eval-only", "trained; missing eval: " + ", ".join(
            k for k, ok in rd.evaluated.items() if not ok), rd
    phase = f" ({view.phase})" if view.phase != "pending" else ""
    ck = rd.checkpoints()
    bad: list[str] = []
    for step, path in reversed(ck):  # the newest checkpoint that verifies is what the cell resumes from
        if RunDir.verify_checkpoint(path):
            why = f"checkpoint at env_step {step}"
            if bad:
                why = f"{'; '.join(bad)}; resumes from env_step {step}"
            return "resume", why + phase, rd
        bad.append(f"checkpoint {path.name} (env_step {step}) is unreadable (truncated or corrupt)")
    if bad:
        return "new", f"{'; '.join(bad)}; starts from scratch" + phase, rd
    return "new", "run directory without checkpoint" + phase, rd


def code_verdict(spec: RunSpec, rd: RunDir, verdict: str, reason: str, code_change: str,
                 hint: Callable[[str, Any], str] = _default_hint) -> tuple[str, str, dict | None]:
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
        return verdict, reason, None  # stored before an app's main script was its code: kept (store.settle_code_change)
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


def refuse_code_changes(cells: list[PlannedCell], hint: Callable[[str, Any], str] = _default_hint) -> None:
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


def check_confounds(specs: list[RunSpec], cfg: DictConfig, log: Any = print, swept: set[str] | frozenset[str] = frozenset(),
                    launcher: dict | None = None) -> None:
    """Call the confound check (safedreamer_sweep/core/confounds.py) when it exists.
    With sweep.strict_confounds=true a confound stops the launch. Keys the sweep varies itself
    (`swept`, part of each cell's label) are knobs by construction."""
    try:
        from safedreamer_sweep.core import confounds
    except ImportError:
        log("[plan] confound check skipped: safedreamer_sweep/core/confounds.py is not available")
        return
    knobs = list(cfg.get("sweep", {}).get("ablation_knobs", []) or []) + sorted(swept)
    found = confounds.find_confounds(specs, knobs)
    if not found:
        return
    fmt = getattr(confounds, "format_confounds", None)
    text = fmt(found) if fmt else "\n".join(map(str, found))
    hint = flag_hint(cfg)
    if bool(sweep_setting(cfg, launcher, "strict_confounds")):
        raise PlanError(f"confounds between the configs on the `config` axis:\n{text}\n"
                        f"Fix: make those keys equal, declare them in sweep.ablation_knobs, or pass "
                        f"{hint('strict_confounds', False)} to launch anyway")
    log(f"[plan] WARNING confounds ({hint('strict_confounds', False)}):\n{text}")


def check_config_axis_renders(specs: list[tuple[RunSpec, DictConfig, DictConfig | None]]) -> None:
    """An external task must run something different per config on the `config` axis: render each
    config's train and eval commands (tasks/external.py) and refuse configs that render the same."""
    per_config: dict[str, DictConfig] = {}
    for spec, _, composed in specs:
        if composed is not None:
            per_config.setdefault(spec.config, composed)
    if not per_config:
        return
    from safedreamer_sweep.tasks.external import check_config_axis

    knobs = list(specs[0][1].get("sweep", {}).get("ablation_knobs", []) or [])
    try:
        check_config_axis(per_config, knobs)
    except Exception as e:  # the task's refusal (or a template that does not render) stops the launch
        raise PlanError(str(e)) from e


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
    cells: list[PlannedCell] = []
    seen: dict[str, int] = {}
    first_label: dict[tuple[str, str, int | None], RunSpec] = {}  # (base, hash, seed): that identity's first job
    per_settings: dict[int, tuple[Store, bool, bool, str, bool, Callable[[str, Any], str]]] = {}  # id(settings): what a verdict needs
    for i, ((spec, settings, composed), ov) in enumerate(zip(specs, job_overrides)):
        got = per_settings.get(id(settings))
        if got is None:
            st = store or Store(check_store_root(absolute_store_root(settings)))
            hint = flag_hint(settings)
            code_change = str(sweep_setting(settings, launcher, "code_change"))
            # Unset, an edited main script of an app that declares no code reruns its cells (nothing says
            # which of its lines compute them; Hydra's other launchers always run the script as it is now)
            explicit = sweep_setting_given(settings, launcher, "code_change")
            if code_change not in CODE_CHANGE:
                raise PlanError(f"code_change={code_change!r} is not one of {', '.join(CODE_CHANGE)}. Fix: "
                                f"{hint('code_change', 'refuse')} (default), rerun or accept")
            got = per_settings[id(settings)] = (st, bool(sweep_setting(settings, launcher, "new_variant")),
                                                bool(sweep_setting(settings, launcher, "retry_failed")), code_change,
                                                explicit, hint)
        st, new_variant, retry_failed, code_change, explicit, hint = got
        if not explicit and implicit_code(spec.code):
            code_change = "rerun"
        twin = first_label.setdefault((label_base(spec.config), spec.hash, spec.seed), spec)
        if twin.config != spec.config and twin.run_config == spec.run_config:
            spec = replace(spec, config=twin.config)  # one identity, two labels in this sweep: the first one's
        try:
            v, why, rd = verdict_for(st, spec, new_variant=new_variant, stall_after=stall_after, policy=policy,
                                     job_state=job_state, sweep_id=sweep_id, retry_failed=retry_failed, hint=hint)
        except NotADirectoryError as e:
            raise PlanError(f"store.root={st.root}: {e.filename} is not a directory. Fix: point store.root at "
                            f"a store directory (or a new path)") from e
        stored_label = (rd.path.parent if spec.seed is None else rd.path.parent.parent).name
        if stored_label != spec.config:  # stored under the label of the command line that first ran it
            spec = replace(spec, config=stored_label)
            first_label[(label_base(spec.config), spec.hash, spec.seed)] = spec
        v, why, note = code_verdict(spec, rd, v, why, code_change, hint)
        if spec.key in seen:  # the same cell twice in one sweep (e.g. seed=1,1): run it once
            v, why = "running-elsewhere", f"duplicate of job #{seen[spec.key]} in this sweep"
        seen.setdefault(spec.key, i)
        spec = replace(spec, code_change=code_change)  # RunDir.ensure_spec applies it when the cell is claimed
        cells.append(PlannedCell(index=i, overrides=list(ov), spec=spec, run_dir=rd, verdict=v, reason=why,
                                 composed=composed, settings=settings, code_note=note,
                                 composer=None if composed is not None else _composer(config_loader, config, ov, spec)))
    conflicts = [c for c in cells if c.verdict == "conflict"]
    if conflicts:
        raise PlanError("refusing to launch: " + "\n".join(f"{c.label}: {c.reason}" for c in conflicts))
    refuse_code_changes(cells, flag_hint(cells[0].settings) if cells else _default_hint)
    return cells


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
