"""Exit records, read back: where a local job's record lies, the one reader of any exit record, and
the memory evidence a local parent puts in one (the memory cgroup's `oom_kill` count).

Three parents write records through core/process.py's `write_exit_record`: a local cell's exit
watcher (sweep/exitwatch.py), a local slot's warm worker (sweep/backends/warm_worker.py) and a packed
Slurm job's task (sweep/backends/slurm_pack.py); the supervisor, the warm pool and the Slurm backend
read them here. Standard library only: the exit watcher starts once per cell and must stay cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["exit_record_path", "memory_cgroups", "oom_kill_count", "read_exit_record", "read_record"]


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


def exit_record_path(folder: str | os.PathLike, job_id: str, task: int | str = 0) -> Path:
    """Where a local submitit job's record lies: `<folder>/<job_id>_<task>_exit.json`, next to its logs."""
    return Path(folder) / f"{job_id}_{task}_exit.json"


def read_record(path: str | os.PathLike) -> dict | None:
    """The exit record at `path` (None while it is not there, or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_exit_record(folder: str | os.PathLike, job_id: str, task: int = 0) -> dict | None:
    """The record of a local submitit job, written by its exit watcher or warm worker (None if none)."""
    return read_record(exit_record_path(folder, job_id, task))
