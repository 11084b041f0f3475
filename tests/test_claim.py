"""Claims in real run directories: one holder at a time, takeover only from a dead holder."""

from __future__ import annotations

import os
import time

import pytest
from conftest import dead_pid

from safedreamer_sweep.core.files import atomic_write_json, read_json
from safedreamer_sweep.core.run_dir import LeaseLost, RunDir, host
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.claim import (
    add_jobs,
    holder_alive,
    race_start,
    release,
    still_held,
    try_claim,
    try_lease,
)


def run_dir(tmp_path) -> RunDir:
    rd = Store(tmp_path).run_dir("v2_full", 0, "abcd1234")
    rd.ensure_spec({"config": "v2_full", "seed": 0, "hash": "abcd1234"})
    return rd


def test_second_sweep_cannot_claim_a_live_claim(tmp_path):
    rd = run_dir(tmp_path)
    assert try_claim(rd, "sweep-a", backend="local", stall_after=60) == (True, "claimed")
    ok, why = try_claim(rd, "sweep-b", backend="local", stall_after=60)
    assert not ok and "sweep-a" in why and "alive" in why
    assert try_claim(rd, "sweep-a", backend="local", stall_after=60)[0]  # re-claiming our own


def test_dead_holder_is_taken_over_with_the_reason_recorded(tmp_path):
    rd = run_dir(tmp_path)
    atomic_write_json(rd.claim_path, {"sweep_id": "old", "host": host(), "pid": dead_pid(), "backend": "local",
                                      "claimed_at": time.time() - 1000, "job_ids": [str(dead_pid())]})
    ok, why = try_claim(rd, "new", backend="local", stall_after=60)
    assert ok and why.startswith("took over")
    doc = read_json(rd.claim_path)
    assert doc["sweep_id"] == "new" and doc["took_over_from"] == "old"


def test_moving_env_step_keeps_a_claim_alive_even_without_its_launcher(tmp_path):
    rd = run_dir(tmp_path)
    atomic_write_json(rd.claim_path, {"sweep_id": "old", "host": host(), "pid": dead_pid(), "backend": "slurm",
                                      "claimed_at": time.time() - 1000, "job_ids": ["123"]})
    rd.heartbeat(512, 4096)
    assert not try_claim(rd, "new", backend="slurm", stall_after=60)[0]
    # ... and a live scheduler job too, once the heartbeat is old
    atomic_write_json(rd.progress_path, {**rd.read_progress(), "env_step_moved_at": time.time() - 500})
    alive, why = holder_alive(read_json(rd.claim_path), rd, stall_after=60, job_state=lambda j: "RUNNING")
    assert alive and "job 123 is RUNNING" in why
    alive, _ = holder_alive(read_json(rd.claim_path), rd, stall_after=60, job_state=lambda j: "COMPLETED")
    assert not alive


def test_a_running_packed_job_does_not_hold_a_cell_whose_own_step_in_it_ended(tmp_path):
    """A packed Slurm job runs on for its other cells after one cell's step ended: the job's RUNNING
    state keeps that cell's claim alive only while the cell's attempt in it is open."""
    rd = run_dir(tmp_path)
    atomic_write_json(rd.claim_path, {"sweep_id": "old", "host": host(), "pid": dead_pid(), "backend": "slurm",
                                      "claimed_at": time.time() - 1000, "job_ids": ["123"]})
    atomic_write_json(rd.state_path, {"attempts": [{"n": 1, "job_id": "123", "pack_slot": 1, "outcome": "running"}]})
    alive, why = holder_alive(read_json(rd.claim_path), rd, stall_after=60, job_state=lambda j: "RUNNING")
    assert alive and "job 123 is RUNNING" in why
    atomic_write_json(rd.state_path, {"attempts": [{"n": 1, "job_id": "123", "pack_slot": 1, "outcome": "failed",
                                                    "cause": "crash"}]})
    alive, why = holder_alive(read_json(rd.claim_path), rd, stall_after=60, job_state=lambda j: "RUNNING")
    assert not alive and "step in it (slot 1) ended: attempt 1 failed (crash)" in why, why
    # not packed: the job's word stands
    atomic_write_json(rd.state_path, {"attempts": [{"n": 1, "job_id": "123", "outcome": "failed"}]})
    assert holder_alive(read_json(rd.claim_path), rd, stall_after=60, job_state=lambda j: "RUNNING")[0]


def test_released_claim_is_free_and_kept_as_a_record(tmp_path):
    rd = run_dir(tmp_path)
    try_claim(rd, "a", backend="local", stall_after=60)
    add_jobs(rd, "a", ["11", "12"])
    release(rd, "a", "done")
    doc = read_json(rd.claim_path)
    assert doc["released_at"] and doc["outcome"] == "done" and doc["job_ids"] == ["11", "12"]
    assert try_claim(rd, "b", backend="local", stall_after=60) == (True, "claimed")


def test_first_racing_copy_to_start_wins(tmp_path):
    rd = run_dir(tmp_path)
    try_claim(rd, "a", backend="slurm", stall_after=60)
    assert race_start(rd, "11") is None  # not racing: runs
    doc = read_json(rd.claim_path)
    atomic_write_json(rd.claim_path, {**doc, "race": ["p1", "p2"]})
    assert race_start(rd, "11") is None
    assert race_start(rd, "12") == "11"
    assert race_start(rd, "11") is None  # the winner restarting after a requeue still runs


def test_known_dead_launcher_and_jobs_beat_a_recent_heartbeat(tmp_path):
    # An OOM-killed job's last heartbeat is seconds old, but its launcher and its job are gone.
    rd = run_dir(tmp_path)
    atomic_write_json(rd.claim_path, {"sweep_id": "old", "host": host(), "pid": dead_pid(), "backend": "slurm",
                                      "claimed_at": time.time(), "job_ids": ["52_0"]})
    rd.heartbeat(512, 4096)
    alive, why = holder_alive(read_json(rd.claim_path), rd, stall_after=600, job_state=lambda j: "FAILED")
    assert not alive and "job 52_0 FAILED" in why
    assert try_claim(rd, "new", backend="slurm", stall_after=600, job_state=lambda j: "FAILED")[0]


def test_crashed_local_holder_with_a_fresh_heartbeat_from_a_dead_pid_is_gone(tmp_path):
    # The launcher died (e.g. ENOSPC) before recording its job; the training process died with it
    # seconds ago. Same host: both pids are provably dead, so the cell is free now, not in stall_after.
    rd = run_dir(tmp_path)
    atomic_write_json(rd.claim_path, {"sweep_id": "old", "host": host(), "pid": dead_pid(), "backend": "local",
                                      "claimed_at": time.time(), "job_ids": []})
    rd.heartbeat(1288, 4096)
    atomic_write_json(rd.progress_path, {**rd.read_progress(), "pid": dead_pid()})
    alive, why = holder_alive(read_json(rd.claim_path), rd, stall_after=600)
    assert not alive and "training pid" in why and "dead" in why
    assert try_claim(rd, "new", backend="local", stall_after=600)[0]


# ----------------------------------------------------------------------------- leases and fencing


def other_host_claim(rd: RunDir, *, generation: int = 1, skew_s: float = 0.0) -> dict:
    """A claim written by a sweep on another host whose wall clock is `skew_s` off ours."""
    doc = {"sweep_id": "remote", "host": "other-host", "pid": 1, "backend": "local", "generation": generation,
           "claimed_at": time.time() + skew_s, "job_ids": ["1"]}
    atomic_write_json(rd.claim_path, doc)
    return doc


def age_claim(rd: RunDir, seconds: float) -> None:
    """Make claim.json's last renewal `seconds` old on the store's clock (its mtime)."""
    t = rd.fs_now() - seconds
    os.utime(rd.claim_path, (t, t))


def test_every_claim_and_takeover_bumps_the_generation_and_reclaiming_keeps_it(tmp_path):
    rd = run_dir(tmp_path)
    first = try_lease(rd, "a", backend="local", stall_after=60)
    assert first.ok and first.generation == 1
    assert try_lease(rd, "a", backend="local", stall_after=60).generation == 1
    release(rd, "a", "done")
    assert try_lease(rd, "b", backend="local", stall_after=60).generation == 2
    other_host_claim(rd, generation=2)
    age_claim(rd, 120)
    took = try_lease(rd, "c", backend="local", stall_after=60, lease_s=30)
    assert took.ok and took.generation == 3 and "not renewed for 120s > lease_s=30" in took.why
    assert read_json(rd.claim_path)["took_over_generation"] == 2


def test_a_lease_from_another_host_is_alive_while_renewed_whatever_its_wall_clock(tmp_path):
    rd = run_dir(tmp_path)
    for skew in (-3600.0, 0.0, 3600.0):  # the other host's clock an hour behind, right, an hour ahead
        claim = other_host_claim(rd, skew_s=skew)
        alive, why = holder_alive(claim, rd, stall_after=5, lease_s=30)
        assert alive and "renewed 0s ago" in why and "store clock" in why, (skew, why)
        age_claim(rd, 31)
        alive, why = holder_alive(claim, rd, stall_after=5, lease_s=30)
        assert not alive and "not renewed for 31s" in why, (skew, why)
        # renewal by the holder (its fenced RunDir) makes it alive again
        assert rd.fenced(1).renew_lease()
        assert holder_alive(claim, rd, stall_after=5, lease_s=30)[0]


def test_a_queued_cell_of_a_renewing_holder_is_not_taken_over_after_stall_after(tmp_path):
    # Host A queued the cell behind max_parallel; nothing trains, no heartbeat, but A renews.
    rd = run_dir(tmp_path)
    other_host_claim(rd)
    for _ in range(3):
        age_claim(rd, 20)  # 20 s since the last renewal, stall_after=5: a wall-clock rule would take it
        assert RunDir(rd.path, 1).renew_lease()
        ok, why = try_claim(rd, "b", backend="local", stall_after=5, lease_s=30)
        assert not ok and "lease of sweep remote on other-host (lease generation 1)" in why


def test_writes_of_a_holder_that_lost_its_lease_do_not_land(tmp_path):
    rd = run_dir(tmp_path)
    old = rd.fenced(try_lease(rd, "a", backend="local", stall_after=60).generation)
    old.begin_attempt()
    old.save_checkpoint(1024, {"w": 1})
    old.heartbeat(1024, 4096)
    before = {p.name: p.read_bytes() for p in rd.path.rglob("*") if p.is_file() and p.name != ".lock"}
    # host B takes the cell over (A stopped renewing): generation 2
    atomic_write_json(rd.claim_path, {**read_json(rd.claim_path), "host": "other-host"})
    age_claim(rd, 600)
    new = try_lease(rd, "b", backend="local", stall_after=60, lease_s=30)
    assert new.ok and new.generation == 2
    for write in (lambda: old.save_checkpoint(2048, {"w": 2}), lambda: old.heartbeat(2048, 4096),
                  lambda: old.write_eval("id", {"summary": {}}), lambda: old.end_attempt("done"),
                  lambda: old.set_phase("done"), lambda: old.append_metrics({"env_step": 2048})):
        with pytest.raises(LeaseLost, match=r"lease generation 1 is no longer held.*generation 2"):
            write()
    assert not old.renew_lease()
    after = {p.name: p.read_bytes() for p in rd.path.rglob("*") if p.is_file() and p.name not in (".lock", "claim.json")}
    assert after == {k: v for k, v in before.items() if k != "claim.json"}
    assert [s for s, _ in rd.checkpoints()] == [1024]
    # the new holder writes
    rd.fenced(2).save_checkpoint(2048, {"w": 3})
    assert still_held(rd, "b", 2)[0] and not still_held(rd, "a", 1)[0]
    assert "taken over" in still_held(rd, "a", 1)[1]


def test_the_cell_process_is_fenced_by_the_lease_it_was_given(tmp_path, monkeypatch):
    rd = run_dir(tmp_path)
    gen = try_lease(rd, "a", backend="local", stall_after=60).generation
    monkeypatch.setenv("SDS_LEASE", f"{rd.path.name}:{gen}")
    cell = Store(tmp_path).run_dir("v2_full", 0, "abcd1234")
    assert cell.generation == gen
    cell.heartbeat(10, 100)
    atomic_write_json(rd.claim_path, {**read_json(rd.claim_path), "generation": gen + 1})
    with pytest.raises(LeaseLost):
        cell.heartbeat(20, 100)
    assert Store(tmp_path).run_dir("v2_full", 1, "ffff0000").generation is None  # another run: unfenced


@pytest.mark.slurm
def test_a_slurm_backed_claim_is_alive_while_the_scheduler_says_so(tmp_path):
    import shutil
    import subprocess

    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm (bash scripts/start-slurm.sh)")
    job = subprocess.run(["sbatch", "--parsable", "--mem=50M", f"--output={tmp_path}/%j.out", "--wrap", "sleep 30"],
                         capture_output=True, text=True, check=True).stdout.strip()

    def squeue(j: str) -> str | None:
        out = subprocess.run(["squeue", "-h", "-j", j, "-o", "%T"], capture_output=True, text=True, check=False)
        return out.stdout.strip() or "COMPLETED"

    try:
        rd = run_dir(tmp_path)
        claim = {**other_host_claim(rd), "backend": "slurm", "job_ids": [job]}
        atomic_write_json(rd.claim_path, claim)
        age_claim(rd, 3600)  # no renewal for an hour: the scheduler's word keeps it
        alive, why = holder_alive(claim, rd, stall_after=5, lease_s=30, job_state=squeue)
        assert alive and f"job {job} is" in why
    finally:
        subprocess.run(["scancel", job], check=False)
    deadline = time.time() + 30
    while squeue(job) != "COMPLETED" and time.time() < deadline:
        time.sleep(0.5)
    alive, why = holder_alive(claim, rd, stall_after=5, lease_s=30, job_state=squeue)
    assert not alive and "not renewed" in why


def test_a_frozen_holder_of_the_data_lock_blocks_no_lease_operation_and_is_named(tmp_path):
    """A cell process SIGSTOPped while it holds its run dir's data lock: renewal, a second claim's
    refusal, job ids and release all go through at once (the lease lock); a supervisor write waits
    its bounded time and gets LockBusy naming the pid as stopped; killing the holder frees it."""
    import signal
    import subprocess
    import sys

    from safedreamer_sweep.core.locks import SUPERVISOR_LOCK_S, LockBusy

    rd = run_dir(tmp_path)
    lease = try_lease(rd, "sweep-a", backend="local", stall_after=60)
    held = rd.fenced(lease.generation)
    code = ("import os, signal, sys; from pathlib import Path; from safedreamer_sweep.core.run_dir import RunDir\n"
            "with RunDir(Path(sys.argv[1])).lock():\n    print('locked', flush=True); os.kill(os.getpid(), signal.SIGSTOP)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(rd.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        assert held.renew_lease()
        add_jobs(held, "sweep-a", ["4242"])
        assert not try_claim(rd, "sweep-b", backend="local", stall_after=60)[0]
        assert time.monotonic() - t0 < 1.0  # none of them waited for the data lock
        t0 = time.monotonic()
        with pytest.raises(LockBusy) as e:
            held.supervised().set_phase("failed")
        assert SUPERVISOR_LOCK_S - 0.5 <= time.monotonic() - t0 < SUPERVISOR_LOCK_S + 2
        assert f"held by pid {p.pid}" in str(e.value) and "stopped" in str(e.value), str(e.value)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    held.supervised().set_phase("failed")  # the kernel dropped the dead holder's lock
    release(held, "sweep-a", "failed")
    assert read_json(rd.claim_path)["released_at"] and rd.read_state()["phase"] == "failed"
