"""A study on the built-in trainer (2 parameters, 12 trials x 2 seeds, a tiny budget) whose launcher is
SIGKILLed after about 5 trials: the same command line again ends with exactly 12 trials and 24 cells,
no finished cell run again and every cell that ran twice was in flight at the kill; the same command
with the search space changed is refused by the key that differs. Locally and on the local Slurm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, TINY, sds

from safedreamer_sweep.core.store import Store

pytestmark = pytest.mark.slow

LAUNCHERS = {
    "local": ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5", "hydra.launcher.progress=none"],
    "slurm": ["hydra/launcher=sds_slurm", "hydra.launcher.poll_s=1", "hydra.launcher.mem_gb=1.5",
              "hydra.launcher.array_parallelism=2", "hydra.launcher.progress=none"],
}
SPACE = ["agent.lr=tag(log,interval(0.0001,0.003))", "agent.clip=interval(0.1,0.3)"]


def study_args(store: Path, backend: str, space: list[str]) -> list[str]:
    return ["-m", "hydra/sweeper=sds_optuna", "hydra.sweeper.n_trials=12", "hydra.sweeper.seeds=[0,1]",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.study_name=lr-clip",
            "config=v2_baseline", "~hydra.sweeper.params.seed", *space, f"store.root={store}",
            "hydra.sweep.dir=${store.root}/multirun/${now:%H-%M-%S-%f}", *TINY, *LAUNCHERS[backend]]


def trials(store: Path) -> list[optuna.trial.FrozenTrial]:
    journal = store / "studies" / "lr-clip" / "journal.log"
    if not journal.exists():
        return []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="lr-clip", storage=storage).get_trials()


@pytest.mark.parametrize("backend", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_a_killed_builtin_study_resumes_to_exactly_12_trials_and_24_cells(tmp_path, backend):
    store = tmp_path / "store"
    args = study_args(store, backend, SPACE)
    p = subprocess.Popen([sys.executable, "-m", "safedreamer_sweep", *args], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while time.time() < deadline and p.poll() is None and sum(t.state.is_finished() for t in trials(store)) < 5:
        time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)  # the launcher only
    first_out = p.communicate()[0]
    finished_at_kill = {t.number for t in trials(store) if t.state.is_finished()}
    assert 5 <= len(finished_at_kill) < 12, first_out[-3000:]
    done_at_kill = {str(rd.path) for rd in Store(store).iter_runs() if rd.read_state().get("phase") == "done"}

    again = sds(*args, timeout=1500)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-3000:]
    final = trials(store)
    assert len(final) == 12 and all(t.state.name == "COMPLETE" for t in final), [(t.number, t.state) for t in final]
    runs = list(Store(store).iter_runs())
    assert len(runs) == 24 and all(rd.read_state()["phase"] == "done" for rd in runs)
    for rd in runs:
        attempts = rd.read_state()["attempts"]
        assert sum(a.get("outcome") == "done" for a in attempts) == 1, attempts  # trained to the end once
        if str(rd.path) in done_at_kill:
            assert len(attempts) == 1, attempts  # finished before the kill: never started again
        elif len(attempts) > 1:  # in flight at the kill: its later attempt resumed or restarted it, once
            assert len(attempts) == 2 and attempts[0].get("outcome") != "done", attempts
    told = {t.number: t.value for t in final if t.number in finished_at_kill}
    assert len(told) == len(finished_at_kill)  # the trials told before the kill stand as they were

    changed = sds(*study_args(store, backend, ["agent.lr=tag(log,interval(0.0001,0.01))", SPACE[1]]), timeout=300)
    assert changed.returncode == 1
    out = changed.stdout + changed.stderr
    assert "space: agent.lr" in out and "hydra.sweeper.new_study=true" in out, out[-3000:]
    assert len(trials(store)) == 12


def test_a_space_reaching_outside_a_keys_range_is_refused_before_anything_is_written(tmp_path):
    """agent.lr's schema range is (0, 1]: a space whose upper end is 2 is refused at its end point,
    by the key and its range, before the study or any cell exists."""
    store = tmp_path / "store"
    p = sds(*study_args(store, "local", ["agent.lr=interval(0.0001,2.0)", SPACE[1]]), timeout=300)
    assert p.returncode == 1
    out = p.stdout + p.stderr
    assert "agent.lr" in out and "2.0" in out, out[-3000:]
    assert not (store / "studies").exists() and not (store / "runs").exists()
