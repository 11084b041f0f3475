"""The parent of a local cell: run its command as a child, wait, and record how it ended.

submitit's local controller reaps the cell process and drops its exit status, so a cell killed by
SIGKILL looks like "exit code 0" from the launcher. Run as the cell's interpreter
(`python -m safedreamer_sweep.sweep.exitwatch <python> -u -m submitit.core._submit <folder>`), this
process starts the real command, forwards the signals submitit and users send (INT, TERM, USR1,
USR2, CONT, HUP), waits for it, and writes `<folder>/<job_id>_<task>_exit.json` (or $SDS_EXIT_RECORD):
returncode, the killing signal, and the memory cgroup's `oom_kill` count before and after, the
evidence `failures.classify_failure` reads. It exits with the child's code (128+signal for a signal).
Stdlib only: it starts once per cell and must stay cheap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safedreamer_sweep.core.process import die_with_parent, exit_record, write_exit_record

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGHUP)


def memory_cgroups(pid: int | str = "self") -> list[Path]:
    """The memory cgroup directories of `pid`, itself first then every ancestor (v1 or v2)."""
    out: list[Path] = []
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
        elif controllers == "" and not any(":memory:" in x for x in lines):
            base = Path("/sys/fs/cgroup")  # cgroup v2 unified hierarchy
        else:
            continue
        d = base / rel.lstrip("/")
        while True:
            out.append(d)
            if d == base or base not in d.parents:
                break
            d = d.parent
    return [d for d in out if d.is_dir()]


def oom_kill_count(cgroups: list[Path]) -> int | None:
    """Sum of the `oom_kill` counters of these cgroups (memory.events on v2, memory.oom_control on
    v1); None when no counter is readable."""
    total, seen = 0, False
    for d in cgroups:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (d / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, val = line.partition(" ")
                if key == "oom_kill":
                    total += int(val)
                    seen = True
            break
    return total if seen else None


def record_path(argv: list[str]) -> Path | None:
    """Where the record goes: $SDS_EXIT_RECORD, else next to submitit's logs for this job/task."""
    if os.environ.get("SDS_EXIT_RECORD"):
        return Path(os.environ["SDS_EXIT_RECORD"])
    job = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if job and argv:
        return Path(argv[-1]) / f"{job}_{os.environ.get('SUBMITIT_LOCAL_GLOBALID', '0')}_exit.json"
    return None


def read_exit_record(folder: str | os.PathLike, job_id: str, task: int = 0) -> dict | None:
    """The record exitwatch wrote for a local submitit job (None if it wrote none)."""
    try:
        return json.loads((Path(folder) / f"{job_id}_{task}_exit.json").read_text())
    except (OSError, ValueError):
        return None


def _in_child() -> None:
    # Its own process group: a terminal's Ctrl-C reaches the cell once (forwarded by this watcher),
    # not twice (directly and forwarded) which would break its interrupt handling.
    os.setpgid(0, 0)
    # Signals reach the cell only through this watcher, so it must act on them even when the
    # launcher was started with some ignored (a background job ignores SIGINT; exec keeps SIG_IGN).
    for sig in FORWARDED:
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
    for sig in FORWARDED:
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
    path = record_path(argv)
    if path is not None:
        try:
            write_exit_record(path, rec)
        except OSError as e:
            print(f"exitwatch: cannot write {path}: {e}", file=sys.stderr)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
