"""`status` from real store states: a finished cell, a failed cell, a store with holes, a live
training process, the same process SIGSTOPped (stalled) and SIGKILLed (lost)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, sds

from safedreamer_sweep.commands import status
from safedreamer_sweep.commands.cli import main as cli_main
from safedreamer_sweep.core.store import Store


def run_cell(store: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real cell task (`python -m safedreamer_sweep`) in a child process."""
    return sds(f"store.root={store}", *overrides, check=check)


def test_done_headline_from_a_real_finished_cell(finished_store):
    doc = status.collect(finished_store)
    assert doc["verdict"] == "DONE 1/1"
    assert status.exit_code(doc) == 0 and doc["all_done"] is True
    (cell,) = doc["cells"]
    assert (cell["config"], cell["seed"], cell["phase"]) == ("v2_baseline", 0, "done")
    assert cell["env_step"] == cell["total_steps"] == 1024
    assert cell["attempts"] == 1 and cell["cause"] is None
    assert isinstance(cell["eval_id"]["return_mean"], float) and isinstance(cell["eval_ood"]["cost_mean"], float)
    # the one attempt led to the finished cell: all of its hours are useful
    assert cell["cost"]["useful_h"] > 0 and cell["cost"]["wasted_h"] == 0 and cell["cost"]["pending_h"] == 0


def test_incomplete_headline_names_cells_never_run(store_copy):
    """A sweep manifest asked for 4 cells; only one has a run directory."""
    store = Store(store_copy)
    (rd,) = list(store.iter_runs())
    spec = rd.read_spec()
    cells = [{"config": "v2_baseline", "seed": 0, "hash": spec["hash"], "overrides": []},
             {"config": "v2_full", "seed": 0, "hash": None, "overrides": []},
             {"config": "v2_full", "seed": 1, "hash": None, "overrides": []},
             {"config": "v2_u_only", "seed": 0, "hash": None, "overrides": []}]
    store.write_sweep_manifest("sweep-holes", {"created_at": time.time(), "cells": cells, "launcher": {}})
    doc = status.collect(store_copy)
    assert doc["verdict"] == "INCOMPLETE: 3 cells never run: v2_full seeds 0 1, v2_u_only seed 0"
    assert status.exit_code(doc) == 1
    assert doc["cells"][0]["other_identities"] == []
    holes = [c for c in doc["cells"] if c["run_dir"] is None]
    assert [(c["config"], c["seed"], c["phase"]) for c in holes] == [
        ("v2_full", 0, "pending"), ("v2_full", 1, "pending"), ("v2_u_only", 0, "pending")]


def test_failed_cell_shows_cause_and_evidence(tmp_path):
    """A real failure: the trainer refuses a budget that is not a multiple of the rollout."""
    store = tmp_path / "store"
    out = run_cell(store, "config=v2_cert_only", "seed=2", "hydra/launcher=basic", "trainer.total_steps=1000",
                   "trainer.rollout_steps=512", "trainer.num_envs=1", check=False)
    assert out.returncode != 0
    doc = status.collect(store)
    (cell,) = doc["cells"]
    assert cell["phase"] == "failed" and cell["cause"] == "error"
    assert "trainer.total_steps=1000" in cell["evidence"]
    assert doc["verdict"] == "INCOMPLETE: 1 failed: v2_cert_only seed 2 (error)"
    assert cell["cost"]["wasted_h"] > 0 and cell["cost"]["useful_h"] == 0
    assert status.exit_code(doc) == 1
    # the cell in depth: its attempt, cause, and the traceback tail the cell recorded
    hist = status.cell_history(doc, "v2_cert_only", 2)
    (a,) = hist["attempts"]
    assert a["outcome"] == "failed" and a["cost"]["class"] == "wasted" and "ValueError" in a["traceback_tail"]
    assert cli_main(["status", str(store), "--cell", "v2_cert_only:2", "--width", "200"]) == 1


def _wait_for_progress(store: Path, min_step: int, timeout: float = 180.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        for p in store.glob("runs/*/seed_*/*/progress.json"):
            try:
                doc = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if doc.get("env_step", 0) >= min_step and doc.get("steps_per_s"):
                return doc
        time.sleep(0.5)
    raise AssertionError(f"no progress.json with env_step >= {min_step} under {store} after {timeout:.0f}s")


@pytest.mark.slow
def test_running_then_stalled_then_lost_from_a_real_training_process(tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "safedreamer_sweep", f"store.root={store}", "config=v2_full", "seed=1",
           "hydra/launcher=basic", "trainer.total_steps=512000", "trainer.num_envs=1", "trainer.rollout_steps=512",
           "trainer.heartbeat_every_s=0.5", "eval.episodes=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_progress(store, 1024)
        doc = status.collect(store, stall_after=60)
        (cell,) = doc["cells"]
        assert cell["phase"] == "running" and cell["pid"] == proc.pid and cell["pid_alive"] is True
        assert 0 < cell["env_step"] < cell["total_steps"] == 512000 and cell["steps_per_s"] > 0
        assert re.fullmatch(r"RUNNING 0/1 \(ETA [0-9.]+ (s|min|h); 1 running\)", doc["verdict"]), doc["verdict"]
        assert status.exit_code(doc) == 1

        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(3.0)
        doc = status.collect(store, stall_after=2.0)
        (cell,) = doc["cells"]
        assert cell["phase"] == "stalled" and cell["proc_status"] == "stopped"
        assert re.fullmatch(rf"STALLED 1: v2_full seed 1, no progress for \d+ s \(pid {proc.pid} alive, "
                            r"stopped \(SIGSTOP\), 0% CPU\)", doc["verdict"]), doc["verdict"]
        assert cell["progress_age_s"] >= 2.0

        proc.kill()  # SIGKILL: the attempt gets no end marker
        proc.wait(timeout=30)
        doc = status.collect(store, stall_after=2.0)
        (cell,) = doc["cells"]
        assert cell["phase"] == "lost" and cell["pid_alive"] is False
        assert doc["verdict"] == (f"INCOMPLETE: 1 lost: v2_full seed 1 (pid {proc.pid} on {cell['host']} is gone "
                                  f"and attempt 1 has no end marker)")
        # still an open attempt with no end: its hours are not counted as useful
        assert cell["cost"]["useful_h"] == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)


def test_json_document_is_stable_and_documented(finished_store, capsys):
    code = cli_main(["status", str(finished_store), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["schema"] == status.SCHEMA and doc["verdict"] == "DONE 1/1"
    assert set(doc) >= {"verdict", "cells", "counts", "all_done", "cost", "store", "generated_at", "stall_after_s"}
    (cell,) = doc["cells"]
    assert set(status.CELL_FIELDS) <= set(cell)
    assert cell["phase"] in ("pending", "running", "stalled", "done", "failed", "lost")
    types = {"config": str, "seed": int, "env_step": int, "total_steps": int, "steps_per_s": (int, float),
             "progress_age_s": (int, float), "attempts": int}
    for k, t in types.items():
        assert isinstance(cell[k], t), (k, cell[k])
    assert cell["cause"] is None
    # every field of the document is described in docs/status-json.md
    text = (ROOT / "docs" / "status-json.md").read_text()
    for k in (*status.CELL_FIELDS, "verdict", "cells", "counts", "all_done", "schema", "stall_after_s"):
        assert f"`{k}`" in text, f"docs/status-json.md does not document `{k}`"


def test_rendered_screen_shows_headline_matrix_evidence_and_cost(finished_store):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status.status_view(status.collect(finished_store)))
    text = console.export_text()
    assert text.splitlines()[0] == "DONE 1/1"
    for needle in ("config x seed", "seed 0", "ID eval", "OOD eval", "v2_baseline s0", "1024/1024 100%",
                   "device-hours", "CPU-core-h"):
        assert needle in text, needle


def test_headline_lines_for_queued_and_several_stalled_cells():
    """The headline is a pure function of the cell dicts; shapes the real-state tests cannot reach cheaply."""
    base = {"attempts": 1, "eta_s": None, "progress_age_s": None, "pid": None, "pid_alive": None,
            "job_id": None, "host": "vm", "cause": None, "state_phase": None, "last_outcome": None}
    cells = [dict(base, config="a", seed=0, phase="done"),
             dict(base, config="a", seed=1, phase="pending", job_id="77", last_outcome="submitted"),
             dict(base, config="b", seed=0, phase="running", eta_s=840.0)]
    assert status.headline(cells) == "RUNNING 1/3 (ETA 14 min; 1 running; 1 queued)"
    cells = [dict(base, config="v2_full", seed=3, phase="stalled", progress_age_s=840.0, job_id="123",
                  job_state="RUNNING"),
             dict(base, config="v2_full", seed=4, phase="stalled", progress_age_s=900.0, pid=9, pid_alive=True)]
    assert status.headline(cells) == ("STALLED 2: v2_full seed 3, no progress for 14 min (job 123 RUNNING); "
                                     "also v2_full seed 4")
    assert status.headline([]).startswith("EMPTY")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(status.StatusError, match="no such store directory"):
        status.collect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(status.StatusError, match="not a safedreamer-sweep store"):
        status.collect(tmp_path / "empty")


def test_corrupt_state_is_shown_not_crashed_on(store_copy):
    (rd,) = list(Store(store_copy).iter_runs())
    rd.state_path.write_text('{"phase": "do')  # torn by hand: what a non-atomic writer would leave
    doc = status.collect(store_copy)
    (cell,) = doc["cells"]
    assert cell["phase"] == "failed" and cell["cause"] == "corrupt" and "state.json" in cell["evidence"]
    assert doc["verdict"] == "INCOMPLETE: 1 failed: v2_baseline seed 0 (corrupt)"


def test_a_cell_claimed_by_a_live_sweep_is_queued_not_never_run(store_copy):
    """The launcher claims every cell it will run before submitting it; a claimed cell waiting for a
    slot is queued. Here this test process is the live launcher holding the claim."""
    from safedreamer_sweep.core.identity import RunSpec
    from safedreamer_sweep.sweep.claim import try_claim

    store = Store(store_copy)
    (done_rd,) = list(store.iter_runs())
    spec = done_rd.read_spec()
    rc = {**spec["run_config"], "seed": 1}
    waiting = RunSpec(config="v2_baseline", seed=1, hash="0badc0de", run_config=rc)
    rd = store.run_dir(waiting.config, waiting.seed, waiting.hash)
    rd.ensure_spec({"config": waiting.config, "seed": 1, "hash": waiting.hash, "run_config": rc})
    ok, _ = try_claim(rd, "sweep-test", backend="local", stall_after=60)
    assert ok
    doc = status.collect(store_copy)
    cell = next(c for c in doc["cells"] if c["seed"] == 1)
    assert cell["phase"] == "pending" and cell["claimed_by"].startswith("sweep sweep-test: launcher pid")
    assert doc["verdict"] == "RUNNING 1/2 (ETA unknown; 0 running; 1 queued)"


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_cells_show_their_job_and_scheduler_state(tmp_path):
    """A detached Slurm sweep: while it runs, each cell names its Slurm job and what squeue/sacct
    say about it; `watch` then supervises it to the end."""
    store = tmp_path / "store"
    launch = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0",
                             f"store.root={store}", "hydra/launcher=sds_slurm", "hydra.launcher.wait=false",
                             "trainer.total_steps=8192", "trainer.num_envs=1", "trainer.rollout_steps=512",
                             "eval.episodes=1"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert launch.returncode == 0, launch.stderr[-2000:]
    t0 = time.time()
    seen = None
    while time.time() - t0 < 180:
        doc = status.collect(store, sample_cpu=False)
        (cell,) = doc["cells"]
        if cell["phase"] == "running" and cell["job_state"]:
            seen = cell
            break
        if cell["phase"] == "done":
            break
        time.sleep(1)
    assert seen is not None, f"never saw the cell running under Slurm: {cell}"
    assert re.fullmatch(r"\d+(_\d+)?", seen["job_id"]) and seen["job_state"].startswith("RUNNING")
    assert doc["verdict"].startswith("RUNNING 0/1")
    assert cli_main(["watch", str(store), "--poll", "1"]) == 0
    assert status.collect(store)["verdict"] == "DONE 1/1"


@pytest.mark.slurm
@pytest.mark.slow
def test_queued_slurm_cells_carry_the_schedulers_reason_and_since_when(tmp_path):
    """Two cells submitted with a begin time an hour away stay PENDING with squeue's reason
    BeginTime: status (JSON and the verdict line) names the reason for each and since when it
    waited; then the jobs are cancelled."""
    store = tmp_path / "store"
    launch = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0,1",
                             f"store.root={store}", "hydra/launcher=sds_slurm", "hydra.launcher.wait=false",
                             "+hydra.launcher.additional_parameters.begin=now+3600", "trainer.total_steps=1024",
                             "trainer.num_envs=1", "eval.episodes=1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-2000:]
    jobs = [j for d in Store(store).read_sweep_manifests() for js in d["jobs"].values() for j in js]
    try:
        deadline, doc = time.time() + 60, {}
        while time.time() < deadline:
            doc = status.collect(store, sample_cpu=False)
            if all(c.get("queue_reason") for c in doc["cells"]):
                break
            time.sleep(1)
        assert [c["queue_reason"] for c in doc["cells"]] == ["BeginTime", "BeginTime"], doc["cells"]
        assert all(c["queued_since"] and c["queued_since"] <= time.time() for c in doc["cells"])
        assert all(c["detail"].startswith("queued for ") and "(BeginTime" in c["detail"] for c in doc["cells"])
        assert doc["verdict"].startswith("RUNNING 0/2") and "2 queued: 2 BeginTime" in doc["verdict"], doc["verdict"]
    finally:
        subprocess.run(["scancel", *jobs], check=False, capture_output=True, timeout=60)


def test_a_hole_with_another_identity_on_disk_says_so(store_copy):
    """The sweep asks for v2_baseline seed 0 under a new hash (its config changed): the finished
    run of the old hash is shown as evidence, and the new identity counts as never run."""
    store = Store(store_copy)
    (rd,) = list(store.iter_runs())
    store.write_sweep_manifest("sweep-new-variant", {"created_at": time.time(), "launcher": {}, "cells": [
        {"config": "v2_baseline", "seed": 0, "hash": "feedf00d", "overrides": []}]})
    doc = status.collect(store_copy)
    (cell,) = doc["cells"]
    assert cell["hash"] == "feedf00d" and cell["run_dir"] is None and cell["phase"] == "pending"
    assert cell["other_identities"] == [{"hash": rd.path.name, "phase": "done", "run_dir": str(rd.path)}]
    assert doc["verdict"] == "INCOMPLETE: 1 cell never run: v2_baseline seed 0"


def test_a_slurm_claim_of_an_app_cell_without_a_seed_makes_status_ask_slurm(tmp_path, monkeypatch):
    """An app without a seed keeps its cells at runs/<label>/<hash8>/ (no seed_<n> level): a Slurm
    claim there makes status read job states from Slurm, as a claim of a seeded cell does."""
    from safedreamer_sweep.core.files import atomic_write_json

    asked = []

    def fake_lookup():
        asked.append(True)
        return lambda job_id: None

    monkeypatch.setattr("safedreamer_sweep.sweep.backends.slurm.slurm_state_lookup", fake_lookup)
    store = Store(tmp_path / "store")
    rd = store.run_dir("my_app", None, "abcd1234")
    rd.ensure_spec({"config": "my_app", "seed": None, "hash": "abcd1234", "run_config": {}})
    atomic_write_json(rd.claim_path, {"sweep_id": "s1", "backend": "slurm", "released_at": time.time()})
    status.collect(store.root, sample_cpu=False)
    assert asked, "status did not see the Slurm claim of a cell without a seed"


def test_two_seedless_cells_of_one_config_each_show_their_own_cost(tmp_path):
    """Two cells of an app without a seed, one label, two hashes: status shows each its own cost (it
    looked them up as `<label>/seed_None`, which matched neither once the cost kept them apart)."""
    store = Store(tmp_path / "store")
    for hash8, hours in (("aaaaaaaa", 1.0), ("bbbbbbbb", 2.0)):
        rd = store.run_dir("my_app", None, hash8)
        rd.ensure_spec({"config": "my_app", "seed": None, "hash": hash8, "run_config": {}})
        attempt = {"n": 1, "outcome": "done", "submitted_at": 0.0, "started_at": 0.0, "ended_at": hours * 3600,
                   "resources": {"gpus": 1}}
        rd.update_state(lambda s, a=attempt: s.update({"phase": "done", "attempts": [a]}))
    doc = status.collect(store.root, sample_cpu=False)
    assert sorted((c["hash"], c["cost"] and c["cost"]["useful_h"]) for c in doc["cells"]) == [
        ("aaaaaaaa", pytest.approx(1.0)), ("bbbbbbbb", pytest.approx(2.0))]
