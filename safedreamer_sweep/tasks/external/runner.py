"""Run the script as a subprocess: its own session and process group, a SIGTERM when the cell
process dies (core.process.die_with_parent), the cell's niceness kept under autogroup scheduling,
stdout/stderr teed to the attempt's log files, a tick while it runs, and the whole group stopped
on any way out."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from safedreamer_sweep.core.process import die_with_parent
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.tasks.external.config import ExternalTask
from safedreamer_sweep.tasks.external.errors import ExternalCommandFailed, ExternalTaskError


def _in_child() -> None:
    """In the child before exec, after its new session began:
    - get SIGTERM when the cell process dies (a kill -9 of the cell must not leave the script training
      on its own).
    - keep the cell's niceness. With Linux's autogroup scheduling (sched_autogroup_enabled=1, the
      default on desktop and many server kernels) a new session is a new scheduling group at nice 0,
      which competes with every other group as an equal: a sweep started with `nice -n 19` would see
      its script take a full share of the machine. Writing the nice value to /proc/self/autogroup
      gives the new group the cell's priority (raising niceness needs no privilege)."""
    die_with_parent(signal.SIGTERM)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0:
        # no autogroup (not Linux, or CONFIG_SCHED_AUTOGROUP off): OSError, and the niceness holds as is
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            try:
                os.write(fd, str(nice).encode())
            finally:
                os.close(fd)


def _tee(stream, log_path: Path, sink, on_line: Callable[[str], None] | None, tail: collections.deque | None):
    with open(log_path, "ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", errors="replace")
            if sink is not None:
                with contextlib.suppress(OSError, ValueError):  # a closed or broken echo never stops the tee
                    sink.write(line)
                    sink.flush()
            if on_line is not None:
                on_line(line)
            if tail is not None:
                tail.append(line.rstrip("\n"))
    stream.close()


def _same_file(stream: Any, path: Path) -> bool:
    """Whether `stream` (sys.stdout, ...) writes into the file at `path`."""
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of the script and its children (evidence for an OOM kill)."""
    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:  # the tree changed while we looked
        return None


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the script's process group, SIGKILL it after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(argv: list[str], cwd: str | None, env: Mapping[str, str], out_path: Path, err_path: Path,
           header: str) -> subprocess.Popen:
    """Start `argv` in a new session after a header line in both logs (appending, never overwriting)."""
    for p in (out_path, err_path):
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "ab") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}$ {shlex.join(argv)}\n".encode())
    try:
        return subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_in_child)  # noqa: PLW1509  see _in_child
    except FileNotFoundError as e:
        raise ExternalTaskError(f"{header or 'command'}: cannot start {argv[0]!r} ({e.strerror}) in cwd "
                                f"{cwd or os.getcwd()}. Fix: use an absolute path or set task.cwd") from e


def _start_tees(proc: subprocess.Popen, out_path: Path, err_path: Path, on_stdout: Callable[[str], None] | None,
                tail: collections.deque) -> list[threading.Thread]:
    """Threads copying the script's stdout and stderr to their logs (and echoing them)."""
    # Under the sds launcher the cell's own stdout/stderr already are these log files: echo to
    # them only when they are somewhere else (a terminal, submitit's files), or every line is twice.
    out_sink = None if _same_file(sys.stdout, out_path) else sys.stdout
    err_sink = None if _same_file(sys.stderr, err_path) else sys.stderr
    threads = [
        threading.Thread(target=_tee, args=(proc.stdout, out_path, out_sink, on_stdout, None), daemon=True),
        threading.Thread(target=_tee, args=(proc.stderr, err_path, err_sink, None, tail), daemon=True),
    ]
    for t in threads:
        t.start()
    return threads


def run_command(argv: list[str], *, cwd: str | None, env: Mapping[str, str], out_path: Path, err_path: Path,
                on_stdout: Callable[[str], None] | None = None, on_tick: Callable[[int], None] | None = None,
                tick_s: float = 2.0, stop_grace_s: float = 10.0, tail_lines: int = 40,
                header: str = "") -> tuple[int, str]:
    """Run `argv` in its own process group, tee its output to the log files (appending, never
    overwriting), call `on_tick(pid)` every `tick_s` seconds while it runs and once after it exits.
    Returns (exit code, stderr tail). Any exception here (Ctrl-C, a kill of the cell) stops the
    whole process group first."""
    proc = _start(argv, cwd, env, out_path, err_path, header)
    tail: collections.deque = collections.deque(maxlen=tail_lines)
    threads = _start_tees(proc, out_path, err_path, on_stdout, tail)
    try:
        while True:
            try:
                proc.wait(timeout=tick_s)
                break
            except subprocess.TimeoutExpired:
                if on_tick is not None:
                    on_tick(proc.pid)
        for t in threads:
            t.join(timeout=10)
        if on_tick is not None:
            on_tick(proc.pid)
    except BaseException:
        _stop_group(proc, stop_grace_s)
        raise
    finally:
        if proc.poll() is None:
            _stop_group(proc, stop_grace_s)
    return proc.returncode, "\n".join(tail)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_script(argv: list[str], *, task: ExternalTask, run: RunDir, attempt: int, cwd: str | None,
               env: Mapping[str, str], header: str, what: str, on_stdout: Callable[[str], None] | None = None,
               on_tick: Callable[[int], None] | None = None, where: Callable[[], str] | None = None) -> None:
    """Run one of the task's commands for attempt `attempt` (`run_command` with the task's tick, grace
    and tail settings, logs in logs/attempt_NN.{out,err}). Raises ExternalCommandFailed when it exits
    nonzero: `what` names the command, `where()` (called after it exits) says how far it got."""
    out_path, err_path = run.attempt_log_paths(attempt)
    code, tail = run_command(argv, cwd=cwd, env=env, out_path=out_path, err_path=err_path, on_stdout=on_stdout,
                             on_tick=on_tick, tick_s=task.probe_every_s, stop_grace_s=task.stop_grace_s,
                             tail_lines=task.stderr_tail_lines, header=header)
    if code != 0:
        raise ExternalCommandFailed(f"{run.path}: the {what} command {_exit_text(code)}{where() if where else ''}; full output in "
                                    f"{err_path}. Command: {shlex.join(argv)}\n--- stderr tail ---\n{tail}")
