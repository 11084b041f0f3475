"""The launch stages the launcher calls in order (hydra_plugins/sds_launcher/launcher.py): plan the
sweep against the store, record it, claim its cells, build the backend and the supervisor, detach
or supervise, and turn the outcome into one JobReturn per override, in order."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.identity import app_of
from safedreamer_sweep.core.locks import LockBusy
from safedreamer_sweep.core.migrations import migrate
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.backends import Backend
from safedreamer_sweep.sweep.backends.local import LocalBackend
from safedreamer_sweep.sweep.backends.slurm import (
    SlurmBackend,
    have_slurm,
    slurm_state_lookup,
)
from safedreamer_sweep.sweep.cell_task import CellTasks
from safedreamer_sweep.sweep.claim import Lease, live_holder, try_lease
from safedreamer_sweep.sweep.compose import cell_base
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.failures import RetryPolicy, bad_nodes_of_store
from safedreamer_sweep.sweep.hooks import run_on_complete
from safedreamer_sweep.sweep.observe import JobState, observe_run
from safedreamer_sweep.sweep.plan import PlannedCell, plan_cells
from safedreamer_sweep.sweep.settings import absolute_store_root, check_store_root
from safedreamer_sweep.sweep.slots import SlotPool, visible_gpus
from safedreamer_sweep.sweep.submit import temporary_environ
from safedreamer_sweep.sweep.supervise import Supervisor, Tracked
from safedreamer_sweep.sweep.verdicts import RUNNABLE

log = logging.getLogger("sds_launcher")


class SweepIncomplete(CompactHydraException):
    """Raised through Hydra for a cell that is not done. A CompactHydraException, so Hydra prints
    just the one-line summary (no traceback) and exits 1."""


def say(msg: str) -> None:
    """The launcher's own lines go to the terminal (Hydra's log goes to files)."""
    print(msg, flush=True)
    log.debug(msg)


# launcher options with a range: (name, smallest allowed, what it means, allowed to be unset)
_RANGES = (("max_parallel", 1, "cells at once (unset: one per CPU core)", True),
           ("poll_s", 0.1, "seconds between polls", False),
           ("stall_after", 1, "seconds without env-step progress before a cell is stalled", False),
           ("max_attempts", 1, "attempts per cell", False),
           ("mem_factor", 1, "memory factor after an out-of-memory kill", False),
           ("runs_per_gpu", 1, "cells sharing one GPU", True),
           ("timeout_min", 1, "job time limit in minutes", True))
_PROGRESS_MODES = ("rich", "plain", "none")


def check_launcher_params(params: dict) -> None:
    """PlanError naming the option and its valid range for a launcher setting out of range (e.g.
    max_parallel=0 would otherwise silently mean every core)."""
    from safedreamer_sweep.core.schema import check_launcher

    refused = check_launcher(params)  # every option's declared type and range (core/schema.py)
    if refused:
        raise PlanError("launcher settings refused before anything was written:\n" + "\n".join(f"  {r}" for r in refused))
    for name, low, what, may_be_unset in _RANGES:
        if name not in params:
            continue
        v = params.get(name)
        if v is None and may_be_unset:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
            raise PlanError(f"hydra.launcher.{name}={v!r} is out of range: {what}, must be >= {low}"
                            + (" (or unset)" if may_be_unset else "")
                            + f". Fix: e.g. hydra.launcher.{name}={max(low, 1) if name != 'poll_s' else 5}")
    if params.get("progress", "rich") not in _PROGRESS_MODES:
        raise PlanError(f"hydra.launcher.progress={params.get('progress')!r} is not one of {'|'.join(_PROGRESS_MODES)}. "
                        f"Fix: hydra.launcher.progress=plain (one line every few seconds) or none")


def submitit_folder(backend: str, params: dict, store_root: Path) -> Path:
    """Where submitit keeps its pickles and logs. Slurm gets a folder per job (`%j`, substituted by
    submitit); locally submitit's controller would mkdir the template literally, so local jobs share
    one folder (submitit names every file after its job id anyway)."""
    from submitit.core.utils import JobPaths

    folder = Path(params.get("submitit_folder") or Path(store_root) / "launcher" / "submitit" / "%j")
    if backend == "local":
        folder = JobPaths.get_first_id_independent_folder(folder)
    return folder


def app_command() -> list[str]:
    """How to start the app that launched this sweep again (`python -m pkg` or `python app.py`),
    from the interpreter's own argv: `watch` resubmits a detached cell with it."""
    import sys

    argv = list(getattr(sys, "orig_argv", []) or [])
    if len(argv) > 2 and argv[1] == "-m":
        return [sys.executable, "-m", argv[2]]
    if len(argv) > 1 and argv[1].endswith(".py"):
        return [sys.executable, os.path.abspath(argv[1])]
    return [sys.executable, "-m", "safedreamer_sweep"]


def result_at(result: Any, path: str | None) -> Any:
    """The value at a dotted `path` ("ood.return_mean") of a cell result; None when it has none;
    the result itself when `path` is empty."""
    cur = result
    for part in (str(path).split(".") if path else []):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _objective(result: dict, path: str | None) -> Any:
    """`sweep.objective` ("ood.return_mean") picked out of a cell result as a float (for sweepers)."""
    if not path:
        return result
    cur = result_at(result, path)
    if cur is None:
        raise SweepIncomplete(f"sweep.objective={path!r} is missing from the result of {result.get('config')} "
                              f"seed {result.get('seed')} (keys: {sorted(result)})")
    return float(cur)


class _HandBack:
    """The task function of a job whose value comes from the store: it logs where from, and returns it."""

    def __init__(self, value: Any, message: str) -> None:
        self.value, self.message = value, message

    def __call__(self, cfg: Any) -> Any:
        log.info(self.message)
        return self.value


@dataclass
class Sweep:
    """One launch: its id, store, launcher settings and planned cells; each stage is a method."""

    id: str
    backend: str
    params: dict[str, Any]
    config: Any
    store: Store
    cells: list[PlannedCell]
    policy: RetryPolicy
    job_state: JobState | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    hydra_context: Any = None  # Hydra's, for the job directories of cells handed back from the store
    initial_job_idx: int = 0

    @property
    def stall_after(self) -> float:
        return float(self.params.get("stall_after", 600))

    @property
    def wait(self) -> bool:
        return bool(self.params.get("wait", True))

    @property
    def dry_run(self) -> bool:
        return bool(self.params.get("dry_run", False))

    @property
    def progress(self) -> str:
        return str(self.params.get("progress", "rich"))

    def settings(self, key: str) -> dict[str, Any]:
        """A settings group (sweep, cost, report, store) as plain data; the same for every job of
        the sweep, so the first cell's is read (no job is composed for it)."""
        from omegaconf import OmegaConf

        s = self.cells[0].settings if self.cells else None
        if s is None or key not in s:
            return {}
        return OmegaConf.to_container(s[key], resolve=True) or {}  # type: ignore[return-value]

    def job_return(self, c: PlannedCell, ok: bool, value: Any) -> Any:
        """The JobReturn of one job as Hydra's own launchers fill it: the job's config without `hydra`,
        its hydra config with the job id and number it ran with, and Hydra's output directory of the
        job (noted by tasks/app.py in the newest attempt). A cell not composed in this sweep (done
        before, planned from its group's config) has no cfg: composing it would cost a Hydra compose."""
        from hydra.core.utils import JobReturn, JobStatus
        from omegaconf import OmegaConf, open_dict

        cfg = hydra_cfg = working_dir = None
        if c.composed is not None:
            cfg = OmegaConf.masked_copy(c.composed, [str(k) for k in c.composed if k != "hydra"])
            hydra_cfg = OmegaConf.masked_copy(c.composed, ["hydra"])
            attempts = c.run_dir.read_state().get("attempts") or [] if c.run_dir.state_path.exists() else []
            note: dict[str, Any] = next((a["hydra"] for a in reversed(attempts) if a.get("hydra")), {})
            with open_dict(hydra_cfg):
                hydra_cfg.hydra.job.id = note.get("job_id", f"sds-{self.id}-{c.index}")
                hydra_cfg.hydra.job.num = note.get("job_num", c.index)
            working_dir = note.get("output_dir")
        return JobReturn(overrides=list(c.overrides), cfg=cfg, hydra_cfg=hydra_cfg, working_dir=working_dir,
                         task_name=str(self.config.hydra.job.name),
                         status=JobStatus.COMPLETED if ok else JobStatus.FAILED, _return_value=value)

    def cached_return(self, c: PlannedCell) -> Any:
        """A done cell's JobReturn: the task function's stored return value (any app), or the package's
        own result read from its evaluations (or the sweep.objective picked out of it). A cell this
        sweep ran already has its Hydra job directory (its cell process ran run_job): its JobReturn
        points there. A cell done before is handed back (handed_back)."""
        from safedreamer_sweep.core.files import StoreError
        from safedreamer_sweep.tasks.run import cell_result

        ran_here = c.verdict in RUNNABLE
        try:
            if c.spec.done_when == "return":
                value = c.run_dir.read_result()
            else:
                value = _objective(cell_result(c.spec, c.run_dir), self.settings("sweep").get("objective"))
        except (StoreError, SweepIncomplete) as e:
            return self.job_return(c, False, e if isinstance(e, SweepIncomplete) else SweepIncomplete(str(e)))
        return self.job_return(c, True, value) if ran_here else self.handed_back(c, value)

    def handed_back(self, c: PlannedCell, value: Any) -> Any:
        """The JobReturn of a done cell whose stored value is handed back, with a real Hydra job
        directory in this sweep's hydra.sweep.dir, made by Hydra's own run_job as for a job that runs
        (.hydra/config.yaml, hydra.yaml, overrides.yaml, the `<task>.log` saying where the value came
        from and when; callbacks' on_job_start / on_job_end), so tooling that reads a multirun
        directory sees no hole. The task function only hands the value back. The launcher's logging
        is restored afterwards. hydra.launcher.cached_job_dirs=false skips it (no composition)."""
        if self.hydra_context is None or not self.params.get("cached_job_dirs", True):
            return self.job_return(c, True, value)
        from hydra.core.utils import run_job
        from omegaconf import open_dict

        from safedreamer_sweep.core.cell import RUN_DIR_ENV

        cfg = c.cfg.copy()  # type: ignore[union-attr]
        with open_dict(cfg):
            cfg.hydra.job.id = f"sds-{self.id}-{c.index}"
            cfg.hydra.job.num = self.initial_job_idx + c.index
        state = c.run_dir.read_state()
        ended = max([a.get("ended_at") or 0 for a in state.get("attempts") or []] + [0]) or state.get("updated_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ended)) if ended else "at an unrecorded time"
        message = (f"{c.label}: nothing ran; the result is handed back from run directory {c.run_dir.path} "
                   f"(finished {when}; handed back {time.strftime('%Y-%m-%d %H:%M:%S')} by sweep {self.id})")
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:  # SDS_HANDED_BACK: our callback records nothing for it
            with temporary_environ({RUN_DIR_ENV: str(c.run_dir.path), "SDS_HANDED_BACK": "1"}):
                return run_job(hydra_context=self.hydra_context, task_function=_HandBack(value, message), config=cfg,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    def settled(self) -> tuple[int, int, int]:
        """For the progress view: distinct cells, and how many were already done / failed at plan time."""
        first = {c.spec.key: c.verdict for c in reversed(self.cells)}
        return len(first), sum(v == "done" for v in first.values()), sum(v == "failed" for v in first.values())

    # --- the stages, in order
    def dry_run_returns(self) -> list[Any]:
        say("[sds] dry run: nothing submitted")
        return [self.job_return(c, True, {"verdict": c.verdict, "reason": c.reason, "run_dir": str(c.run_dir.path)})
                for c in self.cells]

    def record(self) -> None:
        """The sweep manifest in the store: what `watch` needs to reattach and `status` to explain.
        Hydra's sweep dir is created too, as Hydra's own launchers leave it even when no job runs here
        (every cell done): sweepers write their results there (Optuna's optimization_results.yaml)."""
        from omegaconf import OmegaConf

        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        hydra_ov = [o for o in OmegaConf.to_container(self.config.hydra.overrides.hydra) or []  # type: ignore[union-attr]
                    if not re.match(r"hydra\.launcher\.(wait|mem_gb|exclude|dry_run)=", str(o))]
        self.manifest = {
            "created_at": time.time(), "detached": not self.wait, "cwd": os.getcwd(), "hydra_overrides": hydra_ov,
            "app_command": app_command(),  # what `watch` runs to resubmit a cell of this (any) app
            "cells": [self._manifest_cell(c) for c in self.cells],  # code_change: work by other code, and what sweep.code_change did
            "on_complete_commands": [str(x) for x in (self.settings("sweep").get("on_complete") or [])],
            "launcher": {"backend": self.backend, **{k: v for k, v in self.params.items() if not k.startswith("_")}},
            "jobs": {}, "cost": self.settings("cost"),
        }
        self.store.write_sweep_manifest(self.id, self.manifest)

    def _manifest_cell(self, c: PlannedCell) -> dict[str, Any]:
        return {"config": c.spec.config, "seed": c.spec.seed, "hash": c.spec.hash, "overrides": c.overrides,
                "done_when": c.spec.done_when, "verdict": c.verdict, **({"code_change": c.code_note} if c.code_note else {})}

    def plan_jobs(self, job_overrides: Sequence[Sequence[str]]) -> list[PlannedCell]:
        """Plan jobs against the store as it is now, keeping nothing (reads only; PlanError on a job
        the schema, the trainer or the store refuses)."""
        return plan_cells(job_overrides, config_loader=self.hydra_context.config_loader, config=self.config,
                          store=self.store, stall_after=self.stall_after, policy=self.policy, job_state=self.job_state,
                          sweep_id=self.id, log=say, fast=bool(self.params.get("plan_fast", True)), launcher=self.params)

    def plan_more(self, job_overrides: Sequence[Sequence[str]], indices: Sequence[int]) -> list[PlannedCell]:
        """Plan more jobs into this sweep while it runs (a study's next trial: one job per seed), each
        with its job number (`indices`: Hydra's job numbers and output dirs continue from the study's
        trial number), against the store as it is now; recorded in the manifest. Reads only, like the
        first plan, until the manifest is written."""
        cells = self.plan_jobs(job_overrides)
        for c, i in zip(cells, indices):
            c.index = i
        self.cells.extend(cells)
        if self.manifest:
            self.manifest["cells"].extend(self._manifest_cell(c) for c in cells)
            self.store.write_sweep_manifest(self.id, self.manifest)
        return cells

    def claim(self, cells: Sequence[PlannedCell] | None = None) -> list[Tracked]:
        """Claim each runnable cell (two overlapping sweeps never run one cell twice); a cell another
        live sweep holds is only watched; done and failed cells are not tracked. `cells`: these only
        (a study's new trial), else every planned cell."""
        tracked: dict[str, Tracked] = {}
        for c in self.cells if cells is None else cells:
            if c.spec.key in tracked or c.verdict not in RUNNABLE | {"running-elsewhere"}:
                continue
            t = Tracked(key=c.spec.key, rd=c.run_dir, label=c.label, payload=c,
                        mem_gb=float(self.params["mem_gb"]) if self.params.get("mem_gb") else None)
            if c.verdict == "running-elsewhere":
                if "duplicate of job" in c.reason:
                    continue
                t.watch_only = True
            else:
                try:  # bounded: a cell process frozen inside a write may hold the data lock
                    c.run_dir.supervised().ensure_spec(c.spec.spec_document())
                    lease = try_lease(c.run_dir, self.id, backend=self.backend, stall_after=self.stall_after,
                                      job_state=self.job_state, lease_s=self.params.get("lease_s"))
                except LockBusy as e:
                    lease = Lease(False, str(e))
                if not lease.ok:
                    say(f"[sds] {c.label}: not claimed ({lease.why}); watching it instead")
                    t.watch_only = True
                else:  # every write for this cell, ours and its process's, is fenced by the lease
                    c.run_dir = t.rd = c.run_dir.fenced(lease.generation)
            tracked[c.spec.key] = t
        return list(tracked.values())

    def make_backend(self, hydra_context: Any, task_function: Any, initial_job_idx: int) -> Backend:
        from hydra.core.singleton import Singleton

        tasks = CellTasks(hydra_context=hydra_context, task_function=task_function,
                          singleton_state=Singleton.get_state(), initial_job_idx=initial_job_idx,
                          store_root=str(self.store.root), sweep_id=self.id,
                          timeout_min=float(self.params.get("timeout_min") or 0),
                          signal_delay_s=float(self.params.get("signal_delay_s") or 0))
        folder = submitit_folder(self.backend, self.params, self.store.root)
        if self.backend == "slurm":
            return SlurmBackend(tasks=tasks, folder=folder, params=self.params)
        pool = SlotPool(max_parallel=int(self.params.get("max_parallel") or os.cpu_count() or 1),  # None: every core
                        gpus=visible_gpus(self.params.get("gpus")), runs_per_gpu=int(self.params.get("runs_per_gpu") or 1))
        return LocalBackend(pool=pool, tasks=tasks, folder=folder, params=self.params, detached=not self.wait)

    def excluded_nodes(self) -> list[str]:
        """hydra.launcher.exclude, and with exclude_bad_nodes_across_sweeps every node this store's
        attempts recorded a node fault on (sweep/failures.bad_nodes)."""
        nodes = [x for x in (self.params.get("exclude") or "").split(",") if x]
        if self.params.get("exclude_bad_nodes_across_sweeps"):
            bad = [n["node"] for n in bad_nodes_of_store(self.store) if n["node"] not in nodes]
            if bad:
                say(f"[sds] excluding node(s) {','.join(bad)}: node faults recorded in this store "
                    f"(exclude_bad_nodes_across_sweeps=true)")
            nodes += bad
        return nodes

    def supervisor(self, backend: Backend, tracked: list[Tracked]) -> Supervisor:
        sup = Supervisor(store=self.store, backend=backend, sweep_id=self.id, stall_after=self.stall_after,
                         policy=self.policy, poll_s=float(self.params.get("poll_s", 5.0)), log=say,
                         exclude=self.excluded_nodes(), lease_s=self.params.get("lease_s"))
        for t in tracked:
            sup.add(t)
        return sup

    def detach(self, sup: Supervisor) -> list[Any]:
        """Submit what has room now, record the jobs for `watch`, and return without waiting."""
        sup.submit_ready()
        self._record_jobs({t.key: [s.job_id for s in t.subs] for t in sup.tracked if t.subs}, detached=True)
        say(f"[sds] detached: {sum(len(t.subs) for t in sup.tracked)} job(s) submitted; "
            f"reattach with: safedreamer-sweep watch {self.store.root}")
        by_key = {t.key: t for t in sup.tracked}
        return [self.cached_return(c) if c.verdict == "done" else self.job_return(c, True, {
                    "detached": True, "verdict": c.verdict,
                    "jobs": [s.job_id for s in by_key[c.spec.key].subs] if c.spec.key in by_key else []})
                for c in self.cells]

    def supervise(self, sup: Supervisor) -> dict[str, Tracked]:
        """Run the supervisor to the end. Ctrl-C stops supervising, not the cells: their jobs are
        recorded so `watch` can reattach."""
        try:
            finished = {t.key: t for t in sup.run()}
        except KeyboardInterrupt:
            self._record_jobs({t.key: [s.job_id for s in t.subs] for t in sup.active if t.subs}, detached=True)
            say(f"[sds] interrupted: {len(sup.active)} cell(s) keep running, {len(sup.queue)} not submitted; "
                f"reattach with: safedreamer-sweep watch {self.store.root}")
            raise SystemExit(130) from None  # the line above is the whole message: no traceback
        except Exception as e:  # noqa: BLE001 (the loop guards its stages; this is the last line of defence)
            with contextlib.suppress(Exception):
                self._record_jobs({t.key: [s.job_id for s in t.subs] for t in sup.active if t.subs}, detached=True)
            raise SweepIncomplete(
                f"[sds] the supervisor stopped ({type(e).__name__}: {e}); {len(sup.active)} cell(s) keep running, "
                f"{len(sup.queue)} not submitted, the store is consistent. Resume with: safedreamer-sweep watch "
                f"{self.store.root} (or run the same command again)") from None
        self._record_jobs({k: sorted({str(a.get("job_id")) for a in t.rd.read_state().get("attempts", [])
                                      if a.get("job_id")}) for k, t in finished.items()})
        return finished

    def _record_jobs(self, jobs: dict[str, list[str]], detached: bool | None = None) -> None:
        self.manifest["jobs"] = jobs
        if detached is not None:
            self.manifest["detached"] = detached
        self.store.write_sweep_manifest(self.id, self.manifest)

    def job_returns(self, finished: dict[str, Tracked]) -> tuple[list[Any], str]:
        """One JobReturn per override in order (a cell not done is FAILED with SweepIncomplete), and
        the one-line summary of the sweep."""
        why_not: dict[int, str] = {}
        for c in self.cells:
            view = observe_run(c.run_dir, stall_after=self.stall_after) if c.run_dir.spec_path.exists() else None
            if view is None or view.phase != "done":
                tf = finished.get(c.spec.key)
                why_not[c.index] = tf.reason if tf is not None and tf.reason else f"{c.verdict}: {c.reason}"
        done = f"{len(self.cells) - len(why_not)}/{len(self.cells)} cells done"
        summary = (f"sweep {self.id}: {done}" + ("; not done: " + "; ".join(
            f"{c.label} ({why_not[c.index][:200]})" for c in self.cells if c.index in why_not) if why_not else ""))
        out = [self.cached_return(c) if c.index not in why_not else self.job_return(c, False, SweepIncomplete(
                   f"{c.label} is not done ({why_not[c.index][:400]}); sweep {self.id}: {done} "
                   f"(status: safedreamer-sweep status {self.store.root})"))
               for c in self.cells]
        return out, summary

    def report_settings(self) -> dict[str, Any] | None:
        """What the end-of-sweep report reads from the config (report, cost, sweep, store)."""
        return {k: v for k in ("report", "cost", "sweep", "store") if (v := self.settings(k))} or None

    def run_hooks(self, sup: Supervisor) -> None:
        all_terminal = all(t.result is not None for t in sup.finished) and not sup.active and not sup.queue
        run_on_complete(list(self.settings("sweep").get("on_complete") or []), store=self.store, sweep_id=self.id,
                        all_terminal=all_terminal, dry_run=False, log=say)


def plan_sweep(backend: str, params: dict[str, Any], config: Any, hydra_context: Any,
               job_overrides: Sequence[Sequence[str]], initial_job_idx: int = 0) -> Sweep:
    """Check the launcher settings, bring a store of an older format forward (core/migrations.py: the one
    write before the plan, printed; it changes no cell's work) and plan every job against the store.
    Reads only otherwise: a PlanError (a CompactHydraException: Hydra prints its message, no traceback,
    exit 1) leaves the store as it found it."""
    check_launcher_params(params)
    try:
        store = Store(check_store_root(absolute_store_root(config)))  # a newer format is refused here
    except StoreError as e:
        raise PlanError(str(e)) from None
    _ = str(config.hydra.sweep.dir)  # resolve ${now:} once so every job shares one sweep dir
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    lookup = slurm_state_lookup() if backend == "slurm" and have_slurm() else None
    stall_after = float(params.get("stall_after", 600))
    app = app_of(config)
    try:  # a store of an older format: brought forward, and the plan says so
        migrate(store.root, held=lambda rd: live_holder(rd, stall_after=stall_after, job_state=lookup), app=app,
                app_label=cell_base(config)[0] if app else None, say=say)
    except StoreError as e:
        raise PlanError(str(e)) from None
    policy = RetryPolicy(max_attempts=int(params.get("max_attempts", 3)), mem_factor=float(params.get("mem_factor", 1.5)),
                         retry_errors=bool(params.get("retry_errors", False)))
    cells = plan_cells(job_overrides, config_loader=hydra_context.config_loader, config=config, store=store,
                       stall_after=stall_after, policy=policy, job_state=lookup, sweep_id=sweep_id, log=say,
                       fast=bool(params.get("plan_fast", True)), launcher=params)
    return Sweep(id=sweep_id, backend=backend, params=params, config=config, store=store, cells=cells,
                 policy=policy, job_state=lookup, hydra_context=hydra_context, initial_job_idx=initial_job_idx)
