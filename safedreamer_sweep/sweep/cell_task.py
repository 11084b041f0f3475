"""What a submitit job runs: one cell (`CellTask`, built for each planned cell by `CellTasks`),
through Hydra's run_job with the per-job config the launcher planned, its output in the run
directory's attempt logs; and on the requeue signal, why it is being stopped.

Heavy imports (submitit, hydra internals) happen inside functions so plugin discovery stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.cell import RUN_DIR_ENV
from safedreamer_sweep.core.files import read_json
from safedreamer_sweep.core.run_dir import RunDir, host, lease_from_env


def _interrupt_cause() -> tuple[str, str]:
    """Called on the requeue signal (SIGUSR1/2 from Slurm or submitit): time limit or preemption."""
    start = float(os.environ.get("SDS_ATTEMPT_STARTED", time.time()))
    limit = float(os.environ.get("SDS_TIMEOUT_MIN", "0") or 0) * 60
    delay = float(os.environ.get("SDS_SIGNAL_DELAY_S", "0") or 0)
    ran = time.time() - start
    if limit and ran >= limit - delay - 30:
        return "timeout", (f"requeue signal after {ran:.0f}s of a {limit / 60:.0f} min limit "
                           f"(signal_delay_s={delay:.0f}); requeued by submitit, resumes from its checkpoint")
    return "preempted", f"requeue signal after {ran:.0f}s, well before the time limit; requeued by submitit"


@contextlib.contextmanager
def _attempt_logs(rd: RunDir, n: int, job_id: str) -> Iterator[None]:
    """This process's stdout and stderr (fds 1 and 2) appended to attempt `n`'s logs/attempt_NN.{out,err}
    for the block (each headed by a line naming the attempt), then restored."""
    out_path, err_path = rd.attempt_log_paths(n)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    out_f, err_f = open(out_path, "a"), open(err_path, "a")  # noqa: SIM115 (closed in finally)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for f in (out_f, err_f):
        f.write(f"===== attempt {n} job {job_id} on {host()} pid {os.getpid()} at {stamp} =====\n")
        f.flush()
    print(f"[sds] cell output of attempt {n}: {out_path} / {err_path}", flush=True)
    os.dup2(out_f.fileno(), 1)
    os.dup2(err_f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        out_f.close()
        err_f.close()


class CellTask:
    """What a submitit job runs: one cell, through Hydra's run_job with the real task function and
    the per-job config the launcher composed and planned (`config`).

    Idempotent (run_cell skips what is done and resumes from the newest checkpoint), so a requeued
    or retried job simply runs it again. Each attempt's stdout/stderr go to the run directory's
    logs/attempt_NN.{out,err} (appended, never overwritten)."""

    def __init__(self, *, hydra_context: Any, task_function: Any, config: Any, overrides: list[str],
                 job_num: int, singleton_state: Any, run_dir: str, store_root: str, env: dict[str, str],
                 resources: dict[str, Any], sweep_id: str, race: bool = False,
                 timeout_min: float = 0, signal_delay_s: float = 0) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.overrides = overrides
        self.job_num = job_num
        self.singleton_state = singleton_state
        self.run_dir = run_dir
        self.store_root = store_root
        self.env = env
        self.resources = resources
        self.sweep_id = sweep_id
        self.race = race
        self.timeout_min = timeout_min
        self.signal_delay_s = signal_delay_s

    def _register_attempt(self, rd: RunDir, job_id: str) -> int:
        """Make sure the newest attempt is a `submitted` one carrying this job's id and resources
        (the launcher pre-registers it; a requeued job registers its own)."""
        number = 0
        node = os.environ.get("SLURMD_NODENAME") or host()

        def change(s: dict) -> None:
            nonlocal number
            attempts = s.setdefault("attempts", [])
            extra = {"job_id": job_id, "node": node, "resources": self.resources,
                     "partition": os.environ.get("SLURM_JOB_PARTITION"), "sweep_id": self.sweep_id,
                     # what the cell saw of its GPU share (checked by the packing tests)
                     "gpu_env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                             "SDS_PACK_SLOT", "SLURM_STEP_ID") if k in os.environ}}
            prev = attempts[-1] if attempts else None
            if prev is not None and prev.get("outcome") == "running":
                # The previous run of this cell could not close its attempt (requeued, killed):
                # close it with what its requeue handler left behind, else as lost.
                note = read_json(rd.path / ".requeue.json") or {}
                if note.get("n") == prev.get("n"):
                    prev.update(outcome="interrupted", cause=note.get("cause"), evidence=note.get("evidence"),
                                ended_at=note.get("at"))
                else:
                    prev.update(outcome="interrupted", cause="lost", ended_at=time.time(),
                                evidence=f"pid {prev.get('pid')} on {prev.get('host')} ended without an end "
                                         f"marker; found when job {job_id} started the cell again")
                prev["classified_by"] = "next attempt"
            if attempts and attempts[-1].get("outcome") == "submitted":
                attempts[-1].update(extra)
            else:
                attempts.append({"n": len(attempts) + 1, "outcome": "submitted", "submitted_at": time.time(), **extra})
            number = attempts[-1]["n"]

        rd.update_state(change)
        return number

    def __call__(self) -> Any:
        import submitit

        from safedreamer_sweep.sweep.claim import race_start

        os.environ.update(self.env)
        os.environ.update(SDS_ATTEMPT_STARTED=str(time.time()), SDS_TIMEOUT_MIN=str(self.timeout_min),
                          SDS_SIGNAL_DELAY_S=str(self.signal_delay_s))
        rd = RunDir(Path(self.run_dir), lease_from_env(Path(self.run_dir)))  # fenced by SDS_LEASE
        # This process is the cell planned at run_dir: callbacks (report/callback.py) must not plan it again
        # (in here the main script is submitit's, not the app's, so its identity could not be recomputed)
        os.environ[RUN_DIR_ENV] = str(rd.path)
        job_id = str(submitit.JobEnvironment().job_id)
        os.environ["SDS_JOB_ID"] = job_id
        if self.race:
            winner = race_start(rd, job_id)
            if winner:
                print(f"[sds] {rd.path}: job {job_id} lost the start race to job {winner}; exiting without running")
                return {"lost_race_to": winner}
        n = self._register_attempt(rd, job_id)
        with _attempt_logs(rd, n, job_id):
            return self._run_job(rd, job_id)

    def _run_job(self, rd: RunDir, job_id: str) -> Any:
        """The cell, through Hydra's run_job as every launcher runs a job: its output dir, chdir and callbacks."""
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobStatus, run_job, setup_globals
        from omegaconf import OmegaConf, open_dict

        from safedreamer_sweep.tasks.app import RecordedTask

        Singleton.set_state(self.singleton_state)
        setup_globals()
        # The exact config the launcher planned (not recomposed from conf/ files that may have
        # been edited since): the cell trains what its identity says.
        cfg = self.config.copy() if self.config is not None else \
            self.hydra_context.config_loader.load_sweep_config(self.config, list(self.overrides))
        with open_dict(cfg):
            if OmegaConf.select(cfg, "store.root", default=None) is not None:  # an app with its own store setting
                cfg.store.root = self.store_root
            cfg.hydra.job.id = job_id
            cfg.hydra.job.num = self.job_num
        # any task function, recorded as the cell (tasks/app.py); Hydra's output dir, chdir and
        # callbacks as run_job does them for every launcher
        ret = run_job(hydra_context=self.hydra_context, task_function=RecordedTask(self.task_function, rd.path),
                      config=cfg, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret._return_value

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on the requeue signal: tell the cell why it is being stopped (run.py
        records it when it closes the attempt), then requeue the same task; it resumes from the
        newest checkpoint."""
        import submitit

        from safedreamer_sweep.core.files import atomic_write_json

        cause, evidence = _interrupt_cause()
        os.environ["SDS_INTERRUPT_CAUSE"] = cause
        os.environ["SDS_INTERRUPT_EVIDENCE"] = evidence
        # No lock here (a signal handler must not wait on a lock the main thread may hold): a side
        # note the next run of the cell uses to close this attempt if the cell cannot.
        rd = RunDir(Path(self.run_dir), lease_from_env(Path(self.run_dir)))  # fenced by SDS_LEASE
        n = len(rd.read_state().get("attempts") or [])
        atomic_write_json(rd.path / ".requeue.json", {"n": n, "cause": cause, "evidence": evidence, "at": time.time(),
                                                      "job_id": os.environ.get("SDS_JOB_ID")})
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class CellTasks:
    """Builds the CellTask of each planned cell: what the launcher hands every job besides the
    cell itself (Hydra's context and task function, the sweep, the time limits)."""

    hydra_context: Any
    task_function: Any
    singleton_state: Any
    initial_job_idx: int
    store_root: str
    sweep_id: str
    timeout_min: float = 0
    signal_delay_s: float = 0

    def __call__(self, cell: Any, env: dict[str, str], resources: dict[str, Any], race: bool = False) -> CellTask:
        if cell.run_dir.generation is not None:
            # the cell writes fenced by the lease generation this launcher holds (core/run_dir.py)
            env = {**env, "SDS_LEASE": f"{cell.run_dir.path.name}:{cell.run_dir.generation}"}
        return CellTask(hydra_context=self.hydra_context, task_function=self.task_function, config=cell.cfg,
                        overrides=list(cell.overrides), job_num=self.initial_job_idx + cell.index,
                        singleton_state=self.singleton_state, run_dir=str(cell.run_dir.path),
                        store_root=self.store_root, env=env, resources=resources, sweep_id=self.sweep_id,
                        race=race, timeout_min=self.timeout_min, signal_delay_s=self.signal_delay_s)

