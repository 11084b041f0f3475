"""Warm workers for the local backend, the launcher's side: one long-lived process per slot that has
imported what a cell needs (Hydra, submitit, the built-in trainer and JAX) and forks one child per
cell (the process itself: sweep/backends/warm_worker.py).

Why a fork server, not a process that runs cell after cell: a forked child is a fresh worker for
free. A crash, a kill or a stall ends the child only, and the next cell forks from a parent that
has never run a cell, so nothing of one cell's state (module globals, Hydra's singletons, the
working directory, os.environ, JAX's caches, open files) reaches the next. The parent never
initialises a JAX backend nor compiles anything (forking after XLA has started its thread pools
deadlocks, which JAX warns about), so compiled programs are shared between cells through JAX's
persistent compilation cache in the store (tasks/run.py `use_store_jax_cache`): equal shapes load
instead of compiling. What a cell saves is the interpreter start, the imports, submitit's
controller and the exit watcher: two fewer processes and one fewer interpreter start per cell.

Here: the pool of a launcher's workers (`WarmPool`, `shared_pool`), the handle on one worker
process, a cell as submitit's LocalJob sees its process (its returncode read from the worker's exit
record), and what a worker preloads (`preload_modules`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from safedreamer_sweep.sweep.backends import warm_worker
from safedreamer_sweep.sweep.exit_records import exit_record_path, read_record

__all__ = ["BASE_PRELOAD", "WarmPool", "WarmUnavailable", "WarmWorker", "preload_modules", "shared_pool"]

_ANSWER_S = 180.0  # how long the launcher waits for a worker's answer (its first one includes the imports)
_BUILTIN_PRELOAD = ("safedreamer_sweep.tasks.run", "safedreamer_sweep.trainer.ppo_lag",
                    "safedreamer_sweep.trainer.evaluate")
# numpy.core sets these while it imports and removes them after (when they were unset): a launcher
# whose background thread imports numpy shows them for a moment, which is no change of environment.
_IMPORT_TRANSIENT_ENV = ("OPENBLAS_MAIN_FREE", "GOTOBLAS_MAIN_FREE")
BASE_PRELOAD = ("hydra.core.utils", "omegaconf", "submitit", "cloudpickle", "psutil", "filelock",
                "safedreamer_sweep.sweep.submit", "safedreamer_sweep.sweep.cell_task", "safedreamer_sweep.tasks.app")


class WarmUnavailable(RuntimeError):
    """The worker cannot run cells (it failed to start, to import, or is not fork-safe)."""


def _inherited() -> tuple[str, dict[str, str]]:
    """What a worker's imports saw of the launcher: its working directory and environment. A
    worker whose imports saw other ones than a cold cell's would is replaced."""
    return os.getcwd(), {k: v for k, v in os.environ.items() if k not in _IMPORT_TRANSIENT_ENV}


class _WarmProcess:
    """A cell running in a warm worker, as submitit's LocalJob sees a process: `poll()` is None while
    it runs, else its returncode (from the worker's exit record; -9 when the worker died without
    one, which killed the cell with it); `send_signal` signals the cell's pid."""

    def __init__(self, pid: int, record: Path, worker: WarmWorker) -> None:
        self.pid, self.record, self.worker = pid, record, worker
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self.record.exists():
            rec = read_record(self.record)
            try:
                self.returncode = int(rec["returncode"])  # type: ignore[index]
            except (ValueError, KeyError, TypeError):  # None: unreadable
                return None  # being replaced (written atomically): look again next time
            return self.returncode
        if self.worker.proc.poll() is not None and not _pid_running(self.pid):
            self.returncode = -int(signal.SIGKILL)  # the worker died; PR_SET_PDEATHSIG took the cell
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)


def _pid_running(pid: int) -> bool:
    """Alive and not a zombie (an ended child its worker has not reaped yet is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class WarmWorker:
    """The launcher's handle on one slot's worker process."""

    def __init__(self, slot: int, env: dict[str, str], preload: list[str], log_dir: Path) -> None:
        self.slot, self.env, self.preload = slot, dict(env), list(preload)
        # what a cold cell inherits from the launcher at its submission: kept as of the worker's start
        self.inherited = _inherited()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"warm_slot{slot}_{os.getpid()}_{int(time.time() * 1000)}.log"
        with open(self.log_path, "ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches the launcher only (cells keep running).
            self.proc = subprocess.Popen(
                [sys.executable, "-m", warm_worker.__name__, *self.preload],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **self.env},
                start_new_session=True, cwd=os.getcwd())
        self.current: _WarmProcess | None = None  # the cell it runs

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def idle(self) -> bool:
        return self.current is None or self.current.poll() is not None

    def start_cell(self, pickle: Path, folder: str, env: dict[str, str], timeout_s: float,
                   signal_delay_s: float) -> int:
        """Hand the worker one cell; returns the pid of the child that runs it."""
        # the launcher's working directory and environment of this moment, as a cold cell inherits them
        req = {"pickle": str(pickle), "folder": folder, "cwd": os.getcwd(), "environ": dict(os.environ),
               "env": env, "timeout_s": timeout_s, "signal_delay_s": signal_delay_s}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as e:
            raise WarmUnavailable(f"warm worker of slot {self.slot} (pid {self.proc.pid}) is gone ({e}); "
                                  f"its log: {self.log_path}") from e
        ready, _, _ = select.select([self.proc.stdout], [], [], _ANSWER_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close(kill=True)
            raise WarmUnavailable(f"warm worker of slot {self.slot} (pid {self.proc.pid}) did not answer within "
                                  f"{_ANSWER_S:.0f} s; its log: {self.log_path}")
        answer = json.loads(line)
        if "pid" not in answer:
            self.close(kill=True)
            raise WarmUnavailable(f"warm worker of slot {self.slot} cannot run cells: {answer.get('error')}; "
                                  f"its log: {self.log_path}")
        return int(answer["pid"])

    def close(self, kill: bool = False) -> None:
        """Close its stdin: it exits once its cell (if any) has ended. kill: at once (no cell runs)."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
                self.proc.wait(timeout=5)


class WarmPool:
    """One worker per local slot, started on first use and again whenever it is found gone."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: dict[int, WarmWorker] = {}

    def worker(self, slot: int, env: dict[str, str], preload: list[str]) -> WarmWorker:
        # as submitit's controller sets it for a local job: the slot's GPU, or none
        env = {**env, "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "")}
        w = self.workers.get(slot)
        # A worker whose cell still runs (a detached launch's) is let go, never queued behind; so is
        # one started from another working directory or environment (a cell would not see them).
        if (w is None or not w.alive or w.env != env or w.preload != preload or not w.idle
                or w.inherited != _inherited()):
            if w is not None:
                w.close()
            w = self.workers[slot] = WarmWorker(slot, env, preload, self.log_dir)
        return w

    def warm_up(self, slots: list[tuple[int, dict[str, str]]], preload: list[str]) -> None:
        """Start the workers of these slots at once, so their imports overlap."""
        for slot, env in slots:
            self.worker(slot, env, preload)

    def submit(self, slot: int, env: dict[str, str], preload: list[str], task: Any, folder: Path,
               timeout_s: float, signal_delay_s: float, max_num_timeout: int = 3) -> Any:
        """Run `task` (a CellTask) in the slot's worker: a submitit LocalJob whose id is the cell's pid.
        `timeout_s` 0: no time limit; `max_num_timeout`: requeues on timeout (as LocalExecutor's)."""
        from submitit.core import utils
        from submitit.local.local import LocalJob

        base = utils.JobPaths.get_first_id_independent_folder(folder)
        base.mkdir(parents=True, exist_ok=True)
        staged = base / f".warm_{uuid.uuid4().hex}_submitted.pkl"
        delayed = utils.DelayedSubmission(task)
        # as submitit's executor does (it passes timeout_min, a float, typed int there)
        delayed.set_timeout(timeout_s / 60, max_num_timeout)  # type: ignore[arg-type]
        delayed.dump(staged)
        cell_env = {**env, "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "")}
        try:
            try:
                pid = self.worker(slot, env, preload).start_cell(staged, str(folder), cell_env, timeout_s, signal_delay_s)
            except WarmUnavailable:
                if not staged.exists():
                    raise
                # a worker found dead at the moment of the request (idle exit): one new worker, once
                self.workers.pop(slot, None)
                pid = self.worker(slot, env, preload).start_cell(staged, str(folder), cell_env, timeout_s,
                                                                 signal_delay_s)
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()  # nothing started (the child moves it into its job's name)
            raise
        w = self.workers[slot]
        paths = utils.JobPaths(folder, job_id=str(pid), task_id=0)
        job: LocalJob[Any] = LocalJob(folder=folder, job_id=str(pid), tasks=[0])
        job._process = w.current = _WarmProcess(pid, exit_record_path(paths.folder, str(pid)), w)  # type: ignore[assignment]
        return job

    def close(self, wait_s: float = 5.0) -> None:
        """Let every worker go: each exits once its cell (if any) has ended. An idle one is waited
        for (up to `wait_s`), so it is reaped here and its CPU time counts as this process's
        children's, as a cold cell's does; one whose cell still runs (detached, Ctrl-C) is not."""
        for w in self.workers.values():
            w.close()
        deadline = time.monotonic() + wait_s
        for w in self.workers.values():
            if w.idle:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))


_SHARED: WarmPool | None = None


def shared_pool(log_dir: Path) -> WarmPool:
    """The launcher process's pool: kept across launches into one store, so a sweeper that launches
    batch after batch (hydra-optuna-sweeper: one launch per batch of trials) reuses its workers. A
    launch into another store lets the previous pool's workers go; at exit all go."""
    global _SHARED
    if _SHARED is None or _SHARED.log_dir != log_dir:
        if _SHARED is not None:
            _SHARED.close()
        _SHARED = WarmPool(log_dir)
        atexit.register(_SHARED.close)
    return _SHARED


def preload_modules(payload: Any, task_function: Any) -> list[str]:
    """What a slot's worker imports before its first cell: the launcher's own modules, the task
    function's module, and for the built-in trainer the trainer (JAX included)."""
    mods = list(BASE_PRELOAD)
    module = getattr(task_function, "__module__", None)
    if module and module != "__main__" and not module.startswith("tests"):
        mods.append(module)
    cfg = getattr(payload, "cfg", None)
    try:
        kind = (cfg.get("task") or {}).get("kind", "builtin") if cfg is not None else None
        builtin = cfg is not None and kind != "external" and cfg.get("trainer") is not None
    except Exception:  # noqa: BLE001 (an app config of any shape: preload nothing more)
        builtin = False
    if builtin:
        mods.extend(_BUILTIN_PRELOAD)
    return list(dict.fromkeys(mods))
