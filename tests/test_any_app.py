"""Any Hydra app under the sds launchers: examples/any_app (not RL, its own conf) is swept, killed
mid-cell, re-invoked (it resumes from its checkpoint in the cell's stable run directory), and
re-invoked again (plans nothing, hands back the stored return values); a study (sds_optuna) over a
learning rate with no extra flags; the keys a sweep varies define cells, an unswept change is refused."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from omegaconf import open_dict

from safedreamer_sweep.core.files import read_json
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.plan import plan_cells

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "any_app"
LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.3", "hydra.launcher.progress=none"]


def load_app():
    spec = importlib.util.spec_from_file_location("any_app", APP_DIR / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def expected_loss(lr: float, seed: int, steps: int) -> float:
    """The app's final loss computed here, uninterrupted: a resumed cell must return exactly this."""
    app = load_app()
    points, w, b, loss = app.data(seed), 0.0, 0.0, float("nan")
    for _ in range(steps):
        loss, gw, gb = app.loss_and_grad(w, b, points)
        w, b = w - lr * gw, b - lr * gb
    return loss


def command(store: Path, *args: str) -> list[str]:
    return [sys.executable, str(APP_DIR / "app.py"), "-m", f"hydra.sweep.dir={store}/multirun/${{now:%H-%M-%S-%f}}",
            *LOCAL, *args]


def run(store: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(command(store, *args), cwd=store.parent, env={**os.environ, "SDS_STORE": str(store)},
                          capture_output=True, text=True, timeout=timeout, check=False)


def cells(store: Path) -> dict[str, object]:
    return {(rd.read_spec() or {})["config"]: rd for rd in Store(store).iter_runs()}


def test_killed_cell_resumes_and_a_finished_sweep_plans_nothing(tmp_path):
    store = tmp_path / "store"
    sweep = ["lr=0.1,0.2", "steps=60", "hydra.launcher.max_parallel=1"]
    p = subprocess.Popen(command(store, *sweep, "step_sleep=0.1"), cwd=tmp_path, start_new_session=True,
                         env={**os.environ, "SDS_STORE": str(store)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline and p.poll() is None:
        for label, rd in cells(store).items():
            if (read_json(rd.progress_path) or {}).get("env_step", 0) >= 25:  # past its checkpoint at step 20
                victim = (label, rd)
        time.sleep(0.2)
    assert victim is not None, "no cell got past its first checkpoint in time"
    # kill the sweep and every cell process (the launcher's group, and any cell outside it)
    pids = [a.get("pid") for rd in cells(store).values() for a in rd.read_state().get("attempts", []) if a.get("pid")]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    for pid in pids:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    label, rd = victim
    assert rd.read_state()["phase"] != "done"

    # re-invoke (faster steps: step_sleep is declared outside the identity, so it is the same cell)
    again = run(store, *sweep, "step_sleep=0")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2/2 cells done" in again.stdout
    logs = "".join(f.read_text() for f in sorted(rd.logs_dir.glob("attempt_*.out")))
    assert re.search(r"resuming from step [1-9]\d*", logs), logs[-2000:]
    lr = float(label.split("lr=")[1])
    assert rd.read_result() == pytest.approx(expected_loss(lr, 0, 60), rel=1e-12, abs=0)

    # a second re-invoke plans nothing and runs nothing: the stored values are handed back
    attempts = {k: len(r.read_state()["attempts"]) for k, r in cells(store).items()}
    third = run(store, *sweep, "step_sleep=0")
    assert third.returncode == 0, third.stdout[-3000:]
    assert "plan: 2 cells, 0 to submit | done 2" in third.stdout
    assert {k: len(r.read_state()["attempts"]) for k, r in cells(store).items()} == attempts

    # status speaks the app's terms: its heartbeat steps, no ID / OOD columns (an app has none)
    status = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "status", str(store)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
    assert status.returncode == 0 and status.stdout.startswith("DONE 2/2"), status.stdout + status.stderr
    assert "ID eval" not in status.stdout and "OOD" not in status.stdout and "60/60 100%" in status.stdout, status.stdout


def test_a_study_over_a_learning_rate_needs_no_flag_and_reruns_from_the_store(tmp_path):
    """hydra/sweeper=sds_optuna with hydra-optuna-sweeper's keys: each trial a cell of the app's loss;
    the same command again asks nothing (n_trials is the study's total) and runs nothing."""
    store = tmp_path / "store"
    args = ["hydra/sweeper=sds_optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.sampler.seed=0", "lr=interval(0.01,0.5)", "steps=30", "step_sleep=0"]
    first = run(store, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    found = cells(store)
    assert len(found) == 4 and all(label.startswith("app,lr=") for label in found)
    values = {label: rd.read_result() for label, rd in found.items()}
    best = yaml.safe_load(next(store.glob("multirun/*/optimization_results.yaml")).read_text())
    assert best["best_value"] == pytest.approx(min(values.values()))
    assert f"app,lr={best['best_params']['lr']}" in found

    # the same study again: its total is reached, nothing is asked or run, the results are written again
    second = run(store, *args)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "submitted" not in second.stdout and "4 of 4 trials finished" in second.stdout
    assert all(len(rd.read_state()["attempts"]) == 1 for rd in cells(store).values())
    results = sorted(store.glob("multirun/*/optimization_results.yaml"))
    assert len(results) == 2 and yaml.safe_load(results[-1].read_text()) == best


def test_swept_keys_make_cells_and_an_unswept_change_is_refused(tmp_path):
    """The built-in app: an Optuna-style search over agent.lr on one config and seed plans one new
    cell per value (no sweep.new_variant), while changing an unswept key is still a conflict."""
    from tests.test_plan import Loader, cell

    loader = Loader(tmp_path)
    from hydra.types import RunMode

    master = loader.real.load_configuration("sweep", overrides=[f"store.root={tmp_path}"], run_mode=RunMode.MULTIRUN)
    cell(loader, master, "config=v2_baseline", "seed=0")  # a cell at the default learning rate
    with open_dict(master):
        master.hydra.sweeper.params["agent.lr"] = "interval(0.0001,0.01)"  # where Optuna's search space lives
    planned = plan_cells([["config=v2_baseline", "seed=0", f"agent.lr={lr}"] for lr in (0.001, 0.002)],
                         config_loader=loader, config=master, log=lambda m: None)
    assert [(c.verdict, c.spec.config) for c in planned] == [("new", "v2_baseline,agent.lr=0.001"),
                                                             ("new", "v2_baseline,agent.lr=0.002")]
    with pytest.raises(PlanError, match=r"trainer.total_steps: .* -> 2048"):
        plan_cells([["config=v2_baseline", "seed=0", "trainer.total_steps=2048"]], config_loader=loader,
                   config=master, log=lambda m: None)
