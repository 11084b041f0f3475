"""A local slot's warm worker, the process (sweep/backends/warm_pool.py is the launcher's side): it
imports what a cell needs once, then forks one child per cell, waits for it as submitit's controller
would and writes the cell's exit record.

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
when its stdin closes (the launcher is gone) once its cell has ended, or after _IDLE_S without a
request; the launcher starts a new one when it finds its worker gone.

    python -m safedreamer_sweep.sweep.backends.warm_worker [MODULE ...]    # modules to preload
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

from safedreamer_sweep.core.process import die_with_parent, exit_record, write_exit_record

__all__ = ["serve"]

_IDLE_S = 120.0  # a worker with no request for this long exits (a new one starts when needed)
_REQUEUE_RETURN_CODE = 144  # submitit's LOCAL_REQUEUE_RETURN_CODE: the task asked to be started again


def _fork_safety() -> str | None:
    """Why forking now would be unsafe (a JAX backend initialised, other threads running), else None."""
    jax_bridge = sys.modules.get("jax._src.xla_bridge")
    if jax_bridge is not None and getattr(jax_bridge, "_backends", None):
        return "a JAX backend was initialised while importing (forking after XLA starts its threads deadlocks)"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"threads running after the imports: {', '.join(others)}"
    return None


# ----------------------------------------------------------------------------- the forked child


def _leave_worker(ctl: tuple[int, int]) -> None:
    """The child's own process group and signal dispositions; it dies with the worker and drops
    the worker's control channel."""
    os.setpgid(0, 0)
    die_with_parent(signal.SIGKILL)
    for fd in ctl:
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _stdio_to_job_logs(paths: Any) -> tuple[IO[str], IO[str]]:
    """stdin from /dev/null, stdout and stderr into the job's submitit logs; returns the open logs."""
    out, err = open(paths.stdout, "a"), open(paths.stderr, "a")  # noqa: SIM115 (the process's own stdio)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    return out, err


def _become_local_job(req: dict[str, Any], job_id: str) -> None:
    """The launcher's working directory and environment of the submission, the slot's variables and
    those submitit's controller sets for a local job."""
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


def _process_job(process_job: Callable[[str], Any], folder: str) -> int:
    """Run submitit's `process_job`; the exit code an interpreter would end with."""
    try:
        process_job(folder)
        return 0
    except KeyboardInterrupt:
        # as an interpreter does with an uncaught KeyboardInterrupt: end by the signal
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 (process_job wrote the error pickle; the traceback goes to stderr)
        traceback.print_exc()
        return 1


def _child(req: dict[str, Any], job_id: str, ctl: tuple[int, int], first: bool) -> None:
    """In the forked child: become a local submitit job and run it (never returns)."""
    code = 1
    try:
        _leave_worker(ctl)
        from submitit.core import utils
        from submitit.core.submission import process_job

        paths = utils.JobPaths(req["folder"], job_id=job_id, task_id=0)
        paths.folder.mkdir(parents=True, exist_ok=True)
        _logs = _stdio_to_job_logs(paths)  # kept open until the child ends
        _become_local_job(req, job_id)
        if first:
            os.replace(req["pickle"], paths.submitted_pickle)
        code = _process_job(process_job, req["folder"])
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


# ----------------------------------------------------------------------------- the worker


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
    from safedreamer_sweep.sweep.exit_records import exit_record_path, memory_cgroups, oom_kill_count

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
        if code != _REQUEUE_RETURN_CODE:
            break
    rec = exit_record(code, started_at=started, ended_at=ended, pid=pid, job_id=job_id, oom_kill_before=before,
                      oom_kill_after=oom_kill_count(cgroups), cgroup=str(cgroups[0]) if cgroups else None,
                      watcher_pid=os.getpid(), warm_worker=True)
    from submitit.core import utils

    folder = utils.JobPaths(req["folder"], job_id=job_id, task_id=0).folder
    folder.mkdir(parents=True, exist_ok=True)
    write_exit_record(exit_record_path(folder, str(job_id)), rec)
    print(f"[warm] job {job_id}: ended with {code} after {ended - started:.1f} s", file=sys.stderr, flush=True)


def _preload(modules: list[str]) -> str | None:
    """Import `modules` (one that fails is named in the log, not fatal); why forking would now be
    unsafe, else None."""
    t0 = time.time()
    failed: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (a module the cells import themselves, or not at all)
            failed.append(f"{name} ({type(e).__name__}: {e})")
    unsafe = _fork_safety()
    print(f"[warm] pid {os.getpid()} imported {len(modules) - len(failed)} module(s) in {time.time() - t0:.2f} s"
          + (f"; not imported: {', '.join(failed)}" if failed else "") + (f"; NOT fork-safe: {unsafe}" if unsafe else ""),
          file=sys.stderr, flush=True)
    return unsafe


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
    unsafe = _preload(preload)
    buf = b""
    while True:
        ready, _, _ = select.select([ctl_in], [], [], _IDLE_S)
        if not ready:
            print(f"[warm] pid {os.getpid()}: idle for {_IDLE_S:.0f} s; exiting", file=sys.stderr, flush=True)
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
