"""Claims: which sweep holds a cell right now, so two overlapping sweeps never run it twice.

A claim is `claim.json` in the run directory, read and written under the run's file lock. A claim
can be taken over only when its holder is dead: the launcher pid is gone (same host), no job of it
is alive in the scheduler, and env_step did not move for `stall_after` seconds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from safedreamer_sweep.core.store import RunDir, atomic_write_json, host, read_json
from safedreamer_sweep.sweep.observe import SLURM_ALIVE, JobState, pid_alive


def holder_alive(claim: dict, rd: RunDir, *, stall_after: float, job_state: JobState | None = None,
                 now: float | None = None) -> tuple[bool, str]:
    """Is the sweep named in `claim` still working on the cell? Returns (alive, evidence)."""
    t = time.time() if now is None else now
    if not claim or claim.get("released_at"):
        return False, "no active claim"
    same_host = claim.get("host") == host()
    if same_host and pid_alive(claim.get("pid"), claim.get("pid_started_at")):
        return True, f"launcher pid {claim['pid']} on {claim['host']} is alive"
    jobs = [str(j) for j in (claim.get("job_ids") or ([claim["job_id"]] if claim.get("job_id") else []))]
    checked = []
    for jid in jobs:
        if claim.get("backend") == "local":
            if same_host:
                if pid_alive(int(jid)):
                    return True, f"local job pid {jid} is alive"
                checked.append(f"local job pid {jid} gone")
        elif job_state is not None:
            st = job_state(jid)
            if st and st.split()[0] in SLURM_ALIVE:
                return True, f"job {jid} is {st}"
            if st:
                checked.append(f"job {jid} {st}")
    if same_host and jobs and len(checked) == len(jobs):
        # Launcher and every job are known dead: a recent heartbeat is the last breath, not life.
        return False, f"holder {claim.get('sweep_id')} is gone: launcher pid {claim.get('pid')} dead, " + ", ".join(checked)
    prog = rd.read_progress() or {}
    if (same_host and prog.get("host") == host() and prog.get("pid") and not pid_alive(prog["pid"])
            and (claim.get("backend") == "local" or job_state is not None)):
        # Launcher, jobs and the training process are all dead on this host: a fresh heartbeat is
        # the last breath of a crashed holder, not a sign of life.
        return False, (f"holder {claim.get('sweep_id')} is gone: launcher pid {claim.get('pid')} and training "
                       f"pid {prog['pid']} on {host()} are dead")
    moved = prog.get("env_step_moved_at")
    if moved and t - moved <= stall_after:
        return True, f"env_step {prog.get('env_step')} moved {t - moved:.0f}s ago (pid {prog.get('pid')} on {prog.get('host')})"
    if claim.get("claimed_at") and t - claim["claimed_at"] <= stall_after and claim.get("host") != host():
        return True, f"claimed {t - claim['claimed_at']:.0f}s ago from another host"
    return False, f"holder {claim.get('sweep_id')} (pid {claim.get('pid')} on {claim.get('host')}) is gone"


def try_claim(rd: RunDir, sweep_id: str, *, backend: str, stall_after: float,
              job_state: JobState | None = None) -> tuple[bool, str]:
    """Claim the cell for `sweep_id`. Returns (claimed, why). Re-claiming our own claim succeeds."""
    with rd.lock():
        old = read_json(rd.claim_path) or {}
        if old and not old.get("released_at") and old.get("sweep_id") != sweep_id:
            alive, why = holder_alive(old, rd, stall_after=stall_after, job_state=job_state)
            if alive:
                return False, f"held by sweep {old.get('sweep_id')}: {why}"
            took = {"took_over_from": old.get("sweep_id"), "took_over_because": why}
        else:
            took = {}
        doc: dict[str, Any] = {"sweep_id": sweep_id, "host": host(), "pid": os.getpid(),
                               "pid_started_at": time.time(), "backend": backend,
                               "claimed_at": time.time(), "job_ids": [], **took}
        try:
            import psutil

            doc["pid_started_at"] = psutil.Process().create_time()
        except (ImportError, OSError):  # keep the wall-clock start time
            doc["pid_started_at"] = time.time()
        atomic_write_json(rd.claim_path, doc)
        return True, (f"took over: {took['took_over_because']}" if took else "claimed")


def add_jobs(rd: RunDir, sweep_id: str, job_ids: list[str]) -> None:
    """Record the scheduler jobs that run the cell for this claim (they keep it alive after a
    detached launcher exits)."""
    with rd.lock():
        doc = read_json(rd.claim_path) or {}
        if doc.get("sweep_id") != sweep_id:
            return
        doc["job_ids"] = list(dict.fromkeys([*doc.get("job_ids", []), *map(str, job_ids)]))
        doc["job_id"] = str(job_ids[-1]) if job_ids else doc.get("job_id")
        atomic_write_json(rd.claim_path, doc)


def release(rd: RunDir, sweep_id: str, outcome: str) -> None:
    """Mark our claim released (the file stays as a record of who ran the cell last)."""
    with rd.lock():
        doc = read_json(rd.claim_path) or {}
        if doc.get("sweep_id") == sweep_id and not doc.get("released_at"):
            doc.update(released_at=time.time(), outcome=outcome)
            atomic_write_json(rd.claim_path, doc)


def race_start(rd: RunDir, job_id: str) -> str | None:
    """Called by a racing copy when it starts: the first copy to start wins. Returns the winner's
    job id if it is another copy (then this copy must exit without running), else None."""
    with rd.lock():
        doc = read_json(rd.claim_path) or {}
        if not doc.get("race"):
            return None
        winner = doc.get("race_winner")
        if winner and str(winner) != str(job_id):
            return str(winner)
        doc["race_winner"] = str(job_id)
        atomic_write_json(rd.claim_path, doc)
        return None
