"""observe_run / observe_store over real run directories written through the store API."""

from __future__ import annotations

import os
import time

from conftest import dead_pid

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.observe import observe_run, observe_store, pid_alive

SPEC = {"config": "v2_full", "seed": 3, "hash": "abcd1234", "run_config": {"trainer": {"total_steps": 4096}}}


def make_run(tmp_path, spec=SPEC) -> RunDir:
    rd = Store(tmp_path).run_dir(spec["config"], spec["seed"], spec["hash"])
    rd.ensure_spec(spec)
    return rd


def test_new_run_dir_is_pending(tmp_path):
    v = observe_run(make_run(tmp_path), stall_after=60)
    assert (v.phase, v.attempts, v.config, v.seed) == ("pending", 0, "v2_full", 3)


def test_done_needs_both_evaluations(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt()
    rd.end_attempt("done")
    rd.set_phase("done", trained=True)
    rd.write_eval("id", {"summary": {"return_mean": 1.0}})
    rd.write_eval("ood", {"summary": {"return_mean": 0.5}})
    v = observe_run(rd, stall_after=60)
    assert v.phase == "done" and v.eval_ood == {"return_mean": 0.5} and v.trained


def test_live_pid_with_moving_env_step_is_running_with_eta(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt()  # this process: alive, same host
    rd.heartbeat(1024, 4096, steps_per_s=512.0)
    v = observe_run(rd, stall_after=60)
    assert v.phase == "running" and v.pid == os.getpid() and v.pid_alive
    assert v.env_step == 1024 and v.total_steps == 4096 and abs(v.eta_s - 6.0) < 1e-6
    assert v.progress_age_s < 5


def test_live_pid_whose_env_step_did_not_move_is_stalled(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt()
    rd.heartbeat(1024, 4096, steps_per_s=512.0)
    later = time.time() + 120
    v = observe_run(rd, stall_after=60, now=later)
    assert v.phase == "stalled" and v.pid_alive and v.progress_age_s > 100


def test_heartbeat_refresh_without_progress_still_stalls(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt()
    rd.heartbeat(1024, 4096)
    later = time.time() + 300
    # a heartbeat thread that keeps writing while the loop hangs: updated_at moves, env_step doesn't
    from safedreamer_sweep.core.files import atomic_write_json
    atomic_write_json(rd.progress_path, {**rd.read_progress(), "updated_at": later})
    assert observe_run(rd, stall_after=60, now=later).phase == "stalled"


def test_resumed_attempt_is_not_stalled_by_the_previous_heartbeat(tmp_path):
    rd = make_run(tmp_path)
    from safedreamer_sweep.core.files import atomic_write_json
    atomic_write_json(rd.progress_path, {"env_step": 512, "total_steps": 4096, "env_step_moved_at": time.time() - 900,
                                         "updated_at": time.time() - 900})
    rd.begin_attempt()  # a fresh attempt started now
    assert observe_run(rd, stall_after=60).phase == "running"


def test_evaluating_cell_is_not_stalled(tmp_path):
    from safedreamer_sweep.core.files import atomic_write_json
    rd = make_run(tmp_path)
    rd.begin_attempt()
    rd.heartbeat(4096, 4096)
    later = time.time() + 100
    assert observe_run(rd, stall_after=60, now=later).phase == "stalled"
    rd.set_phase("eval-id")  # evaluation started 10 s before `later`: env_step cannot move while evaluating
    atomic_write_json(rd.state_path, {**rd.read_state(), "updated_at": later - 10})
    assert observe_run(rd, stall_after=60, now=later).phase == "running"


def test_the_tasks_startup_allowance_is_not_counted_as_a_stall_and_a_hang_after_it_is(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt(startup_s=300.0)  # as tasks/run.py records task.startup_s
    rd.heartbeat(0, 4096)  # the attempt's first heartbeat, then a compile that writes nothing
    t0 = time.time()
    v = observe_run(rd, stall_after=60, now=t0 + 200)
    assert v.phase == "running" and "startup_s" in v.detail, v
    assert observe_run(rd, stall_after=60, now=t0 + 340).phase == "running"  # 40 s past the allowance
    v = observe_run(rd, stall_after=60, now=t0 + 400)
    assert v.phase == "stalled" and 95 < v.progress_age_s < 105, v
    # without the allowance the same evidence is a stall at once
    assert observe_run(make_run(tmp_path / "b"), stall_after=60).phase == "pending"
    rd2 = make_run(tmp_path / "b")
    rd2.begin_attempt()
    rd2.heartbeat(0, 4096)
    assert observe_run(rd2, stall_after=60, now=time.time() + 200).phase == "stalled"


def test_dead_pid_without_end_marker_is_lost(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt(pid=dead_pid())
    rd.heartbeat(512, 4096)
    v = observe_run(rd, stall_after=60)
    assert v.phase == "lost" and v.pid_alive is False and "no end marker" in v.detail


def test_failed_attempt_shows_cause_and_evidence(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt()
    rd.end_attempt("failed", cause="error", evidence="ValueError: nan in loss")
    rd.set_phase("failed")
    v = observe_run(rd, stall_after=60)
    assert (v.phase, v.cause, v.evidence) == ("failed", "error", "ValueError: nan in loss")


def test_other_host_uses_the_scheduler_state(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt(host="gpu-node-7", pid=12345, job_id="777_1")
    rd.heartbeat(512, 4096)
    assert observe_run(rd, stall_after=60, job_state=lambda j: "RUNNING").phase == "running"
    v = observe_run(rd, stall_after=60, job_state=lambda j: "CANCELLED by 0")
    assert v.phase == "lost" and v.job_state == "CANCELLED by 0" and v.job_id == "777_1"


def test_other_host_without_scheduler_falls_back_to_heartbeat_age(tmp_path):
    rd = make_run(tmp_path)
    rd.begin_attempt(host="gpu-node-7", pid=12345)
    rd.heartbeat(512, 4096)
    assert observe_run(rd, stall_after=60).phase == "running"
    assert observe_run(rd, stall_after=60, now=time.time() + 600).phase == "lost"


def test_submitted_attempt_is_pending_until_the_job_dies(tmp_path):
    rd = make_run(tmp_path)
    rd.update_state(lambda s: s.setdefault("attempts", []).append({"n": 1, "outcome": "submitted", "job_id": "55"}))
    assert observe_run(rd, stall_after=60, job_state=lambda j: "PENDING").phase == "pending"
    assert observe_run(rd, stall_after=60, job_state=lambda j: "FAILED").phase == "lost"


def test_store_lists_expected_cells_without_run_dir_as_pending(tmp_path):
    store = Store(tmp_path)
    make_run(tmp_path)
    store.write_sweep_manifest("s1", {"created_at": 1.0, "cells": [
        {"config": "v2_full", "seed": 3, "hash": "abcd1234"}, {"config": "v2_full", "seed": 4, "hash": "ffff0000"}]})
    views = observe_store(store, stall_after=60)
    assert [(v.seed, v.phase, v.run_dir is None) for v in views] == [(3, "pending", False), (4, "pending", True)]


def test_pid_reuse_counts_as_dead():
    assert pid_alive(os.getpid()) is True
    # a record that started before this process was created cannot have been written by it
    import psutil
    created = psutil.Process().create_time()
    assert pid_alive(os.getpid(), started_at=created - 100) is False
    assert pid_alive(os.getpid(), started_at=created + 1) is True
