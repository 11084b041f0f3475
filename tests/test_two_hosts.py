"""Two supervisors on one store under different host names (each in its own UTS namespace, `unshare
--uts`, with its own hostname) and clocks an hour apart (tests/clock_skew/sitecustomize.py): no cell
runs twice, and no write from a holder that lost its lease lands.

1. Host A runs three cells one at a time (max_parallel=1), so two of them wait in A's queue
   longer than stall_after; host B, launched on the same cells after that, must not take them over
   (A renews their leases every poll): every cell ends done with exactly one attempt, by A.
2. Host A's whole sweep is frozen (SIGSTOP) mid-training until its lease expires; host B takes the
   cell over (generation 2) and finishes it; then A is thawed: its cell's next write is refused
   (LeaseLost), so every checkpoint, the progress, the evaluations and the final state are B's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from safedreamer_sweep.core.store import Store

SKEW_DIR = Path(__file__).parent / "clock_skew"
LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5"]


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname sds-probe && hostname"], capture_output=True,
                       text=True, check=False)
    return p.returncode == 0 and p.stdout.strip() == "sds-probe"


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not unshare_works(), reason="needs `unshare --uts` (root or user namespaces)")]


def on_host(name: str, skew_s: float, *args: str, log: Path) -> subprocess.Popen:
    """`python -m safedreamer_sweep ARGS` as host `name` with its wall clock `skew_s` off."""
    cmd = " ".join(["hostname", name, "&&", "exec", sys.executable, "-m", "safedreamer_sweep",
                    *(f"'{a}'" for a in args)])
    env = {**os.environ, "PYTHONPATH": f"{SKEW_DIR}:{os.environ.get('PYTHONPATH', '')}",
           "SDS_TEST_CLOCK_SKEW_S": str(skew_s)}
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", cmd], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def freeze(pid: int) -> list[psutil.Process]:
    """SIGSTOP a process and every descendant (the cell runs in its own process group)."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGSTOP)
    return procs


def states(store: Path) -> dict[str, tuple[dict, dict]]:
    return {f"{rd.path.parent.name}": (rd.read_state(), json.loads(rd.claim_path.read_text()))
            for rd in Store(store).iter_runs()}


# The queued-cell test needs a queue wait longer than stall_after without false stalls on a loaded
# box: external cells (tests/fake_safedreamer.py: numpy only, no JAX compile) heartbeat within seconds.
FAKE = ["task=external", "trainer.total_steps=6144", "task.vars.step_sleep=0.005", "eval.episodes=1"]


def test_cells_queued_on_one_host_are_not_taken_over_by_another(tmp_path):
    store = tmp_path / "store"
    common = ["-m", "config=v2_baseline", "seed=0,1,2", f"store.root={store}", *FAKE, *LOCAL,
              "sweep.strict_confounds=false", "hydra.launcher.max_parallel=1", "hydra.launcher.stall_after=45",
              "hydra.launcher.lease_s=10"]
    a = on_host("host-a", 0, *common, log=tmp_path / "a.log")
    b = None
    try:
        deadline = time.time() + 120
        while len(list(store.glob("runs/*/seed_*/*/claim.json"))) < 3:  # A has claimed all three
            assert time.time() < deadline and a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(50)  # > stall_after since A claimed them
        waiting = [rd for rd in Store(store).iter_runs() if not rd.read_state().get("attempts")]
        assert waiting, "no cell is still queued on A: make the cells longer"
        b = on_host("host-b", 3600, *common, log=tmp_path / "b.log")
        assert a.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-3000:]
        assert b.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    got = states(store)
    assert len(got) == 3
    for seed, (state, claim) in got.items():
        assert state["phase"] == "done", (seed, state)
        assert [at["host"] for at in state["attempts"]] == ["host-a"], (seed, state["attempts"])  # ran once, on A
        assert claim["host"] == "host-a" and claim["generation"] == 1 and "took_over_from" not in claim
    b_log = (tmp_path / "b.log").read_text()
    assert b_log.count("not claimed") + b_log.count("running-elsewhere") >= 3 and "lease" in b_log, b_log[-3000:]


def test_a_frozen_holder_loses_its_lease_and_none_of_its_later_writes_land(tmp_path):
    store = tmp_path / "store"
    slow = ["trainer.total_steps=8192", "trainer.num_envs=1", "trainer.rollout_steps=512",
            "trainer.checkpoint_every_steps=512", "trainer.log_every_steps=512", "trainer.eval_every_steps=8192",
            "eval.episodes=1"]
    common = ["-m", "config=v2_baseline", "seed=0", f"store.root={store}", *slow, *LOCAL,
              "hydra.launcher.stall_after=900", "hydra.launcher.lease_s=4", "hydra.launcher.max_attempts=1"]
    a = on_host("host-a", 0, *common, log=tmp_path / "a.log")
    deadline = time.time() + 300
    rd = None
    while rd is None or not rd.checkpoints():
        assert time.time() < deadline and a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        rd = next(iter(Store(store).iter_runs()), None)
        time.sleep(0.2)
    frozen = freeze(a.pid)  # the whole of host A freezes: launcher, submitit, the cell
    try:
        frozen_at = [s for s, _ in rd.checkpoints()]
        time.sleep(6)  # > lease_s: nobody renewed
        b = on_host("host-b", -3600, *common, log=tmp_path / "b.log")
        assert b.wait(timeout=900) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
    try:
        a.wait(timeout=300)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    a_log = (tmp_path / "a.log").read_text()
    state, claim = rd.read_state(), json.loads(rd.claim_path.read_text())
    assert claim["host"] == "host-b" and claim["generation"] == 2 and claim["took_over_from"], claim
    assert state["phase"] == "done" and state["attempts"][-1]["host"] == "host-b", state
    assert "LeaseLost" in a_log or "lease generation 1 is no longer held" in a_log or \
        "taken over" in a_log, a_log[-4000:]
    # every write after the takeover is B's: progress, evaluations, newest checkpoints
    assert rd.read_progress()["host"] == "host-b"
    assert all(rd.read_eval(k) for k in ("id", "ood"))
    newest = max(s for s, _ in rd.checkpoints())
    assert newest == 8192 and max(frozen_at) < 8192
    assert [a_["outcome"] for a_ in state["attempts"] if a_["host"] == "host-b"] == ["done"]


def test_one_study_from_two_hosts_at_once_ends_with_exactly_its_total(tmp_path):
    """hydra/sweeper=sds_optuna launched on the same study from two hosts at once (tests/search_app):
    count-then-ask under the study's lock and the cells' claims leave exactly n_trials trials, every
    cell run once, by one host."""
    import optuna

    store = tmp_path / "store"
    app = ROOT / "tests" / "search_app" / "app.py"
    args = ["-m", f"hydra.sweep.dir={store}/multirun/${{now:%H-%M-%S-%f}}", "hydra/launcher=sds_local",
            "hydra.launcher.poll_s=0.3", "hydra.launcher.progress=none", "hydra.launcher.max_parallel=1",
            "hydra.launcher.lease_s=30", "hydra/sweeper=sds_optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.seeds=[0,1]",
            "hydra.sweeper.study_name=toy", "hydra.sweeper.objective=ret", "hydra.sweeper.direction=maximize",
            "x=interval(0.05,0.95)", "hydra.sweeper.sampler.seed=0"]
    procs = []
    for name in ("host-a", "host-b"):
        cmd = " ".join(["hostname", name, "&&", "exec", sys.executable, str(app), *(f"'{a}'" for a in args)])
        procs.append(subprocess.Popen(["unshare", "--uts", "sh", "-c", cmd], cwd=tmp_path, text=True,
                                      env={**os.environ, "SDS_STORE": str(store), "SDS_HEARTBEAT_EVERY_S": "0"},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(store / "studies" / "toy" / "journal.log")))
    trials = optuna.load_study(study_name="toy", storage=storage).get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    runs = list(Store(store).iter_runs())
    assert len(runs) == 12 and all(len(rd.read_state()["attempts"]) == 1 for rd in runs)
    hosts = {rd.read_state()["attempts"][0]["host"] for rd in runs}
    assert hosts <= {"host-a", "host-b"}, hosts
