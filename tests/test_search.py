"""hydra/sweeper=sds_optuna end to end on a toy Hydra app (tests/search_app: a return that grows with x,
a cost that grows faster, divergence above a threshold): a trial is a point on k seeds, each an ordinary
cell; n_trials is the total (a re-run asks nothing, a raised total asks the rest, a SIGKILLed launcher's
study ends with exactly n_trials and no cell trained twice); a changed study is refused by the key that
differs; the cost limit is a constraint (the best is the best feasible); a pruner stops diverging
trials' cells, recorded as `pruned`, checkpoints kept; two invocations at once end with n_trials; the
journal opens in optuna-dashboard; bad input is refused with the store unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from safedreamer_sweep.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "search_app" / "app.py"
BASE = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.2", "hydra.launcher.progress=none",
        "hydra.launcher.max_parallel=2", "hydra/sweeper=sds_optuna", "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.study_name=toy", "hydra.sweeper.objective=ret", "hydra.sweeper.direction=maximize",
        "hydra.sweeper.constraint={metric:cost,limit:15}", "hydra.sweeper.seeds=[0,1]"]


def command(store: Path, *args: str) -> list[str]:
    return [sys.executable, str(APP), "-m", f"hydra.sweep.dir={store}/multirun/${{now:%H-%M-%S-%f}}", *BASE, *args]


def env(store: Path) -> dict[str, str]:
    return {**os.environ, "SDS_STORE": str(store), "SDS_HEARTBEAT_EVERY_S": "0"}


def run(store: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(command(store, *args), cwd=store.parent, env=env(store), capture_output=True, text=True,
                       timeout=timeout, check=False)
    return p


def study(store: Path, name: str = "toy") -> optuna.Study:
    journal = store / "studies" / name / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def attempts(store: Path) -> dict[str, int]:
    return {str(rd.path): len(rd.read_state().get("attempts") or []) for rd in Store(store).iter_runs()}


def tree(store: Path) -> dict[str, float]:
    """Every file and its mtime; lock files are not contents (taking one touches it)."""
    return {str(p): p.stat().st_mtime for p in store.rglob("*") if not p.name.endswith(".lock")} if store.exists() else {}


def test_a_study_is_a_total_over_seeded_cells_and_its_best_is_feasible(tmp_path):
    store = tmp_path / "store"
    args = ["hydra.sweeper.n_trials=4", "x=interval(0.05,0.95)"]
    first = run(store, *args)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    s = study(store)
    trials = s.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(attempts(store)) == 8 and set(attempts(store).values()) == {1}  # 4 points x 2 seeds, once each
    for t in trials:  # the value is the seeds' mean, with the spread kept
        per_seed = t.user_attrs["sds_seed_values"][0]
        assert len(per_seed) == 2 and t.value == pytest.approx(sum(per_seed) / 2)
        assert t.user_attrs["sds_spread"][0]["n"] == 2
        assert t.constraints == {"cost": pytest.approx(30 * t.params["x"] - 15)}
    feasible = [t for t in trials if t.params["x"] <= 0.5]
    best = yaml.safe_load(next(store.glob("multirun/*/optimization_results.yaml")).read_text())
    if feasible:
        assert best["best_value"] == pytest.approx(max(t.value for t in feasible))
    assert "4/4 trials (4 complete, 0 pruned, 0 failed)" in first.stdout

    # the total is reached: nothing asked, nothing run; a key outside every cell's identity
    # (sds.identity_exclude: step_sleep) changes no trial's meaning, so the study is not refused for it
    again = run(store, *args, "step_sleep=0.01")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(study(store).get_trials()) == 4 and set(attempts(store).values()) == {1}
    assert "submitted" not in again.stdout

    more = run(store, "hydra.sweeper.n_trials=6", "x=interval(0.05,0.95)")  # a raised total asks the rest
    assert more.returncode == 0, more.stdout[-3000:]
    assert len(study(store).get_trials()) == 6 and len(attempts(store)) == 12 and set(attempts(store).values()) == {1}
    job_dirs = sorted(int(p.name) for p in store.glob("multirun/*/[0-9]*"))
    assert job_dirs[-4:] == [8, 9, 10, 11], job_dirs  # trial 4's and 5's seeds: job numbers continue


def test_a_changed_study_is_refused_by_name_and_new_study_sets_it_aside(tmp_path):
    store = tmp_path / "store"
    assert run(store, "hydra.sweeper.n_trials=1", "x=interval(0.05,0.95)").returncode == 0
    before = tree(store)
    refused = run(store, "hydra.sweeper.n_trials=1", "x=interval(0.1,0.9)")
    assert refused.returncode == 1
    out = refused.stdout + refused.stderr
    assert "space" in out and "x" in out and "hydra.sweeper.new_study=true" in out, out[-3000:]
    assert tree(store) == before  # refused before anything was written
    fresh = run(store, "hydra.sweeper.n_trials=1", "x=interval(0.1,0.9)", "hydra.sweeper.new_study=true")
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert len(study(store).get_trials()) == 1 and len(list((store / "studies").glob("toy.superseded-*"))) == 1


@pytest.mark.parametrize("bad, says", [
    (["hydra.sweeper.n_trials=0"], "n_trials"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"], "sampler"),
    (["hydra.sweeper.pruner=nosuch"], "pruner"),
    (["x=interval(0.5)"], "x"),
    (["seed=0,1"], "seed"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, bad, says):
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=2", *(bad if bad[0].startswith("x=") else ["x=interval(0.1,0.9)", *bad]))
    assert p.returncode != 0
    assert says in (p.stdout + p.stderr), (p.stdout + p.stderr)[-3000:]
    assert not (store / "runs").exists() and not (store / "studies").exists()


def test_a_killed_study_resumes_to_exactly_its_total_and_trains_no_cell_twice(tmp_path):
    store = tmp_path / "store"
    args = ["hydra.sweeper.n_trials=6", "x=interval(0.05,0.95)", "step_sleep=0.3"]
    p = subprocess.Popen(command(store, *args), cwd=tmp_path, env=env(store), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = store / "studies" / "toy" / "journal.log"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if journal.exists() and sum(t.state.is_finished() for t in study(store).get_trials()) >= 2:
            break
        time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)  # the launcher only: its cells die with it or run on
    p.wait()
    assert 2 <= sum(t.state.is_finished() for t in study(store).get_trials()) < 6
    again = run(store, *args)  # the same command line
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    trials = study(store).get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(attempts(store)) == 12
    for rd in Store(store).iter_runs():  # a second attempt only for a cell in flight at the kill: resumed
        logs = [f.read_text() for f in sorted(rd.logs_dir.glob("attempt_*.out"))]
        for later in logs[1:]:
            assert "first step 1\n" not in later, later


def test_a_pruner_stops_diverging_trials_and_records_them_pruned(tmp_path):
    """Half the space diverges (x > 0.5: the return curve falls from the first step). Median pruning
    after 2 complete trials and 500 env steps of warm-up: every diverging trial asked after those is
    stopped, its cells recorded `pruned` (never failed) with their checkpoints kept."""
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=8", "x=interval(0.05,0.95)", "diverge_above=0.5", "steps=20",
            "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:2}",
            "hydra.sweeper.prune.metric=ret", "hydra.sweeper.prune.warmup_steps=500",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    trials = study(store).get_trials()
    assert len(trials) == 8
    states = [(t.number, round(t.params["x"], 2), t.state.name) for t in trials]
    assert all(t.state.name == "PRUNED" for t in trials if t.number >= 3 and t.params["x"] > 0.5), states
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, states
    phases = []
    for t in pruned:
        assert t.user_attrs["sds_pruned_at"] >= 500
        for c in t.user_attrs["sds_cells"]:  # a seed that finished before the kill landed stays done
            state = json.loads((store / c["run_dir"] / "state.json").read_text())
            phases.append(state["phase"])
            assert state["phase"] in ("pruned", "done") and "failed" not in json.dumps(state), state
            if state["phase"] == "pruned":
                assert state["attempts"][-1]["outcome"] == "pruned" and state["attempts"][-1]["cause"] is None
                assert list((store / c["run_dir"] / "checkpoints").glob("step_*.json"))
    assert "pruned" in phases


def test_two_invocations_at_once_end_with_exactly_the_total(tmp_path):
    store = tmp_path / "store"
    args = ["hydra.sweeper.n_trials=6", "x=interval(0.05,0.95)", "hydra.launcher.max_parallel=1"]
    procs = [subprocess.Popen(command(store, *args), cwd=tmp_path, env=env(store), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [q.communicate(timeout=300)[0] for q in procs]
    assert all(q.returncode == 0 for q in procs), outs[0][-3000:] + outs[1][-3000:]
    assert len(study(store).get_trials()) == 6
    assert len(attempts(store)) == 12 and set(attempts(store).values()) == {1}


def test_the_journal_opens_in_optuna_dashboard(tmp_path):
    """The dashboard opens the store's journal as `optuna-dashboard <store>/studies/toy/journal.log` does
    (its storage guess from the path), and its own JSON API lists the study's trials."""
    import io
    import json

    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage  # what its command line calls on the path

    store = tmp_path / "store"
    assert run(store, "hydra.sweeper.n_trials=2", "x=interval(0.05,0.95)").returncode == 0
    app = wsgi(get_storage(str(store / "studies" / "toy" / "journal.log")))

    def get(path: str) -> dict:
        status: list[str] = []
        body = app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": io.BytesIO(),
                    "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"},
                   lambda s, h, *a: status.append(s))
        assert status and status[0].startswith("200"), status
        return json.loads(b"".join(body))

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["toy"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert [t["number"] for t in detail["trials"]] == [t.number for t in study(store).get_trials()] == [0, 1]


def test_best_points_rerun_on_test_seeds_and_the_report_shows_the_front(tmp_path):
    """The best feasible point re-run on fresh test seeds, reported apart from its tuning seeds; the
    report's front holds feasible and infeasible trials with the limit, its best is feasible."""
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=5", "x=interval(0.05,0.95)", "hydra.sweeper.test={seeds:[100,101],top_k:1}")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    s = study(store)
    tests = s.user_attrs["sds_test"]
    assert list(tests) == [str(s.best_trial.number)]
    rerun = tests[str(s.best_trial.number)]
    assert rerun["seeds"] == [100, 101] and rerun["spread"][0]["n"] == 2
    assert {c["seed"] for c in rerun["cells"]} == {100, 101}
    assert len(attempts(store)) == 10 + 2
    again = run(store, "hydra.sweeper.n_trials=5", "x=interval(0.05,0.95)", "hydra.sweeper.test={seeds:[100,101],top_k:1}")
    assert again.returncode == 0 and "submitted" not in again.stdout  # the test cells are done cells too
    from safedreamer_sweep.report.study import read_studies

    (view,) = read_studies(store)
    assert view.best == [s.best_trial.number] and s.best_trial.constraints["cost"] <= 0
    front = view.front()
    assert set(front["feasible"]) == {True, False}, front  # both sides of the limit are on the front figure
    assert bool(front.set_index("number").loc[s.best_trial.number, "feasible"])
    assert (store / "report" / "study-toy-front.png").exists()
    html = (store / "report" / "report.html").read_text()
    assert "toy" in html and "test seeds" in html.lower()


def test_a_two_objective_study_keeps_its_pareto_front(tmp_path):
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=4", "x=interval(0.05,0.95)", "hydra.sweeper.objective=[ret,cost]",
            "hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.constraint=null")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    s = study(store)
    assert [d.name for d in s.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 for t in s.get_trials())
    solutions = yaml.safe_load(next(store.glob("multirun/*/optimization_results.yaml")).read_text())["solutions"]
    assert len(solutions) == len(s.best_trials) >= 1


def test_an_objective_the_app_never_returns_stops_the_study_by_name(tmp_path):
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=2", "x=interval(0.05,0.95)", "hydra.sweeper.objective=reward")
    assert p.returncode == 1
    out = p.stdout + p.stderr
    assert "hydra.sweeper.objective=['reward']: the task never produces it" in out and "ret" in out, out[-3000:]


def test_a_pruned_cell_asked_again_resumes_from_its_checkpoint(tmp_path):
    """Optuna's pruners never pause a trial, so a promoted trial simply runs on; a pruned cell that is
    asked again later (a grid, or a study that repeats its point) resumes from its checkpoint: its
    first step is past 1, and it ends done."""
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=8", "x=interval(0.05,0.95)", "diverge_above=0.5", "steps=30",
            "step_sleep=0.1", "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:2}",
            "hydra.sweeper.prune.metric=ret", "hydra.sweeper.prune.warmup_steps=500",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    cells = [c for t in study(store).get_trials() if t.state.name == "PRUNED" for c in t.user_attrs["sds_cells"]
             if '"phase": "pruned"' in (store / c["run_dir"] / "state.json").read_text()]
    assert cells, [(t.number, t.params, t.state.name) for t in study(store).get_trials()]
    cell = cells[0]
    x = next(o.split("=", 1)[1] for o in cell["overrides"] if o.startswith("x="))
    grid = subprocess.run([sys.executable, str(APP), "-m", f"hydra.sweep.dir={store}/multirun/grid",
                           "hydra/launcher=sds_local", "hydra.launcher.poll_s=0.2", "hydra.launcher.progress=none",
                           f"x={x}", f"seed={cell['seed']}", "diverge_above=0.5", "steps=30", "step_sleep=0"],
                          cwd=tmp_path, env=env(store), capture_output=True, text=True, timeout=300, check=False)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    assert "pruned by study toy" in grid.stdout, grid.stdout[-2000:]  # the plan says why it runs again
    state = json.loads((store / cell["run_dir"] / "state.json").read_text())
    assert state["phase"] == "done" and [a["outcome"] for a in state["attempts"]] == ["pruned", "done"]
    logs = sorted((store / cell["run_dir"] / "logs").glob("attempt_*.out"))
    first = int(logs[-1].read_text().split("first step ", 1)[1].split()[0])
    assert first > 1, logs[-1].read_text()[-500:]


def test_a_cost_far_above_the_limit_prunes_after_the_cost_warmup(tmp_path):
    """The toy beats its cost as `cost` (30 x at the end): with the limit 15, no slack and a cost
    warm-up of 3000 env steps (of 4000), a trial is pruned for its cost only past the warm-up and only
    when its cost can exceed the limit (x > 0.5); the pruner itself never prunes (its start-up)."""
    store = tmp_path / "store"
    p = run(store, "hydra.sweeper.n_trials=6", "x=interval(0.05,0.95)", "steps=40", "step_sleep=0.1",
            "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:100}",
            "hydra.sweeper.prune.metric=ret", "hydra.sweeper.prune.cost_warmup_steps=3000",
            "hydra.sweeper.prune.cost_slack=0.0", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    trials = study(store).get_trials()
    states = [(round(t.params["x"], 2), t.state.name, t.user_attrs.get("sds_pruned_at")) for t in trials]
    assert all(t.state.name == "PRUNED" for t in trials if t.params["x"] > 0.75), states
    assert all(t.params["x"] > 0.5 and t.user_attrs["sds_pruned_at"] >= 3000
               for t in trials if t.state.name == "PRUNED"), states
    assert any(t.state.name == "PRUNED" for t in trials) and "cost above 15" in p.stdout, states
