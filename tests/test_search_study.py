"""search/study.py: a study's identity, its directory in the store, opening it (create, resume toward the
total, refuse a different search by key with the store unchanged, supersede on new_study), its journal
read by a fresh Optuna and by optuna-dashboard, and count-then-ask under the ask lock across processes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import optuna
import pytest

from safedreamer_sweep.core.files import StoreError, read_json
from safedreamer_sweep.search.settings import SearchError, SearchSettings, search_settings
from safedreamer_sweep.search.space import Space, parse_space
from safedreamer_sweep.search.study import (
    StudyDir,
    default_study_name,
    list_studies,
    load_study,
    open_study,
    study_identity,
)

BASE: dict[str, Any] = {
    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 7},
    "direction": "maximize",
    "n_trials": 6,
    "study_name": "lr-search",
    "params": {"agent.lr": "tag(log, interval(0.0001, 0.01))", "agent.ent_coef": "interval(0.0, 0.05)"},
    "seeds": [0, 1],
    "aggregate": "mean",
    "objective": "id.return_mean",
    "constraint": {"metric": "id.cost_mean", "limit": 25.0},
}


def settings(**changes: Any) -> tuple[SearchSettings, Space]:
    conf = {**BASE, **changes}
    s = search_settings(conf)
    return s, parse_space(s.params)


def tree(root: Path) -> dict[str, str]:
    """Every file under root with a hash of its bytes (a symlink by its target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + str(p.readlink())
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def run_trials(study: optuna.Study, space: Space, n: int) -> None:
    for _ in range(n):
        t = study.ask(space.distributions)
        study.tell(t, float(t.params["agent.lr"]))


# ----------------------------------------------------------------------------- identity


def test_identity_is_stable_across_dict_orders() -> None:
    s1, sp1 = settings()
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["params"] = dict(reversed(list(BASE["params"].items())))
    reordered["sampler"] = {"seed": 7, "_target_": "optuna.samplers.TPESampler"}
    s2 = search_settings(reordered)
    sp2 = parse_space(s2.params)
    a = study_identity(s1, sp1, app=None, fixed={"trainer.total_steps": "4096", "env.id": "Goal"})
    b = study_identity(s2, sp2, app=None, fixed={"env.id": "Goal", "trainer.total_steps": "4096"})
    assert a == b
    assert len(a[0]) == 12 and int(a[0], 16) >= 0
    assert set(a[1]) == {"space", "sampler", "objective", "constraint", "fixed", "app", "seeds", "aggregate"}


@pytest.mark.parametrize("key, changes, fixed, app", [
    ("space", {"params": {"agent.lr": "tag(log, interval(0.001, 0.1))", "agent.ent_coef": "interval(0.0, 0.05)"}}, None, None),
    ("space", {"params": {"agent.lr": "tag(log, interval(0.0001, 0.01))"}}, None, None),
    ("sampler", {"sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 8}}, None, None),
    ("sampler", {"sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 7}}, None, None),
    ("objective", {"objective": "id.return_iqm"}, None, None),
    ("objective", {"direction": "minimize"}, None, None),
    ("constraint", {"constraint": {"metric": "id.cost_mean", "limit": 10.0}}, None, None),
    ("constraint", {"constraint": None}, None, None),
    ("fixed", {}, {"trainer.total_steps": "8192"}, None),
    ("app", {}, None, "named:other"),
    ("seeds", {"seeds": [0, 1, 2]}, None, None),
    ("aggregate", {"aggregate": "iqm"}, None, None),
])
def test_identity_changes_with_each_key(key: str, changes: dict, fixed: dict | None, app: str | None) -> None:
    s, sp = settings()
    ident, keys = study_identity(s, sp, app=None, fixed={"trainer.total_steps": "4096"})
    s2, sp2 = settings(**changes)
    ident2, keys2 = study_identity(s2, sp2, app=app, fixed=fixed if fixed is not None else {"trainer.total_steps": "4096"})
    assert ident2 != ident
    assert [k for k in keys if keys[k] != keys2[k]] == [key]


@pytest.mark.parametrize("changes", [{"n_trials": 50}, {"pruner": "asha"}, {"prune": {"metric": "x", "warmup_steps": 100}},
                                     {"test": {"seeds": [100], "top_k": 2}}, {"n_jobs": 8}, {"max_failure_rate": 0.5},
                                     {"new_study": True}])
def test_identity_leaves_out_what_may_change_on_resume(changes: dict) -> None:
    s, sp = settings()
    s2, sp2 = settings(**changes)
    assert study_identity(s, sp, app=None) == study_identity(s2, sp2, app=None)


# ----------------------------------------------------------------------------- the study directory


def test_study_dir_layout_and_names(tmp_path: Path) -> None:
    sd = StudyDir(tmp_path, "lr-search")
    assert sd.path == tmp_path / "studies" / "lr-search"
    assert sd.journal == sd.path / "journal.log" and sd.json_path == sd.path / "study.json"
    with sd.ask_lock():
        assert (sd.path / "ask.lock").exists()
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(SearchError, match="study_name"):
            StudyDir(tmp_path, bad)
    assert default_study_name("my app/v2") == "my_app_v2" and default_study_name(None) == "study"


def test_open_creates_then_resumes_toward_the_total(tmp_path: Path) -> None:
    s, sp = settings()
    study, sd, created = open_study(tmp_path, s, sp, app=None, fixed={"trainer.total_steps": "4096"}, sweep_id="sw1")
    assert created and sd.path == tmp_path / "studies" / "lr-search"
    doc = read_json(sd.json_path)
    assert doc["format"] == 1 and doc["name"] == "lr-search" and len(doc["identity"]) == 12
    assert doc["n_trials"] == 6 and doc["directions"] == ["maximize"] and doc["objective"] == ["id.return_mean"]
    assert doc["constraint"] == {"metric": "id.cost_mean", "limit": 25.0} and doc["seeds"] == [0, 1]
    assert doc["pruner"] == {"name": None} and doc["test"] is None and doc["created_by"] == "sw1"
    assert doc["keys"]["fixed"] == {"trainer.total_steps": "4096"}
    run_trials(study, sp, 3)
    first = [(t.number, t.params, t.value) for t in study.trials]

    s2, sp2 = settings(n_trials=12, pruner="asha", prune={"metric": "episode_return", "warmup_steps": 2048})
    again, sd2, created2 = open_study(tmp_path, s2, sp2, app=None, fixed={"trainer.total_steps": "4096"}, sweep_id="sw2")
    assert not created2 and sd2.path == sd.path
    assert [(t.number, t.params, t.value) for t in again.trials] == first
    assert isinstance(again.pruner, optuna.pruners.SuccessiveHalvingPruner)
    doc2 = read_json(sd.json_path)
    assert doc2["identity"] == doc["identity"] and doc2["n_trials"] == 12 and doc2["created_by"] == "sw1"
    assert doc2["pruner"]["name"] == "asha" and doc2["prune"]["warmup_steps"] == 2048
    assert doc2["created_at"] == doc["created_at"]


def test_a_different_search_is_refused_by_key_with_the_store_unchanged(tmp_path: Path) -> None:
    s, sp = settings()
    study, _, _ = open_study(tmp_path, s, sp, app=None)
    run_trials(study, sp, 2)
    before = tree(tmp_path)
    s2, sp2 = settings(params={"agent.lr": "tag(log, interval(0.001, 0.1))", "agent.ent_coef": "interval(0.0, 0.05)"},
                       seeds=[0, 1, 2])
    with pytest.raises(SearchError) as e:
        open_study(tmp_path, s2, sp2, app=None)
    msg = str(e.value)
    assert "space: agent.lr tag(log,interval(0.0001,0.01)) -> tag(log,interval(0.001,0.1))" in msg
    assert "seeds: [0, 1] -> [0, 1, 2]" in msg
    assert "hydra.sweeper.new_study=true" in msg and "+hydra" not in msg and "kept" in msg
    assert "agent.ent_coef" not in msg   # only what differs
    assert tree(tmp_path) == before


def test_new_study_moves_the_old_one_aside(tmp_path: Path) -> None:
    s, sp = settings()
    study, sd, _ = open_study(tmp_path, s, sp, app=None)
    run_trials(study, sp, 2)
    old_identity = read_json(sd.json_path)["identity"]
    s2, sp2 = settings(aggregate="iqm", new_study=True)
    fresh, sd2, created = open_study(tmp_path, s2, sp2, app=None)
    assert created and sd2.path == sd.path and len(fresh.trials) == 0
    assert read_json(sd2.json_path)["identity"] != old_identity
    aside = [p for p in (tmp_path / "studies").iterdir() if p.name.startswith("lr-search.superseded-")]
    assert len(aside) == 1
    assert read_json(aside[0] / "study.json")["identity"] == old_identity
    assert [sd.name for sd in list_studies(tmp_path)] == ["lr-search"]
    both = list_studies(tmp_path, include_superseded=True)
    assert [x.name for x in both] == ["lr-search", aside[0].name]
    assert len(load_study(both[1]).trials) == 2              # the old study is kept, readable
    # new_study=true left in the config: the same search again resumes, it does not supersede again
    _, _, created_again = open_study(tmp_path, s2, sp2, app=None)
    assert not created_again and len(list_studies(tmp_path, include_superseded=True)) == 2
    with pytest.raises(SearchError, match="superseded"):
        open_study(tmp_path, dataclasses.replace(s2, study_name=aside[0].name), sp2, app=None)


def test_a_journal_without_study_json_is_not_adopted(tmp_path: Path) -> None:
    sd = StudyDir(tmp_path, "lr-search")
    sd.path.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sd.journal)))
    optuna.create_study(study_name="lr-search", storage=storage)
    before = tree(tmp_path)
    s, sp = settings()
    with pytest.raises(SearchError, match=r"no study\.json"):
        open_study(tmp_path, s, sp, app=None)
    assert tree(tmp_path) == before


def test_a_storage_given_is_used_and_study_json_stays_in_the_store(tmp_path: Path) -> None:
    journal = tmp_path / "elsewhere" / "optuna.log"
    journal.parent.mkdir()
    s, sp = settings(storage=str(journal))
    study, sd, _ = open_study(tmp_path, s, sp, app=None)
    run_trials(study, sp, 1)
    assert journal.stat().st_size > 0 and not sd.journal.exists()
    assert read_json(sd.json_path)["storage"] == str(journal)
    assert len(load_study(sd).trials) == 1
    # superseded here, the study in the given storage is not the store's to replace: refused, kept
    before = tree(tmp_path)
    with pytest.raises(SearchError, match="already holds a study"):
        open_study(tmp_path, dataclasses.replace(s, aggregate="iqm", new_study=True), sp, app=None)
    assert tree(tmp_path) == before


def test_load_study_of_a_study_never_started(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no journal"):
        load_study(StudyDir(tmp_path, "nothing"))
    assert not (tmp_path / "studies" / "nothing" / "journal.log").exists()


# ----------------------------------------------------------------------------- the journal, read by others


def test_the_journal_is_read_by_a_fresh_optuna_and_by_optuna_dashboard(tmp_path: Path) -> None:
    s, sp = settings()
    study, sd, _ = open_study(tmp_path, s, sp, app=None)
    run_trials(study, sp, 3)
    t = study.ask(sp.distributions)
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    expect = [(t.number, t.state, t.params, t.value) for t in study.trials]

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sd.journal)))
    loaded = optuna.load_study(study_name="lr-search", storage=storage)
    assert [(t.number, t.state, t.params, t.value) for t in loaded.trials] == expect
    assert loaded.metric_names == ["id.return_mean"]

    from optuna_dashboard._inmemory_cache import InMemoryCache
    from optuna_dashboard._storage import get_studies, get_trials
    from optuna_dashboard._storage_url import get_storage

    dash = get_storage(str(sd.journal))                # what `optuna-dashboard <path>/journal.log` opens
    (frozen,) = get_studies(dash)
    assert frozen.study_name == "lr-search"
    trials = get_trials(InMemoryCache(), dash, frozen._study_id)
    assert [(t.number, t.state, t.params, t.value) for t in trials] == expect


# ----------------------------------------------------------------------------- count-then-ask across processes


def _asker(store: str, total: int, out: Any) -> None:
    sd = StudyDir(Path(store), "lr-search")
    study = load_study(sd)
    asked = 0
    while True:
        with sd.ask_lock():
            if len(study.get_trials(deepcopy=False)) >= total:
                break
            trial = study.ask()
            trial.suggest_float("agent.lr", 1e-4, 1e-2, log=True)
        asked += 1
        study.tell(trial, 1.0)
    out.put(asked)


def test_two_processes_asking_under_the_lock_end_with_exactly_the_total(tmp_path: Path) -> None:
    s, sp = settings(n_trials=30)
    open_study(tmp_path, s, sp, app=None)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_asker, args=(str(tmp_path), 30, out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    asked = [out.get(timeout=5) for _ in procs]
    assert sum(asked) == 30
    assert len(load_study(StudyDir(tmp_path, "lr-search")).trials) == 30
    lines = [json.loads(line) for line in StudyDir(tmp_path, "lr-search").journal.read_text().splitlines()]
    assert sum(1 for line in lines if line["op_code"] == 4) == 30   # CREATE_TRIAL, exactly the total


def test_without_the_lock_the_total_can_be_exceeded_so_the_lock_is_what_holds_it(tmp_path: Path) -> None:
    """The check above is able to fail: counting then asking without the lock, with the count read
    before another process's ask lands, overshoots the total."""
    s, sp = settings(n_trials=1)
    study_a, sd, _ = open_study(tmp_path, s, sp, app=None)
    study_b = load_study(sd)
    counts = [len(study_a.trials), len(study_b.trials)]    # both count 0 of 1 ...
    study_a.ask()
    study_b.ask()                                          # ... and both ask
    assert counts == [0, 0] and len(load_study(sd).trials) == 2
