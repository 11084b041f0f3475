"""Submission through submitit: the task a job runs (`CellTask`), local GPU slots, and the two
backends (local processes with a concurrency limit; Slurm job arrays).

Heavy imports (submitit, hydra internals) happen inside functions so plugin discovery stays fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.cell import RUN_DIR_ENV
from safedreamer_sweep.core.store import RunDir, host, lease_from_env, read_json

# ----------------------------------------------------------------------------- local GPU slots


def visible_gpus(configured: int | list | None = None) -> list[str]:
    """GPU ids this box may use: config `gpus` (a count or a list), else CUDA_VISIBLE_DEVICES,
    else `nvidia-smi -L`, else none (CPU only)."""
    if configured is not None:
        if isinstance(configured, int):
            return [str(i) for i in range(configured)]
        return [str(g) for g in configured]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=20).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


@dataclass
class SlotPool:
    """Local execution slots: `max_parallel` cells at once, and with GPUs, `runs_per_gpu` cells per
    GPU (slots = GPUs x runs_per_gpu, each slot pinned to one GPU)."""

    max_parallel: int
    gpus: list[str] = field(default_factory=list)
    runs_per_gpu: int = 1
    busy: dict[int, str] = field(default_factory=dict)  # slot index -> cell key

    @property
    def capacity(self) -> int:
        if self.gpus:
            return min(self.max_parallel, len(self.gpus) * self.runs_per_gpu)
        return self.max_parallel

    def acquire(self, key: str) -> int | None:
        """A free slot for `key`, spreading cells over GPUs first (slot i -> GPU i mod n)."""
        for i in range(self.capacity):
            if i not in self.busy:
                self.busy[i] = key
                return i
        return None

    def release(self, slot: int) -> None:
        self.busy.pop(slot, None)

    def gpu_of(self, slot: int) -> str | None:
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def env(self, slot: int, extra: dict[str, Any] | None = None) -> dict[str, str]:
        """The environment of the cell in `slot`: its own CUDA_VISIBLE_DEVICES and a JAX memory
        fraction of 1/runs_per_gpu (no preallocation, so co-located runs can share the GPU), plus
        the per-job variables from config (e.g. MUJOCO_GL=egl)."""
        out = {str(k): str(v) for k, v in (extra or {}).items()}
        gpu = self.gpu_of(slot)
        if gpu is not None:
            out["CUDA_VISIBLE_DEVICES"] = gpu
            out["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{1.0 / max(1, self.runs_per_gpu):.3f}"
            out["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        return out


# ----------------------------------------------------------------------------- the task of a job


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
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobStatus, run_job, setup_globals
        from omegaconf import OmegaConf, open_dict

        from safedreamer_sweep.sweep.claim import race_start
        from safedreamer_sweep.tasks.app import RecordedTask

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
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            out_f.close()
            err_f.close()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on the requeue signal: tell the cell why it is being stopped (run.py
        records it when it closes the attempt), then requeue the same task; it resumes from the
        newest checkpoint."""
        import submitit

        from safedreamer_sweep.core.store import atomic_write_json

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
            # the cell writes fenced by the lease generation this launcher holds (core/store.py)
            env = {**env, "SDS_LEASE": f"{cell.run_dir.path.name}:{cell.run_dir.generation}"}
        return CellTask(hydra_context=self.hydra_context, task_function=self.task_function, config=cell.cfg,
                        overrides=list(cell.overrides), job_num=self.initial_job_idx + cell.index,
                        singleton_state=self.singleton_state, run_dir=str(cell.run_dir.path),
                        store_root=self.store_root, env=env, resources=resources, sweep_id=self.sweep_id,
                        race=race, timeout_min=self.timeout_min, signal_delay_s=self.signal_delay_s)


# ----------------------------------------------------------------------------- backends


@dataclass
class Submission:
    """One submitted copy of a cell (a cell racing on several partitions has several)."""

    key: str
    job: Any
    job_id: str
    backend: str
    slot: int | None = None
    partition: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.time)


def slurm_mem(mem_gb: float | None) -> str | None:
    return None if not mem_gb else f"{max(1, round(float(mem_gb) * 1024))}M"


@contextlib.contextmanager
def temporary_environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ updated with `env` for the block, then restored (keys it lacked are removed)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _NewSessionPopen(subprocess.Popen):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("start_new_session", True)
        super().__init__(*args, **kwargs)


def _local_executor(folder: Path, python: str) -> Any:
    """submitit's LocalExecutor, each job's controller started in a session of its own: a terminal's
    Ctrl-C (SIGINT to the foreground process group) then reaches the launcher only, which says so and
    exits, while the cells keep running for `watch` (they died with the controllers' tracebacks when
    the controllers shared the terminal's group). submitit has no option for it: its start_controller's
    one Popen call is given a new session for the duration of the submission."""
    import types

    import submitit
    from submitit.local import local

    class SessionLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command: str) -> Any:
            saved = local.subprocess
            local.subprocess = types.SimpleNamespace(Popen=_NewSessionPopen)  # type: ignore[assignment]
            try:
                return super()._submit_command(command)
            finally:
                local.subprocess = saved

    return SessionLocalExecutor(folder=str(folder), python=python)


def make_executor(backend: str, folder: Path, params: dict[str, Any], *, mem_gb: float | None = None,
                  exclude: list[str] | None = None, partition: str | None = None) -> Any:
    """A submitit executor for `backend` ("local" | "slurm") with the launcher's parameters."""
    import submitit

    if backend == "local":
        # exitwatch.py is the cell's parent: it records the exit status submitit's controller drops
        lex = _local_executor(folder, f"{sys.executable} -m safedreamer_sweep.sweep.exitwatch {sys.executable}")
        lex.update_parameters(timeout_min=params.get("timeout_min") or 60 * 24 * 7,
                              signal_delay_s=int(params.get("signal_delay_s") or 30))
        return lex
    ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=int(params.get("max_num_timeout", 3)))
    excl = sorted(set((params.get("exclude") or "").split(",")) - {""} | set(exclude or []))
    p: dict[str, Any] = {
        "time": int(params.get("timeout_min") or 60),
        "cpus_per_task": params.get("cpus_per_task"),
        "gpus_per_node": params.get("gpus_per_node"),
        "mem": slurm_mem(mem_gb if mem_gb is not None else params.get("mem_gb")),
        "partition": partition or params.get("partition"),
        "qos": params.get("qos"),
        "account": params.get("account"),
        "constraint": params.get("constraint"),
        "exclude": ",".join(excl) or None,
        "gres": params.get("gres"),
        "array_parallelism": int(params.get("array_parallelism") or 256),
        "signal_delay_s": int(params.get("signal_delay_s") or 90),
        "setup": list(params.get("setup") or []),
        "additional_parameters": dict(params.get("additional_parameters") or {}),
        "job_name": params.get("name") or "sds",
        "stderr_to_stdout": False,
    }
    ex.update_parameters(**{k: v for k, v in p.items() if v is not None})
    return ex


def cell_resources(backend: str, params: dict[str, Any], *, mem_gb: float | None, gpus: str | None) -> dict:
    """What one attempt holds: the cost accounting reads it (gpus, cpus, mem_gb)."""
    if backend == "local":
        return {"gpus": 1 if gpus else 0, "gpu_ids": gpus, "cpus": params.get("cpus_per_task") or 1,
                "mem_gb": mem_gb}
    return {"gpus": params.get("gpus_per_node") or (1 if params.get("gres") else 0),
            "cpus": params.get("cpus_per_task") or 1, "mem_gb": mem_gb}


def pre_register(rd: RunDir, *, job_id: str, resources: dict, sweep_id: str, partition: str | None,
                 exclude: list[str] | None, submitted_at: float | None = None, pack_slot: int | None = None) -> None:
    """Record the attempt the launcher just submitted (outcome `submitted`); the cell fills it in.
    `submitted_at`: when the launcher began submitting it (default: now). A cell may have registered
    this attempt itself already (a warm worker's cell starts within milliseconds of its submission):
    then only what it lacks is added, and no second attempt is opened. `pack_slot`: the cell's place
    in a packed Slurm job (its own job step), which `watch` needs to judge and kill the cell alone."""
    submitted = time.time() if submitted_at is None else submitted_at

    def change(s: dict) -> None:
        attempts = s.setdefault("attempts", [])
        extra = {"job_id": job_id, "resources": resources, "sweep_id": sweep_id, "partition": partition,
                 "exclude": exclude or [], "submitted_at": submitted,
                 **({"pack_slot": pack_slot} if pack_slot is not None else {})}
        last = attempts[-1] if attempts else {}
        if (str(last.get("job_id")) == job_id and last.get("sweep_id") == sweep_id
                and last.get("outcome") in ("submitted", "running")):
            for k, v in extra.items():
                last.setdefault(k, v)
            last["submitted_at"] = min(float(last["submitted_at"]), submitted)
        elif last.get("outcome") == "submitted":
            last.update(extra)
        else:
            attempts.append({"n": len(attempts) + 1, "outcome": "submitted", **extra})

    rd.update_state(change)


def submitit_stderr(folder: Path, job_id: str) -> str:
    """Tail of submitit's own stderr file of a job (slurmstepd writes OOM kills there)."""
    for p in sorted(Path(folder).glob(f"**/{job_id}_*log.err")):
        try:
            return p.read_text(errors="replace")[-4000:]
        except OSError:
            continue
    return ""
