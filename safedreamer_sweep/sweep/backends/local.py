"""The local backend: at most `max_parallel` cells at once, each in a slot pinned to one GPU. By
default (`warm_workers=true`) each slot has a warm worker (backends/warm_pool.py) that forks one process
per cell, whose pid is the job id; with `warm_workers=false` each cell is a submitit LocalExecutor
job whose id is its controller pid. Either way liveness and kills go through pids. Slurm enforces `mem_gb` itself;
here the supervisor polls each cell's process tree instead."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.run_dir import host
from safedreamer_sweep.sweep.backends import Backend, Refused, Started, Tracked
from safedreamer_sweep.sweep.backends.warm_pool import WarmPool, WarmUnavailable, preload_modules, shared_pool
from safedreamer_sweep.sweep.cell_task import CellTasks
from safedreamer_sweep.sweep.observe import pid_alive
from safedreamer_sweep.sweep.slots import SlotPool
from safedreamer_sweep.sweep.submit import Submission, cell_resources, make_executor, pre_register, temporary_environ

_WAKE_S = 0.1  # how soon after a cell's process exits the supervisor notices (and refills its slot)


def _sigkill(pid: Any) -> None:
    try:
        os.kill(int(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError, ValueError, TypeError):
        pass


@contextlib.contextmanager
def _stdio_to_devnull() -> Iterator[None]:
    """A detached job must not hold our stdout/stderr open (a caller reading them to EOF would wait
    for the cell); the cell's output goes to its run dir's logs/ anyway."""
    sys.stdout.flush()
    sys.stderr.flush()
    fds = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.close(fds[0])
        os.close(fds[1])


class LocalBackend(Backend):
    """Cells as local processes. Without `tasks` (reattaching with `watch`) it only observes and kills."""

    name = "local"

    def __init__(self, *, pool: SlotPool | None = None, tasks: CellTasks | None = None,
                 folder: Path | None = None, params: dict[str, Any] | None = None, detached: bool = False) -> None:
        self.pool, self.tasks, self.folder, self.params = pool, tasks, folder, params or {}
        self.detached = detached
        self.base_env = {str(k): str(v) for k, v in (self.params.get("env") or {}).items()}
        self.warm: WarmPool | None = None
        self._warm_refused: set[int] = set()
        self._ended_seen: weakref.WeakSet[Any] = weakref.WeakSet()  # cells' processes ended and woken for (wait)
        if tasks is not None and folder is not None and self.params.get("warm_workers", False):
            self.warm = shared_pool(Path(str(folder)).parent / "warm")

    def has_room(self, active: int, picked: int) -> bool:
        return self.pool is not None and len(self.pool.busy) + picked < self.pool.capacity

    def submit(self, cells: list[Tracked], exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        out: list[tuple[Tracked, Started | Refused]] = []
        if self.warm is not None and cells and self.pool is not None:
            # start the free slots' workers at once: their imports overlap
            free = [i for i in range(self.pool.capacity) if i not in self.pool.busy][:len(cells)]
            self.warm.warm_up([(i, self.pool.env(i, self.base_env)) for i in free], self._preload(cells[0]))
        for t in cells:
            try:
                out.append((t, self._submit_one(t)))
            except Exception as e:  # noqa: BLE001 (one cell's failure must not sink the others)
                out.append((t, Refused(f"submission failed: {e}")))
        return out

    def _submit_one(self, t: Tracked) -> Started:
        assert self.pool is not None and self.tasks is not None and self.folder is not None
        _ = t.payload.cfg  # compose the job (if planning did not) before taking a slot: a failure holds none
        slot = self.pool.acquire(t.key)
        assert slot is not None
        env = self.pool.env(slot, self.base_env)
        ex = make_executor("local", self.folder, self.params)
        gpu = self.pool.gpu_of(slot)
        if gpu is not None and gpu.isdigit():
            ex.update_parameters(gpus_per_node=1, visible_gpus=(int(gpu),))
        res = cell_resources("local", self.params, mem_gb=t.mem_gb, gpus=gpu)
        submitted_at = time.time()
        try:
            task = self.tasks(t.payload, env, {**res, "env": env})
            job = self._start_warm(slot, env, task, ex, t) if self.warm is not None else None
            if job is None:
                with temporary_environ(env), (_stdio_to_devnull() if self.detached else contextlib.nullcontext()):
                    job = ex.submit(task)
        except BaseException:
            self.pool.release(slot)
            raise
        pre_register(t.rd, job_id=str(job.job_id), resources={**res, "env": env}, sweep_id=self.tasks.sweep_id,
                     partition=None, exclude=None, submitted_at=submitted_at)
        t.slot_gpu = gpu
        return [Submission(key=t.key, job=job, job_id=str(job.job_id), backend="local", slot=slot, resources=res)]

    def _preload(self, t: Tracked) -> list[str]:
        assert self.tasks is not None
        return preload_modules(t.payload, self.tasks.task_function)

    def _start_warm(self, slot: int, env: dict[str, str], task: Any, ex: Any, t: Tracked) -> Any:
        """The cell as a child of its slot's warm worker; None (the cold path) when the worker
        cannot run cells, said once per slot."""
        assert self.warm is not None
        try:
            return self.warm.submit(slot, env, self._preload(t), task, ex.folder,
                                    timeout_s=60 * float(ex.parameters.get("timeout_min") or 0),
                                    signal_delay_s=float(ex.parameters.get("signal_delay_s") or 0),
                                    max_num_timeout=int(ex.max_num_timeout))
        except WarmUnavailable as e:
            if slot not in self._warm_refused:
                self._warm_refused.add(slot)
                print(f"[sds] {e}; slot {slot} starts this cell in a new process instead "
                      f"(hydra.launcher.warm_workers=false does so for every cell)", flush=True)
            return None

    def alive(self, t: Tracked, sub: Any) -> bool:
        process = getattr(getattr(sub, "job", None), "_process", None)
        if process is not None:
            return process.poll() is None
        return bool(pid_alive(int(sub.job_id)))

    def kill(self, t: Tracked, view: Any) -> None:
        # The training process runs here: SIGKILL it directly, so a frozen process cannot wake up and go on.
        if view.pid and view.host == host():
            _sigkill(view.pid)
        for sub in t.subs:
            _sigkill(sub.job_id)

    def cancel(self, sub: Any) -> None:
        _sigkill(sub.job_id)

    def over_memory(self, t: Tracked, view: Any) -> str | None:
        if not t.mem_gb or not view.pid or view.host != host():
            return None
        try:
            import psutil

            proc = psutil.Process(int(view.pid))
            rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except (ImportError, psutil.Error, ValueError):
            return None
        if rss <= t.mem_gb * 1024**3:
            return None
        return (f"exceeded memory limit: pid {view.pid} RSS {rss / 1024**3:.2f} GB > "
                f"hydra.launcher.mem_gb={t.mem_gb} GB (local limit, enforced by the supervisor)")

    def end_evidence(self, sub: Any, last: dict[str, Any]) -> dict[str, Any]:
        # the submitit controller's exit code is not the cell's: name the cell's pid instead
        return {**super().end_evidence(sub, last), "pid": last.get("pid")}

    def release(self, t: Tracked, sub: Any) -> None:
        if self.pool is not None and sub is not None and sub.slot is not None:
            self.pool.release(sub.slot)

    def wait(self, active: list[Tracked], timeout: float) -> None:
        """Sleep up to `timeout`, waking within _WAKE_S of any running cell's process exiting (a
        non-blocking waitpid per cell: cheap), so a freed slot is refilled at once. A process that
        ended before this call and was not yet woken for (it ended while the supervisor was busy
        submitting) returns at once; one woken for already does not again (no busy loop)."""
        procs = [p for t in active for sub in t.subs
                 if (p := getattr(getattr(sub, "job", None), "_process", None)) is not None]
        if self._woke_for(procs):
            return
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(_WAKE_S, left))
            if self._woke_for(procs):
                return

    def _woke_for(self, procs: list[Any]) -> bool:
        ended = [p for p in procs if p.poll() is not None and p not in self._ended_seen]
        self._ended_seen.update(ended)
        return bool(ended)
