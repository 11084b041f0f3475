"""What the store, the scheduler and this host say about cells beyond `observe_store`: whether the
sweep runs on Slurm, the live process samples (status, CPU), the newest attempt's outcome, a live
claim, other identities on disk, and the sweep's own settings (stall_after, price per GPU-hour)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import StoreError, read_json
from safedreamer_sweep.core.run_dir import RunDir, host
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.claim import holder_alive

DEFAULT_STALL_AFTER_S = 600.0


def uses_slurm(store: Store) -> bool:
    """Does anything in the store say its jobs are Slurm jobs (manifest launcher or a claim)?"""

    for doc in store.read_sweep_manifests():
        launcher = doc.get("launcher")
        if isinstance(launcher, dict) and launcher.get("backend") == "slurm":
            return True
    for rd in store.iter_runs():  # seeded cells and those of an app without a seed
        try:
            if (read_json(rd.claim_path) or {}).get("backend") == "slurm":
                return True
        except StoreError:
            continue
    return False


def slurm_job_state() -> Callable[[str], str | None]:
    """`job_id -> Slurm state` (squeue, then sacct; cached): the supervisor's own lookup, so status
    and supervision read the scheduler the same way."""
    from safedreamer_sweep.sweep.backends.slurm import slurm_state_lookup

    return slurm_state_lookup()


def process_evidence(cells: list[dict], sample_s: float = 0.3) -> None:
    """Add `proc_status` and `cpu_percent` to running/stalled cells whose pid lives on this host:
    a stalled pid at 0% CPU and `stopped` is a different story from one spinning at 100%."""
    import psutil

    procs = []
    for c in cells:
        c.setdefault("proc_status", None)
        c.setdefault("cpu_percent", None)
        if c["phase"] in ("running", "stalled") and c.get("pid_alive") and c.get("host") == host():
            try:
                p = psutil.Process(int(c["pid"]))
                p.cpu_percent(None)
                procs.append((c, p))
            except (psutil.Error, ValueError):
                pass
    if not procs:
        return
    time.sleep(sample_s)
    for c, p in procs:
        try:
            c["cpu_percent"] = round(p.cpu_percent(None), 1)
            c["proc_status"] = p.status()
        except psutil.Error:
            pass


def last_outcome(run_dir: str | None) -> str | None:
    """The newest attempt's outcome (`submitted` = queued by a launcher, not started yet)."""
    if not run_dir:
        return None

    try:
        attempts = RunDir(Path(run_dir)).read_state().get("attempts") or []
    except StoreError:
        return None
    return attempts[-1].get("outcome") if attempts else None


def live_claim(run_dir: str | None, stall_after: float, job_state) -> str | None:
    """`sweep <id>: <evidence>` when a live sweep holds the cell's claim (it will run it), else None."""
    if not run_dir:
        return None

    rd = RunDir(Path(run_dir))
    try:
        claim = read_json(rd.claim_path)
    except StoreError:
        return None
    if not claim or claim.get("released_at"):
        return None
    alive, why = holder_alive(claim, rd, stall_after=stall_after, job_state=job_state)
    return f"sweep {claim.get('sweep_id')}: {why}" if alive else None


def other_identities(store: Store, v: Any) -> list[dict[str, Any]]:
    """Run directories of the same config and seed under another identity hash (an older variant,
    or a config edited since): evidence that a `never run` cell has history on disk."""
    out = []
    for rd in store.find(v.config, v.seed):
        if rd.path.name == v.hash or str(rd.path) == v.run_dir:
            continue
        try:
            phase = rd.read_state().get("phase")
        except StoreError:
            phase = "corrupt"
        out.append({"hash": rd.path.name, "phase": phase, "run_dir": str(rd.path)})
    return out


def stall_after_from(store: Store) -> float:
    """The newest sweep manifest's `launcher.stall_after`, else the default."""
    for doc in reversed(store.read_sweep_manifests()):
        v = (doc.get("launcher") or {}).get("stall_after") if isinstance(doc.get("launcher"), dict) else None
        if v:
            return float(v)
    return DEFAULT_STALL_AFTER_S


def cost_settings(store: Store) -> tuple[float | None, str | None]:
    """The newest sweep manifest's price per GPU-hour and its currency, else (None, None)."""
    for doc in reversed(store.read_sweep_manifests()):
        c = doc.get("cost")
        if isinstance(c, dict) and c.get("per_gpu_hour") is not None:
            return float(c["per_gpu_hour"]), c.get("currency")
    return None, None
