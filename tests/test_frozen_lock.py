"""A cell frozen while it holds its run directory's data lock (SIGSTOP inside a store write).

Before issue 23 the owning sweep died of it: lease renewal took the same lock, waited 60 s and
raised filelock.Timeout, leaving the frozen process behind with no supervisor; a second sweep that
watched the cell sat forever. Now renewal takes the lease lock (which no cell takes), every
supervisor wait on the data lock is bounded and a timeout is evidence, and a watching sweep takes
over from a dead owner. Both scenarios are driven for real: the cell's pid is caught holding the
flock in /proc/locks and stopped there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from safedreamer_sweep.core.locks import lock_holder
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store

LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5", "hydra.sweep.dir=${store.root}/multirun"]
# Long enough to be caught mid-run, a checkpoint (and so a locked write) every 512 env steps.
BUDGET = [o for o in TINY if not o.startswith("trainer.total_steps")] + ["trainer.total_steps=6144"]


def popen_sds(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "safedreamer_sweep", *args], cwd=ROOT, text=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def running_pid(rd: RunDir) -> int | None:
    a = (rd.read_state().get("attempts") or [{}])[-1] if rd.state_path.exists() else {}
    return int(a["pid"]) if a.get("outcome") == "running" and a.get("pid") else None


def freeze_inside_lock(store: Path, deadline: float) -> tuple[RunDir, int]:
    """Wait for a running cell with a checkpoint, then SIGSTOP its training process at an instant it
    holds its run dir's data lock (/proc/locks says so before and after the stop)."""
    while time.time() < deadline:
        for rd in Store(store).iter_runs():
            pid = running_pid(rd)
            if not pid or not rd.checkpoints():
                continue
            lock = rd.path / ".lock"
            end = time.time() + 60
            while time.time() < end:
                held = lock_holder(lock) if lock.exists() else None
                if held and held["pid"] == pid:
                    os.kill(pid, signal.SIGSTOP)
                    after = lock_holder(lock)
                    if after and after["pid"] == pid and after["state"] == "T":
                        return rd, pid
                    os.kill(pid, signal.SIGCONT)  # released it between the two looks: try again
                time.sleep(0.0005)
        time.sleep(0.2)
    raise AssertionError("no cell was caught holding its data lock")


def stall_attempt(rd: RunDir) -> dict:
    attempts = rd.read_state()["attempts"]
    return next(a for a in attempts if a.get("cause") == "stalled")


def finish(p: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"sweep did not end within {timeout:.0f}s:\n{log.read_text()[-4000:]}") from None
    return log.read_text()


@pytest.mark.slow
def test_a_cell_frozen_inside_its_lock_is_stalled_killed_and_resumed(tmp_path):
    store = tmp_path / "store"
    log = tmp_path / "sweep.log"
    p = popen_sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *BUDGET, *LOCAL,
                  "hydra.launcher.stall_after=20", "hydra.launcher.progress=plain", log=log)
    try:
        rd, pid = freeze_inside_lock(store, time.time() + 240)
        out = finish(p, log, 400)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "Timeout" not in out, out[-4000:]
    assert rd.read_state()["phase"] == "done"
    a = stall_attempt(rd)
    assert a["pid"] == pid and a["outcome"] == "interrupted" and "did not move" in a["evidence"], a
    assert rd.read_state()["attempts"][-1]["outcome"] == "done"
    assert "resuming" in rd.attempt_log_paths(int(a["n"]) + 1)[0].read_text()
    import psutil
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"  # killed, not left behind
    print({"stalled": a["evidence"], "log": [ln for ln in out.splitlines() if "stall" in ln][:3]})


@pytest.mark.slow
def test_a_watching_sweep_takes_over_from_a_dead_owner_and_kills_its_frozen_orphan(tmp_path):
    """Sweep A runs two cells; sweep B, started on the same matrix, watches them. One of A's cells is
    frozen inside its lock and A is SIGKILLed: B must call the orphan stalled, kill it, take the cell
    over (a new lease generation) and finish the sweep; A's other cell, still alive, finishes."""
    store = tmp_path / "store"
    args = ["-m", "config=v2_baseline", "seed=0,1", f"store.root={store}", *BUDGET, *LOCAL,
            "hydra.launcher.max_parallel=2", "hydra.launcher.stall_after=30", "hydra.launcher.progress=plain"]
    a = popen_sds(*args, log=tmp_path / "a.log")
    b = None
    try:
        rd, pid = freeze_inside_lock(store, time.time() + 240)
        b = popen_sds(*args, log=tmp_path / "b.log")
        deadline = time.time() + 120  # B has planned (both cells are A's) well before A would see the stall
        while "plan: 2 cells" not in (tmp_path / "b.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        a.kill()  # the owner dies; its cells are orphans now
        a.wait()
        out = finish(b, tmp_path / "b.log", 500)
    finally:
        for q in (a, b):
            if q is not None and q.poll() is None:
                q.kill()
    assert b.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert "its sweep is gone" in out and "took it over" in out, out[-4000:]
    for r in Store(store).iter_runs():
        assert r.read_state()["phase"] == "done", r.path
    st = stall_attempt(rd)
    assert st["pid"] == pid and "did not move" in st["evidence"], st
    import json
    claim = json.loads(rd.claim_path.read_text())
    assert claim.get("took_over_from") and claim["generation"] >= 2, claim
    print({"stalled": st["evidence"], "took_over_because": claim.get("took_over_because")})
