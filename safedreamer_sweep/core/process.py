"""A cell process as its parent sees it: the child dies with its parent (PR_SET_PDEATHSIG), and how
it ended is written down as an exit record, the evidence `sweep/failures.py` classifies.

Three parents write exit records, all through `write_exit_record`: a local cell's exit watcher
(sweep/exitwatch.py), a local slot's warm worker (sweep/backends/warm_worker.py) and a packed Slurm job's
task for each of its job steps (sweep/backends/slurm_pack.py). Standard library only (with
core/files.py): the exit watcher starts once per cell and must stay cheap.
"""

from __future__ import annotations

import ctypes
import signal
import time
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import atomic_write_json

__all__ = ["die_with_parent", "exit_record", "write_exit_record"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal
        return None


# Loaded once at import, in the parent: a child between fork and exec only calls it (no import, no lock).
_PRCTL = _load_prctl()


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies, so that a cell never trains
    on as an orphan after its watcher, worker or cell process was killed. A no-op off Linux."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig))


def exit_record(returncode: int, *, started_at: float, ended_at: float | None = None,
                **fields: Any) -> dict[str, Any]:
    """How a process ended: its return code, the signal that killed it (negative return codes, as
    subprocess gives them) by number and name, when it started and ended, and `fields` (pid, job id,
    the memory cgroup's oom_kill counts, ...)."""
    sig = -returncode if returncode < 0 else None
    return {"returncode": returncode, "signal": sig, "signal_name": signal.Signals(sig).name if sig else None,
            "started_at": started_at, "ended_at": time.time() if ended_at is None else ended_at, **fields}


def write_exit_record(path: Path, record: dict[str, Any]) -> None:
    """Write `record` at `path` atomically: the supervisor reads it any time, never half of it."""
    atomic_write_json(Path(path), record)
