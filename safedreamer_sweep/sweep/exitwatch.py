"""The parent of a local cell: run its command as a child, wait, and record how it ended.

submitit's local controller reaps the cell process and drops its exit status, so a cell killed by
SIGKILL looks like "exit code 0" from the launcher. Run as the cell's interpreter
(`python -m safedreamer_sweep.sweep.exitwatch <python> -u -m submitit.core._submit <folder>`), this
process starts the real command, forwards the signals submitit and users send (INT, TERM, USR1,
USR2, CONT, HUP), waits for it, and writes `<folder>/<job_id>_<task>_exit.json` (or $SDS_EXIT_RECORD):
returncode, the killing signal, and the memory cgroup's `oom_kill` count before and after, the
evidence `failures.classify_failure` reads (sweep/exit_records.py reads it back). It exits with the
child's code (128+signal for a signal). Stdlib only: it starts once per cell and must stay cheap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safedreamer_sweep.core.process import die_with_parent, exit_record, write_exit_record
from safedreamer_sweep.sweep.exit_records import exit_record_path, memory_cgroups, oom_kill_count

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGHUP)


def _record_path(argv: list[str]) -> Path | None:
    """Where the record goes: $SDS_EXIT_RECORD, else next to submitit's logs for this job/task."""
    if os.environ.get("SDS_EXIT_RECORD"):
        return Path(os.environ["SDS_EXIT_RECORD"])
    job = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if job and argv:
        return exit_record_path(argv[-1], job, os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))
    return None


def _in_child() -> None:
    # Its own process group: a terminal's Ctrl-C reaches the cell once (forwarded by this watcher),
    # not twice (directly and forwarded) which would break its interrupt handling.
    os.setpgid(0, 0)
    # Signals reach the cell only through this watcher, so it must act on them even when the
    # launcher was started with some ignored (a background job ignores SIGINT; exec keeps SIG_IGN).
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    # If this watcher is SIGKILLed (submitit's kill_tasks), the cell must not run on as an orphan.
    die_with_parent(signal.SIGKILL)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m safedreamer_sweep.sweep.exitwatch COMMAND [ARGS...]", file=sys.stderr)
        return 2
    cgroups = memory_cgroups()
    before = oom_kill_count(cgroups)
    started = time.time()
    child = subprocess.Popen(argv, preexec_fn=_in_child)  # noqa: PLW1509 (no threads exist here)
    for sig in _FORWARDED:
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for clarity)
            continue
    rec = exit_record(code, started_at=started, pid=child.pid, oom_kill_before=before,
                      oom_kill_after=oom_kill_count(cgroups), cgroup=str(cgroups[0]) if cgroups else None,
                      watcher_pid=os.getpid())
    path = _record_path(argv)
    if path is not None:
        try:
            write_exit_record(path, rec)
        except OSError as e:
            print(f"exitwatch: cannot write {path}: {e}", file=sys.stderr)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
