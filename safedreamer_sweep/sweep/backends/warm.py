"""Warm workers for the local backend: one long-lived process per slot that has imported what a
cell needs (Hydra, submitit, the built-in trainer and JAX) and forks one child per cell.

Why a fork server, not a process that runs cell after cell: a forked child is a fresh worker for
free. A crash, a kill or a stall ends the child only, and the next cell forks from a parent that
has never run a cell, so nothing of one cell's state (module globals, Hydra's singletons, the
working directory, os.environ, JAX's caches, open files) reaches the next. The parent never
initialises a JAX backend nor compiles anything (forking after XLA has started its thread pools
deadlocks, which JAX warns about), so compiled programs are shared between cells through JAX's
persistent compilation cache in the store (tasks/run.py `use_store_jax_cache`): equal shapes load
instead of compiling. What a cell saves is the interpreter start, the imports, submitit's
controller and the exit watcher: two fewer processes and one fewer interpreter start per cell.

The child is what `python -m submitit.core._submit FOLDER` would run, minus the start-up: it loads
the pickled task from the job folder and runs submitit's own `process_job` (its signal handlers:
SIGUSR2 = requeue through `CellTask.checkpoint`, SIGTERM/SIGCONT bypassed; the result pickle). It
gets the environment submitit's controller gives a local job (SUBMITIT_LOCAL_*, the slot's
CUDA_VISIBLE_DEVICES), its own process group, and dies with the worker (PR_SET_PDEATHSIG). The
job id is the child's pid, so the supervisor sees a pid per cell that it can kill. The worker does
what exitwatch.py and submitit's controller do for a cold cell: it waits for the child, sends the
requeue signal `signal_delay_s` before the time limit and starts the task again when it asks to
be requeued, and writes the exit record (`<job folder>/<job_id>_0_exit.json`: returncode, signal,
the memory cgroup's oom_kill counts) that `failures.classify_failure` reads.

Protocol (one JSON line each way, over the worker's stdin/stdout): the launcher sends
`{"pickle", "folder", "env", "timeout_s", "signal_delay_s"}` for a free slot; the worker forks and
answers `{"pid": N}` (or `{"error": why}`). A worker runs one cell at a time (its slot's), exits
when its stdin closes (the launcher is gone) once its cell has ended, or after IDLE_S without a
request; the launcher starts a new one when it finds its worker gone.

    python -m safedreamer_sweep.sweep.backends.warm [MODULE ...]    # the worker; modules to preload
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import IO, Any

from safedreamer_sweep.core.process import die_with_parent, exit_record, write_exit_record

IDLE_S = 120.0  # a worker with no request for this long exits (a new one starts when needed)
ANSWER_S = 180.0  # how long the launcher waits for a worker's answer (its first one includes the imports)
REQUEUE_RETURN_CODE = 144  # submitit's LOCAL_REQUEUE_RETURN_CODE: the task asked to be started again
BUILTIN_PRELOAD = ("safedreamer_sweep.tasks.run", "safedreamer_sweep.trainer.ppo_lag",
                   "safedreamer_sweep.trainer.evaluate")
# numpy.core sets these while it imports and removes them after (when they were unset): a launcher
# whose background thread imports numpy shows them for a moment, which is no change of environment.
IMPORT_TRANSIENT_ENV = ("OPENBLAS_MAIN_FREE", "GOTOBLAS_MAIN_FREE")
BASE_PRELOAD = ("hydra.core.utils", "omegaconf", "submitit", "cloudpickle", "psutil", "filelock",
                "safedreamer_sweep.sweep.submit", "safedreamer_sweep.tasks.app")


class WarmUnavailable(RuntimeError):
    """The worker cannot run cells (it failed to start, to import, or is not fork-safe)."""


# ----------------------------------------------------------------------------- the launcher's side


def inherited() -> tuple[str, dict[str, str]]:
    """What a worker's imports saw of the launcher: its working directory and environment. A
    worker whose imports saw other ones than a cold cell's would is replaced."""
    return os.getcwd(), {k: v for k, v in os.environ.items() if k not in IMPORT_TRANSIENT_ENV}


class WarmProcess:
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
            try:
                self.returncode = int(json.loads(self.record.read_text())["returncode"])
            except (OSError, ValueError, KeyError, TypeError):
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
        self.inherited = inherited()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"warm_slot{slot}_{os.getpid()}_{int(time.time() * 1000)}.log"
        with open(self.log_path, "ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches the launcher only (cells keep running).
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "safedreamer_sweep.sweep.backends.warm", *self.preload],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **self.env},
                start_new_session=True, cwd=os.getcwd())
        self.current: WarmProcess | None = None  # the cell it runs

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
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close(kill=True)
            raise WarmUnavailable(f"warm worker of slot {self.slot} (pid {self.proc.pid}) did not answer within "
                                  f"{ANSWER_S:.0f} s; its log: {self.log_path}")
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
                or w.inherited != inherited()):
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
        job._process = w.current = WarmProcess(pid, paths.folder / f"{pid}_0_exit.json", w)  # type: ignore[assignment]
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
        mods.extend(BUILTIN_PRELOAD)
    return list(dict.fromkeys(mods))


# ----------------------------------------------------------------------------- the worker process


def _fork_safety() -> str | None:
    """Why forking now would be unsafe (a JAX backend initialised, other threads running), else None."""
    jax_bridge = sys.modules.get("jax._src.xla_bridge")
    if jax_bridge is not None and getattr(jax_bridge, "_backends", None):
        return "a JAX backend was initialised while importing (forking after XLA starts its threads deadlocks)"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"threads running after the imports: {', '.join(others)}"
    return None


def _child(req: dict[str, Any], job_id: str, ctl: tuple[int, int], first: bool) -> None:
    """In the forked child: become a local submitit job and run it (never returns)."""
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent(signal.SIGKILL)
        for fd in ctl:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from submitit.core import utils
        from submitit.core.submission import process_job

        paths = utils.JobPaths(req["folder"], job_id=job_id, task_id=0)
        paths.folder.mkdir(parents=True, exist_ok=True)
        out, err = open(paths.stdout, "a"), open(paths.stderr, "a")  # noqa: SIM115 (the process's own stdio)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        if req.get("cwd"):
            os.chdir(req["cwd"])
        if req.get("environ") is not None:
            os.environ.clear()
            os.environ.update(req["environ"])
        os.environ.update(req.get("env") or {})
        os.environ.update(SUBMITIT_LOCAL_JOB_ID=job_id, SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_NODEID="0",
                          SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_GLOBALID="0", SUBMITIT_LOCAL_LOCALID="0",
                          SUBMITIT_EXECUTOR="local", SUBMITIT_STDERR_TO_STDOUT="",
                          SUBMITIT_LOCAL_TIMEOUT_S=str(int(req.get("timeout_s") or 0)),
                          SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(req.get("signal_delay_s") or 0)),
                          SDS_WARM_WORKER=str(os.getppid()))
        if first:
            os.replace(req["pickle"], paths.submitted_pickle)
        try:
            process_job(req["folder"])
            code = 0
        except KeyboardInterrupt:
            # as an interpreter does with an uncaught KeyboardInterrupt: end by the signal
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 (process_job wrote the error pickle; the traceback goes to stderr)
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 (nothing may escape into the worker's loop)
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout_s: float, signal_delay_s: float) -> int:
    """Wait for the child as submitit's controller does: the requeue signal (SIGUSR2)
    `signal_delay_s` before `timeout_s`, SIGINT then SIGKILL at it. Returns its exit code
    (negative: the signal that ended it)."""
    started = time.monotonic()
    warned = killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        ran = time.monotonic() - started
        if timeout_s and not warned and ran >= timeout_s - signal_delay_s:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)
            warned = True
        if timeout_s and not killed and ran >= timeout_s:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                time.sleep(1.0)
                os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.02)


_CURRENT: dict[str, int] = {}  # the pid of the child the worker waits for


def _forward_or_exit(sig: int, _frame: Any) -> None:
    pid = _CURRENT.get("pid")
    if pid is None:
        sys.exit(128 + sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _run_request(req: dict[str, Any], ctl_in: int, ctl_out: IO[str]) -> None:
    """Fork the cell's child, answer its pid, wait for it (starting it again when it asks to be
    requeued, as submitit's controller does, under the same job id) and write its exit record."""
    from safedreamer_sweep.sweep.exitwatch import memory_cgroups, oom_kill_count

    cgroups = memory_cgroups()
    before = oom_kill_count(cgroups)
    started = time.time()
    ended = started
    job_id: str | None = None
    for attempt in range(6):  # submitit's Controller.run(max_retry=6)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, job_id or str(os.getpid()), (ctl_in, ctl_out.fileno()), first=attempt == 0)
        _CURRENT["pid"] = pid
        if job_id is None:
            job_id = str(pid)
            ctl_out.write(json.dumps({"pid": pid}) + "\n")
            ctl_out.flush()
        try:
            code = _wait(pid, float(req.get("timeout_s") or 0), float(req.get("signal_delay_s") or 0))
        finally:
            _CURRENT.pop("pid", None)
        ended = time.time()
        if code != REQUEUE_RETURN_CODE:
            break
    rec = exit_record(code, started_at=started, ended_at=ended, pid=pid, job_id=job_id, oom_kill_before=before,
                      oom_kill_after=oom_kill_count(cgroups), cgroup=str(cgroups[0]) if cgroups else None,
                      watcher_pid=os.getpid(), warm_worker=True)
    from submitit.core import utils

    folder = utils.JobPaths(req["folder"], job_id=job_id, task_id=0).folder
    folder.mkdir(parents=True, exist_ok=True)
    write_exit_record(folder / f"{job_id}_0_exit.json", rec)
    print(f"[warm] job {job_id}: ended with {code} after {ended - started:.1f} s", file=sys.stderr, flush=True)


def serve(preload: list[str]) -> int:
    """The worker: import `preload`, then run one cell per request until stdin closes."""
    # The control channel moves off fds 0/1; they point at /dev/null and stderr (the worker's log).
    ctl_in = os.dup(0)
    ctl_out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the launcher; the cells run on
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as exitwatch does: to the cell, which ends by it
        signal.signal(sig, _forward_or_exit)
    t0 = time.time()
    failed: list[str] = []
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (a module the cells import themselves, or not at all)
            failed.append(f"{name} ({type(e).__name__}: {e})")
    unsafe = _fork_safety()
    print(f"[warm] pid {os.getpid()} imported {len(preload) - len(failed)} module(s) in {time.time() - t0:.2f} s"
          + (f"; not imported: {', '.join(failed)}" if failed else "") + (f"; NOT fork-safe: {unsafe}" if unsafe else ""),
          file=sys.stderr, flush=True)
    buf = b""
    while True:
        ready, _, _ = select.select([ctl_in], [], [], IDLE_S)
        if not ready:
            print(f"[warm] pid {os.getpid()}: idle for {IDLE_S:.0f} s; exiting", file=sys.stderr, flush=True)
            return 0
        chunk = os.read(ctl_in, 65536)
        if not chunk:
            return 0  # the launcher closed the channel (or is gone): nothing more to run
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if unsafe:
                ctl_out.write(json.dumps({"error": unsafe}) + "\n")
                ctl_out.flush()
                continue
            _run_request(req, ctl_in, ctl_out)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
