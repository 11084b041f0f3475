"""A run directory's locks, and who holds one when it is busy (read from /proc/locks).

Two locks per run directory (`filelock`, an flock the kernel drops when its holder dies), so that
nothing the supervisor must do waits on a lock a cell can hold:
  .lock        the data lock: read-modify-write of state.json, and the fence check of every write
               by the cell (state, progress, curves, checkpoints, evaluations). Held by the cell
               and, briefly, by the supervisor; a cell frozen inside a write keeps it until it is
               killed, so every supervisor acquisition is bounded (SUPERVISOR_LOCK_S) and a
               timeout raises LockBusy, whose message is evidence (holder pid, its state), never
               a crash.
  .claim.lock  the lease lock: read-modify-write of claim.json (claims, takeovers, renewals, job
               ids, release). Held only by launchers and supervisors, never by a cell.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from safedreamer_sweep.core.files import StoreError

CELL_LOCK_S = 60.0        # a cell's wait for its data lock (the supervisor holds it for milliseconds)
SUPERVISOR_LOCK_S = 3.0   # any supervisor wait for a lock a cell could hold: bounded, then evidence


class LockBusy(StoreError):
    """A run directory's lock was not free in time. The message is the evidence: which lock, which
    pid holds it and in what state (running, stopped, gone), and what happens next."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = Path(path), timeout
        self.holder = lock_holder(self.path)
        super().__init__(f"{self.path}: not acquired within {timeout:g}s; {_describe_holder(self.holder)}")


@contextlib.contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold the flock at `path` for the block; LockBusy (with the holder's pid and state) on timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lk = filelock.FileLock(str(path), timeout=timeout)
    try:
        lk.acquire()
    except filelock.Timeout:
        raise LockBusy(path, timeout) from None
    try:
        yield
    finally:
        lk.release()


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the flock on `path` on this host, from /proc/locks (matched by device and inode):
    {pid, state, name}; None when nobody here does (or the kernel does not say: another host's lock
    on a network filesystem)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not the holder
            continue
        try:
            pid, dev = int(parts[4]), parts[5].split(":")
            key = (int(dev[0], 16), int(dev[1], 16), int(dev[2]))
        except (IndexError, ValueError):
            continue
        if key == want:
            return {"pid": pid, **_process_state(pid)}
    return None


def _process_state(pid: int) -> dict[str, Any]:
    """A process's state letter and name from /proc/<pid>/stat ('T' stopped, 'R' running, ...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {"state": "gone"}
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return {"state": stat[stat.rindex(")") + 2:].split()[0], "name": name}


_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "R": "running", "S": "sleeping",
           "D": "in uninterruptible I/O", "Z": "a zombie", "gone": "gone"}


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "no process on this host holds it (a process on another host, or it was just released)"
    what = _STATES.get(str(holder.get("state")), str(holder.get("state")))
    return f"held by pid {holder['pid']} ({holder.get('name', '?')}, {what})"
