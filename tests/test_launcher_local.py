"""The launcher with the local executor, running the REAL cell task (built-in trainer, tiny budgets):
verdicts and re-runs, the concurrency limit, per-slot GPU/env assignment, stall and kill recovery,
errors and the exit status, on_complete hooks, detach + watch, and a study (hydra/sweeper=sds_optuna)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, sds

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.slots import SlotPool, visible_gpus

# Hydra's own sweep dir goes inside the test's store, not into the repository.
LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5", "hydra.sweep.dir=${store.root}/multirun"]


# ----------------------------------------------------------------------------- slots (unit)


def test_slots_pin_each_cell_to_one_gpu_with_its_memory_fraction():
    pool = SlotPool(max_parallel=8, gpus=["0", "1"], runs_per_gpu=2)
    assert pool.capacity == 4
    slots = [pool.acquire(f"c{i}") for i in range(5)]
    assert slots == [0, 1, 2, 3, None]  # GPUs x runs_per_gpu, then full
    envs = [pool.env(s, {"MUJOCO_GL": "egl"}) for s in slots[:4]]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.500" and e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
               and e["MUJOCO_GL"] == "egl" for e in envs)
    pool.release(1)
    assert pool.acquire("c5") == 1 and pool.gpu_of(1) == "1"


def test_slots_without_gpus_follow_max_parallel_and_set_no_gpu_env():
    pool = SlotPool(max_parallel=2)
    assert [pool.acquire("a"), pool.acquire("b"), pool.acquire("c")] == [0, 1, None]
    assert pool.env(0, {"X": 1}) == {"X": "1"}
    assert SlotPool(max_parallel=1, gpus=["0", "1"], runs_per_gpu=3).capacity == 1


def test_visible_gpus_from_config_env():
    assert visible_gpus(2) == ["0", "1"] and visible_gpus(["3", 5]) == ["3", "5"]
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = "2,3"
        assert visible_gpus() == ["2", "3"]
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        assert visible_gpus() == []
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


# ----------------------------------------------------------------------------- helpers


def states(store: Path) -> dict[str, dict]:
    return {f"{rd.path.parts[-3]}/{rd.path.parts[-2]}": rd.read_state() for rd in Store(store).iter_runs()}


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def popen_sds(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "safedreamer_sweep", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def running_cells(store: Path) -> list[RunDir]:
    out = []
    for rd in Store(store).iter_runs():
        a = (rd.read_state().get("attempts") or [{}])[-1]
        if a.get("outcome") == "running":
            out.append(rd)
    return out


# ----------------------------------------------------------------------------- integration


@pytest.mark.slow
def test_concurrency_limit_slot_env_logs_and_a_rerun_that_submits_nothing(tmp_path):
    store = tmp_path / "store"
    args = ["-m", "config=v2_baseline", "seed=0,1,2", f"store.root={store}", *TINY, *LOCAL,
            "hydra.launcher.max_parallel=2", "hydra.launcher.gpus=2", "+hydra.launcher.env.SDS_TEST_TAG=slot"]
    p = popen_sds(*args)
    seen: dict[str, dict] = {}
    while p.poll() is None:  # read each running cell's real process environment
        for rd in running_cells(store):
            pid = (rd.read_state()["attempts"][-1]).get("pid")
            env = proc_env(pid) if pid else {}
            if env.get("SDS_TEST_TAG"):
                seen.setdefault(rd.path.parts[-2], env)
        time.sleep(0.3)
    out = p.stdout.read()
    assert p.returncode == 0, out[-3000:]
    assert "plan: 3 cells, 3 to submit | new 3" in out
    st = states(store)
    assert all(s["phase"] == "done" for s in st.values()) and len(st) == 3
    # never more than max_parallel attempts at once
    spans = sorted((a["started_at"], a["ended_at"]) for s in st.values() for a in s["attempts"])
    for t, _ in spans:
        assert sum(1 for a, b in spans if a <= t < b) <= 2
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.5  # the third waited for a free slot
    # each running cell had its own GPU slot and the sweep's env in its process environment
    assert len(seen) >= 2, seen.keys()
    gpus = {e["CUDA_VISIBLE_DEVICES"] for e in seen.values()}
    assert gpus <= {"0", "1"} and len(gpus) == 2
    assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "1.000" and e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
               for e in seen.values())
    for s in st.values():
        a = s["attempts"][0]
        assert a["resources"]["gpus"] == 1 and a["resources"]["cpus"] == 1 and a["job_id"]
    # each attempt's output is in the run dir
    for rd in Store(store).iter_runs():
        out_log, err_log = rd.attempt_log_paths(1)
        assert "[train]" in out_log.read_text() and err_log.exists()
    # a second invocation plans zero submissions, exit 0 (how fast: bench/plan_scale.py)
    again = sds(*args, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "plan: 3 cells, 0 to submit | done 3" in again.stdout and "submitted" not in again.stdout
    assert states(store) == st  # nothing was touched


@pytest.mark.slow
def test_stalled_and_killed_cells_are_resumed_to_done(tmp_path):
    store = tmp_path / "store"
    budget = [o for o in TINY if not o.startswith("trainer.total_steps")] + ["trainer.total_steps=4096"]
    p = popen_sds("-m", "config=v2_baseline", "seed=0,1", f"store.root={store}", *budget, *LOCAL,
                  "hydra.launcher.max_parallel=2", "hydra.launcher.stall_after=30")
    acted: dict[str, str] = {}
    deadline = time.time() + 240
    while len(acted) < 2 and time.time() < deadline and p.poll() is None:
        for rd in running_cells(store):
            seed = rd.path.parts[-2]
            prog = rd.read_progress() or {}
            if seed in acted or prog.get("env_step", 0) < 1024 or not rd.checkpoints():
                continue
            pid = rd.read_state()["attempts"][-1]["pid"]
            # seed 0: frozen (SIGSTOP) -> stalled; seed 1: SIGKILL -> lost
            os.kill(pid, signal.SIGSTOP if seed == "seed_0" else signal.SIGKILL)
            acted[seed] = str(pid)
        time.sleep(0.2)
    out = p.communicate(timeout=400)[0]
    assert acted.keys() == {"seed_0", "seed_1"}, out[-3000:]
    assert p.returncode == 0, out[-3000:]
    st = states(store)
    stalled, killed = st["v2_baseline/seed_0"], st["v2_baseline/seed_1"]
    assert stalled["phase"] == killed["phase"] == "done"
    s1 = stalled["attempts"][0]
    assert s1["cause"] == "stalled" and "did not move" in s1["evidence"] and s1["outcome"] == "interrupted"
    k1 = killed["attempts"][0]
    assert k1["cause"] == "lost" and "no end marker" in k1["evidence"]
    assert [a["outcome"] for a in stalled["attempts"]][-1] == "done" and len(killed["attempts"]) == 2
    # resumed from a checkpoint, not from scratch
    for seed in ("seed_0", "seed_1"):
        rd = next(r for r in Store(store).iter_runs() if r.path.parts[-2] == seed)
        assert "resuming" in rd.attempt_log_paths(2)[0].read_text()
    # the frozen process was killed, not left behind
    import psutil
    assert not psutil.pid_exists(int(acted["seed_0"])) or psutil.Process(int(acted["seed_0"])).status() == "zombie"
    print(json.dumps({"stalled": s1["evidence"], "lost": k1["evidence"]}))


@pytest.mark.slow
def test_error_stops_with_traceback_exit_1_and_hooks_run_once(tmp_path):
    store = tmp_path / "store"
    marker = tmp_path / "hook.txt"
    hook = f"sweep.on_complete=['echo ran >> {marker}']"
    dry = sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *TINY, *LOCAL, hook,
              "trainer.platform=tpu", "hydra.launcher.dry_run=true", timeout=120)
    assert dry.returncode == 0 and "dry run: nothing submitted" in dry.stdout and not marker.exists()
    assert not (store / "runs").exists()
    p = sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *TINY, *LOCAL, hook, "trainer.platform=tpu",
            "sweep.strict_confounds=false", timeout=300)
    assert p.returncode == 1
    assert "0/1 cells done" in p.stdout and "cause error" in p.stdout and "traceback tail" in p.stdout
    assert "v2_baseline seed 0" in p.stderr and "is not done (error" in p.stderr and "Traceback" not in p.stderr
    (st,) = states(store).values()
    assert st["phase"] == "failed" and len(st["attempts"]) == 1  # an exception is not retried
    assert st["attempts"][0]["cause"] == "error" and "backend 'tpu'" in st["attempts"][0]["traceback_tail"]
    assert marker.read_text() == "ran\n"  # every cell terminal: the hook ran, once


@pytest.mark.slow
def test_detach_then_watch_reattaches_until_done(tmp_path):
    from safedreamer_sweep.sweep.watch import watch

    store = tmp_path / "store"
    p = sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *TINY, *LOCAL, "hydra.launcher.wait=false",
            timeout=120)
    assert p.returncode == 0 and "detached: 1 job(s) submitted" in p.stdout, p.stdout + p.stderr[-2000:]
    (manifest,) = Store(store).read_sweep_manifests()
    assert manifest["detached"] and next(iter(manifest["jobs"].values()))
    ticks = []
    assert watch(store, on_tick=lambda cells: ticks.append(len(cells)), poll_s=0.5) == 0
    assert ticks and all(s["phase"] == "done" for s in states(store).values())


@pytest.mark.slow
def test_a_study_on_the_builtin_trainer_judges_points_on_seeds_under_the_cost_limit(tmp_path):
    """hydra/sweeper=sds_optuna on the built-in trainer: each trial a point on 2 seeds (4 cells), its
    value the seeds' mean ood.return_mean, id.cost_mean - agent.cost_limit told as its constraint, and
    optimization_results.yaml naming the best feasible trial."""
    import optuna
    import yaml

    store = tmp_path / "store"
    p = sds("-m", "hydra/sweeper=sds_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.seeds=[0,1]",
            "hydra.sweeper.objective=ood.return_mean", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
            "config=v2_baseline", "~hydra.sweeper.params.seed", "agent.lr=choice(0.0003,0.001)", f"store.root={store}",
            *TINY, *LOCAL, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    runs = list(Store(store).iter_runs())
    assert len(runs) in (2, 4) and all(r.read_state()["phase"] == "done" for r in runs)  # 2: one point asked twice
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(store / "studies" / "safedreamer_sweep" / "journal.log")))
    trials = optuna.load_study(study_name="safedreamer_sweep", storage=storage).get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    by_dir = {str(r.path.relative_to(store)): r for r in runs}
    for t in trials:
        cells = [by_dir[c["run_dir"]] for c in t.user_attrs["sds_cells"]]
        oods = [float(r.read_eval("ood")["summary"]["return_mean"]) for r in cells]
        costs = [float(r.read_eval("id")["summary"]["cost_mean"]) for r in cells]
        assert t.value == pytest.approx(sum(oods) / 2)
        assert t.constraints["cost"] == pytest.approx(sum(costs) / 2 - 25.0)
    best = yaml.safe_load((store / "multirun" / "optimization_results.yaml").read_text())
    feasible = [t for t in trials if t.constraints["cost"] <= 0]
    if feasible:
        assert best["best_value"] == pytest.approx(max(t.value for t in feasible))
    else:
        assert "best_value" not in best


@pytest.mark.slow
def test_overlapping_sweeps_never_run_a_cell_twice(tmp_path):
    store = tmp_path / "store"
    args = ["-m", "config=v2_baseline", "seed=0,1", f"store.root={store}", *TINY, *LOCAL, "hydra.launcher.max_parallel=1"]
    first = popen_sds(*args)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((store / "runs").glob("*/seed_*/*/claim.json"))) < 2:
        time.sleep(0.2)
    second = sds(*args, timeout=400)  # starts while the first holds both cells (one queued behind the other)
    out = first.communicate(timeout=400)[0]
    assert first.returncode == 0, out[-3000:]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "running-elsewhere 2" in second.stdout and "submitted" not in second.stdout
    st = states(store)
    assert all(s["phase"] == "done" and len(s["attempts"]) == 1 for s in st.values()), st


@pytest.mark.slow
def test_ctrl_c_leaves_cells_running_and_watch_finishes_the_rest(tmp_path):
    from safedreamer_sweep.sweep.watch import watch

    store = tmp_path / "store"
    budget = [o for o in TINY if not o.startswith(("trainer.total_steps", "trainer.eval_every"))] + [
        "trainer.total_steps=16384", "trainer.eval_every_steps=16384"]
    # SIGINT to the launcher's whole process group, as a terminal's Ctrl-C sends it (a background
    # job's SIGINT is ignored unless reset): the cells' controllers are in sessions of their own
    # stdout to a file, not a pipe: the cell that keeps running inherits it, and reading a pipe to EOF
    # would wait for the cell to end, not for the launcher
    log = tmp_path / "sweep.log"
    p = subprocess.Popen([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0,1",
                          f"store.root={store}", *budget, *LOCAL, "hydra.launcher.max_parallel=1"], cwd=ROOT, text=True,
                         stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.time() + 120
    while time.time() < deadline and not running_cells(store):
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    p.wait(timeout=60)
    out = log.read_text()
    assert p.returncode == 130 and "interrupted: 1 cell(s) keep running, 1 not submitted" in out, out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]  # the line says it all
    (manifest,) = Store(store).read_sweep_manifests()
    assert manifest["detached"] and len(manifest["jobs"]) == 1
    assert watch(store, poll_s=0.5) == 0  # waits for the running cell, submits the other
    st = states(store)
    assert len(st) == 2 and all(s["phase"] == "done" and len(s["attempts"]) == 1 for s in st.values())


@pytest.mark.slow
def test_local_memory_limit_is_enforced_classified_oom_and_retried_with_more(tmp_path):
    # A JAX + MuJoCo cell holds several hundred MB; mem_gb=0.15 is exceeded for real within seconds.
    store = tmp_path / "store"
    p = sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *TINY, *LOCAL,
            "hydra.launcher.mem_gb=0.15", "hydra.launcher.mem_factor=10", "hydra.launcher.max_attempts=3", timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (st,) = states(store).values()
    first, last = st["attempts"][0], st["attempts"][-1]
    assert first["cause"] == "oom" and "exceeded memory limit" in first["evidence"] and "mem_gb=0.15" in first["evidence"]
    assert last["outcome"] == "done" and last["resources"]["mem_gb"] == 1.5
    assert "memory 0.15 GB -> 1.5 GB" in p.stdout
