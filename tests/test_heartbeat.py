"""The heartbeat API any app calls (safedreamer_sweep.heartbeat): cheap, atomic, rate-limited, and
what status reads from it (ETA, stall) versus an app that never calls it (liveness only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

import safedreamer_sweep
from safedreamer_sweep.core import cell
from safedreamer_sweep.core.files import read_json
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.sweep.observe import observe_run


@pytest.fixture
def in_cell(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "runs" / "app" / "0badc0de")
    rd.path.mkdir(parents=True)
    monkeypatch.setenv(cell.RUN_DIR_ENV, str(rd.path))
    monkeypatch.setattr(cell._Beat, "path", None)
    return rd


def test_outside_a_cell_it_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv(cell.RUN_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert safedreamer_sweep.heartbeat(10, total=100, loss=1.0) is False
    assert safedreamer_sweep.run_dir() is None and list(tmp_path.iterdir()) == []


def test_rate_limited_but_the_final_step_always_lands(in_cell, monkeypatch):
    monkeypatch.setenv(cell.HEARTBEAT_EVERY_ENV, "60")
    assert safedreamer_sweep.heartbeat(1, total=10, loss=0.5) is True
    assert safedreamer_sweep.heartbeat(2, total=10) is False  # within 60 s of the last write
    doc = read_json(in_cell.progress_path)
    assert (doc["env_step"], doc["total_steps"], doc["metrics"], doc["source"]) == (1, 10, {"loss": 0.5}, "heartbeat")
    assert safedreamer_sweep.heartbeat(10, total=10, loss=0.1) is True  # the final step
    assert read_json(in_cell.progress_path)["env_step"] == 10


def test_steps_per_s_and_eta_reach_status(in_cell, monkeypatch):
    monkeypatch.setenv(cell.HEARTBEAT_EVERY_ENV, "0")
    in_cell.begin_attempt()  # this process is the cell: alive
    in_cell.ensure_spec({"config": "app", "seed": None, "hash": "0badc0de", "done_when": "return", "run_config": {}})
    safedreamer_sweep.heartbeat(100, total=1000)
    time.sleep(0.2)
    safedreamer_sweep.heartbeat(300)  # total unknown from here on
    doc = read_json(in_cell.progress_path)
    assert 0 < doc["steps_per_s"] <= 200 / 0.2 and doc["total_steps"] is None
    safedreamer_sweep.heartbeat(400, total=1000)
    v = observe_run(in_cell, stall_after=600)
    assert v.phase == "running" and v.env_step == 400 and v.eta_s is not None and v.eta_s > 0
    # the step stops moving: stalled once it is older than stall_after
    time.sleep(0.3)
    assert observe_run(in_cell, stall_after=0.2).phase == "stalled"


def test_an_app_that_never_beats_is_supervised_by_liveness_only(in_cell):
    in_cell.ensure_spec({"config": "app", "seed": None, "hash": "0badc0de", "done_when": "return", "run_config": {}})
    in_cell.begin_attempt()
    time.sleep(0.3)
    v = observe_run(in_cell, stall_after=0.2)
    assert v.phase == "running" and v.progress_age_s is None and "liveness only" in (v.detail or "")


def test_progress_is_never_torn_while_a_cell_beats(in_cell):
    code = ("import safedreamer_sweep as s\n"
            "for i in range(100): s.heartbeat(i, total=100, loss=i * 0.5, note='x' * 200)\n")
    env = {**os.environ, cell.HEARTBEAT_EVERY_ENV: "0"}
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    reads = 0
    while p.poll() is None:
        text = in_cell.progress_path.read_text() if in_cell.progress_path.exists() else ""
        if text:
            json.loads(text)  # a torn file would raise here
            reads += 1
    assert p.wait() == 0 and reads > 2
    assert read_json(in_cell.progress_path)["env_step"] == 99


def test_importing_it_loads_no_heavy_module():
    code = ("import sys; from safedreamer_sweep import heartbeat, run_dir; "
            "print([m for m in sys.modules if m.split('.')[0] in ('omegaconf', 'hydra', 'filelock', 'numpy') "
            "or m in ('safedreamer_sweep.core.store', 'safedreamer_sweep.core.run_dir', 'safedreamer_sweep.core.locks')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_resolver_names_the_run_dir_inside_a_cell_and_the_cwd_outside(in_cell, monkeypatch):
    cell.register_resolver()
    cfg = OmegaConf.create({"ckpt": "${sds_run_dir:}/ckpt"})
    assert cfg.ckpt == f"{in_cell.path}/ckpt"
    monkeypatch.delenv(cell.RUN_DIR_ENV)
    assert cfg.ckpt == "./ckpt"  # never cached: the same config resolves again
