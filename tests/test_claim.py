"""Claims in real run directories: one holder at a time, takeover only from a dead holder."""

from __future__ import annotations

import time

from conftest import dead_pid

from safedreamer_sweep.core.store import (
    RunDir,
    Store,
    atomic_write_json,
    host,
    read_json,
)
from safedreamer_sweep.sweep.claim import (
    add_jobs,
    holder_alive,
    race_start,
    release,
    try_claim,
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
