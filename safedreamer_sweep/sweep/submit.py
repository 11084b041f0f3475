"""Submitting cells through submitit: the executor of each backend (local processes, each
controller in a session of its own; Slurm with the launcher's parameters), what one attempt holds,
the attempt the launcher pre-registers for a submitted job, and submitit's own stderr of a job.
The backends (backends/local.py, backends/slurm.py) submit with these.

Heavy imports (submitit, hydra internals) happen inside functions so plugin discovery stays fast.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.run_dir import RunDir


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
