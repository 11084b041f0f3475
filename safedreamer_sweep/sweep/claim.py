"""Claims: which sweep holds a cell right now, as a lease with a generation number (fencing).

A claim is `claim.json` in the run directory, read and written under the run's lease lock
(`.claim.lock`, which no cell process ever takes: core/locks.py), so claims, renewals and takeovers
never wait on a cell frozen inside one of its own writes. Every new
claim and every takeover bumps its `generation`; the holder writes the cell's state, progress,
curves, checkpoints and results only through a RunDir fenced with its generation (core/run_dir.py),
so a holder that lost the lease cannot land a write. The holder renews the lease by touching
claim.json (the launcher each poll for every cell it tracks, queued or running; the cell with every
heartbeat). The lease's age is read on the filesystem's clock (claim.json's mtime against a probe
file's), never by comparing two hosts' wall clocks.

A claim is alive while: its launcher pid is alive (same host); a local job pid of it is alive (same
host); the scheduler says a Slurm job of it is alive; or its lease was renewed within `lease_s`.
Only a claim that is none of these can be taken over.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import atomic_write_json, read_json
from safedreamer_sweep.core.locks import LockBusy
from safedreamer_sweep.core.run_dir import RunDir, host
from safedreamer_sweep.sweep.observe import SLURM_ALIVE, JobState, pid_alive

_LEASE_S = 60.0  # default lease: renewed every poll (seconds) and every heartbeat, so 60 s is many renewals


@dataclass(frozen=True)
class Lease:
    """The outcome of a claim: `ok`, why, and the generation a holder writes with."""

    ok: bool
    why: str
    generation: int | None = None


def _lease_age(claim_rd: RunDir) -> float | None:
    """Seconds since claim.json was last written or renewed, on the store's own clock."""
    try:
        mtime = claim_rd.claim_path.stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, claim_rd.fs_now() - mtime)


def live_holder(rd: RunDir, *, stall_after: float, job_state: JobState | None = None,
                other_than: str | None = None) -> str | None:
    """Why a live sweep (other than sweep `other_than`) holds the cell at `rd`: its claim is not released
    and its holder is alive (holder_alive); None when no such sweep does."""
    claim = read_json(rd.claim_path) or {}
    if not claim or claim.get("released_at") or claim.get("sweep_id") == other_than:
        return None
    alive, why = holder_alive(claim, rd, stall_after=stall_after, job_state=job_state)
    return f"sweep {claim.get('sweep_id')}: {why}" if alive else None


def holder_alive(claim: dict, rd: RunDir, *, stall_after: float, job_state: JobState | None = None,
                 now: float | None = None, lease_s: float | None = None) -> tuple[bool, str]:
    """Is the sweep named in `claim` still working on the cell? Returns (alive, evidence)."""
    t = time.time() if now is None else now
    # the holder's own promise (it renews within the lease_s it recorded), else the caller's, else 60 s
    lease_s = float(claim.get("lease_s") or (_LEASE_S if lease_s is None else lease_s)) if claim else _LEASE_S
    if not claim or claim.get("released_at"):
        return False, "no active claim"
    gen = f" (lease generation {claim.get('generation')})" if claim.get("generation") is not None else ""
    same_host = claim.get("host") == host()
    if same_host and pid_alive(claim.get("pid"), claim.get("pid_started_at")):
        return True, f"launcher pid {claim['pid']} on {claim['host']} is alive{gen}"
    jobs = [str(j) for j in (claim.get("job_ids") or ([claim["job_id"]] if claim.get("job_id") else []))]
    checked = []
    for jid in jobs:
        if claim.get("backend") == "local":
            if same_host:
                if pid_alive(int(jid)):
                    return True, f"local job pid {jid} is alive{gen}"
                checked.append(f"local job pid {jid} gone")
        elif job_state is not None:
            st = job_state(jid)
            if st and st.split()[0] in SLURM_ALIVE:
                ended = packed_step_ended(rd, jid)
                if ended:  # the job runs on for the cells packed beside this one
                    checked.append(f"job {jid} {st}, but {ended}")
                    continue
                return True, f"job {jid} is {st}{gen}"  # the scheduler's word, whatever the lease says
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
    if same_host and prog.get("host") == host():
        moved = prog.get("env_step_moved_at")  # written by this host's clock: comparable here
        if moved and t - moved <= stall_after:
            return True, f"env_step {prog.get('env_step')} moved {t - moved:.0f}s ago (pid {prog.get('pid')} on {prog.get('host')})"
    if same_host and claim.get("backend") == "local":
        # Every process that could renew the lease would be on this host, and none is alive.
        return False, (f"holder {claim.get('sweep_id')} is gone: launcher pid {claim.get('pid')} on {host()} is dead "
                       f"and no job or training process of it is alive")
    age = _lease_age(rd)
    if age is not None and age <= lease_s:
        return True, (f"lease of sweep {claim.get('sweep_id')} on {claim.get('host')}{gen} renewed {age:.0f}s ago "
                      f"(lease_s={lease_s:.0f}, store clock)")
    what = f"lease not renewed for {age:.0f}s > lease_s={lease_s:.0f}" if age is not None else "no lease"
    return False, f"holder {claim.get('sweep_id')} (pid {claim.get('pid')} on {claim.get('host')}{gen}) is gone: {what}"


def attempt_pack_slot(attempt: dict) -> int | None:
    """The attempt's place in a packed Slurm job: `pack_slot` (recorded at submission), else what
    the cell saw (SDS_PACK_SLOT, in stores from before the launcher recorded it); None unpacked."""
    slot = attempt.get("pack_slot", (attempt.get("gpu_env") or {}).get("SDS_PACK_SLOT"))
    return None if slot is None else int(slot)


def packed_step_ended(rd: RunDir, job_id: str) -> str | None:
    """Why packed job `job_id` no longer works on this cell although it runs (its neighbours' steps
    do): this cell ran in it as its own step (`pack_slot`) and its newest attempt there is closed.
    None when it was not packed there or its attempt is still open."""
    mine = [a for a in (rd.read_state().get("attempts", []) if rd.state_path.exists() else [])
            if str(a.get("job_id")) == str(job_id)]
    last = mine[-1] if mine else {}
    packed = attempt_pack_slot(last)
    if packed is None or last.get("outcome") not in ("done", "failed", "interrupted", "pruned"):
        return None
    return f"this cell's step in it (slot {packed}) ended: attempt {last.get('n')} {last.get('outcome')}" + (
        f" ({last['cause']})" if last.get("cause") else "")


def owner_gone(claim: dict, rd: RunDir, *, lease_s: float | None = None) -> tuple[bool, str]:
    """Is the sweep that holds `claim` itself gone, whatever its cell processes are doing? On its host:
    its launcher pid is dead; elsewhere: nothing renewed the lease (its launcher every poll, its cell
    every heartbeat) within lease_s. A cell left behind by a gone owner is an orphan: nobody else
    would ever kill it when it stalls."""
    if not claim or claim.get("released_at"):
        return True, "no active claim"
    if claim.get("host") == host():
        if pid_alive(claim.get("pid"), claim.get("pid_started_at")):
            return False, f"launcher pid {claim.get('pid')} of sweep {claim.get('sweep_id')} is alive"
        return True, f"launcher pid {claim.get('pid')} of sweep {claim.get('sweep_id')} on {host()} is dead"
    lease_s = float(claim.get("lease_s") or (_LEASE_S if lease_s is None else lease_s))
    age = _lease_age(rd)
    if age is not None and age <= lease_s:
        return False, f"lease of sweep {claim.get('sweep_id')} on {claim.get('host')} renewed {age:.0f}s ago"
    return True, (f"sweep {claim.get('sweep_id')} on {claim.get('host')} renewed no lease for "
                  f"{'ever' if age is None else f'{age:.0f}s'} (lease_s={lease_s:.0f})")


def try_lease(rd: RunDir, sweep_id: str, *, backend: str, stall_after: float,
              job_state: JobState | None = None, lease_s: float | None = None) -> Lease:
    """Claim the cell for `sweep_id`: a new generation unless we hold it already (re-claiming our own
    keeps it). A live holder's claim is refused with its evidence; so is a lease lock another
    launcher holds too long (LockBusy's evidence), never raised."""
    try:
        return _try_lease(rd, sweep_id, backend=backend, stall_after=stall_after, job_state=job_state, lease_s=lease_s)
    except LockBusy as e:
        return Lease(False, f"claim not decided: {e}")


def _try_lease(rd: RunDir, sweep_id: str, *, backend: str, stall_after: float,
               job_state: JobState | None, lease_s: float | None) -> Lease:
    with rd.lease_lock():
        old = read_json(rd.claim_path) or {}
        took: dict[str, Any] = {}
        if old and not old.get("released_at") and old.get("sweep_id") != sweep_id:
            alive, why = holder_alive(old, rd, stall_after=stall_after, job_state=job_state, lease_s=lease_s)
            if alive:
                return Lease(False, f"held by sweep {old.get('sweep_id')}: {why}")
            took = {"took_over_from": old.get("sweep_id"), "took_over_because": why,
                    "took_over_generation": old.get("generation")}
        ours = old.get("sweep_id") == sweep_id and not old.get("released_at") and old.get("host") == host()
        generation = int(old.get("generation") or 0) + (0 if ours and old.get("generation") else 1)
        doc: dict[str, Any] = {"sweep_id": sweep_id, "host": host(), "pid": os.getpid(),
                               "pid_started_at": time.time(), "backend": backend, "generation": generation,
                               "lease_s": _LEASE_S if lease_s is None else lease_s,
                               "claimed_at": time.time(), "job_ids": old.get("job_ids", []) if ours else [], **took}
        try:
            import psutil

            doc["pid_started_at"] = psutil.Process().create_time()
        except (ImportError, OSError):  # keep the wall-clock start time
            doc["pid_started_at"] = time.time()
        atomic_write_json(rd.claim_path, doc)
        why = f"took over: {took['took_over_because']}" if took else "claimed"
        return Lease(True, why, generation)


def try_claim(rd: RunDir, sweep_id: str, *, backend: str, stall_after: float,
              job_state: JobState | None = None, lease_s: float | None = None) -> tuple[bool, str]:
    """try_lease as (claimed, why)."""
    got = try_lease(rd, sweep_id, backend=backend, stall_after=stall_after, job_state=job_state, lease_s=lease_s)
    return got.ok, got.why


def still_held(rd: RunDir, sweep_id: str, generation: int | None) -> tuple[bool, str]:
    """Does `sweep_id` still hold the lease at `generation`? Checked before submitting a queued cell."""
    doc = read_json(rd.claim_path) or {}
    if doc.get("sweep_id") == sweep_id and doc.get("generation") == generation and not doc.get("released_at"):
        return True, f"lease generation {generation} held"
    return False, (f"lease generation {generation} of sweep {sweep_id} was taken over: claim.json holds generation "
                   f"{doc.get('generation')} of sweep {doc.get('sweep_id')} on {doc.get('host')}"
                   + (f" ({doc.get('took_over_because')})" if doc.get("took_over_because") else ""))


def add_jobs(rd: RunDir, sweep_id: str, job_ids: list[str]) -> None:
    """Record the scheduler jobs that run the cell for this claim (they keep it alive after a
    detached launcher exits)."""
    with rd.lease_lock():
        doc = read_json(rd.claim_path) or {}
        if doc.get("sweep_id") != sweep_id:
            return
        doc["job_ids"] = list(dict.fromkeys([*doc.get("job_ids", []), *map(str, job_ids)]))
        doc["job_id"] = str(job_ids[-1]) if job_ids else doc.get("job_id")
        atomic_write_json(rd.claim_path, doc)


def release(rd: RunDir, sweep_id: str, outcome: str) -> None:
    """Mark our claim released (the file stays as a record of who ran the cell last)."""
    with rd.lease_lock():
        doc = read_json(rd.claim_path) or {}
        if doc.get("sweep_id") == sweep_id and not doc.get("released_at") and (
                rd.generation is None or doc.get("generation") == rd.generation):
            doc.update(released_at=time.time(), outcome=outcome)
            atomic_write_json(rd.claim_path, doc)


def _race_path(rd: RunDir) -> Path:
    """`race_winner`: created exclusively by the first racing copy to start (its job id inside)."""
    return rd.path / "race_winner"


def race_start(rd: RunDir, job_id: str) -> str | None:
    """Called by a racing copy when it starts: the first copy to start wins (an exclusive create,
    so a cell takes no lock). Returns the winner's job id if it is another copy (then this copy
    must exit without running), else None."""
    if not (read_json(rd.claim_path) or {}).get("race"):
        return None
    try:
        fd = os.open(_race_path(rd), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        winner = race_winner(rd)
        return winner if winner and winner != str(job_id) else None
    with os.fdopen(fd, "w") as f:
        f.write(str(job_id))
        f.flush()
        os.fsync(f.fileno())
    return None


def race_winner(rd: RunDir) -> str | None:
    """The job id of the racing copy that started first, None before any has."""
    try:
        return _race_path(rd).read_text().strip() or None
    except FileNotFoundError:
        return None


def record_race(rd: RunDir, partitions: list[str], first: bool) -> None:
    """The claim names the racing partitions; a new race (the first partition's copy) clears the
    previous winner."""
    with rd.lease_lock():
        doc = read_json(rd.claim_path) or {}
        doc["race"] = partitions
        if first:
            with contextlib.suppress(FileNotFoundError):
                _race_path(rd).unlink()
        atomic_write_json(rd.claim_path, doc)
