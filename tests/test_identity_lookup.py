"""A cell is its identity wherever it is asked from (issue 19): the planner finds a cell's run
directory by its identity hash whatever label the current command line gives it (narrowed, widened,
reordered), through the store index (core/index.py), which is rebuilt from the directories when it
is missing, corrupt or stale and is never the source of truth; conflicts are still refused; the
matrix (status, results, report) lists each identity once."""

from __future__ import annotations

import sqlite3

import pytest

from safedreamer_sweep.core.index import INDEX_NAME, STALE_MARKER, RunIndex
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.plan import plan_cells
from tests.test_plan import Loader, finish


@pytest.fixture
def planner(tmp_path):
    from hydra.types import RunMode

    loader = Loader(tmp_path)
    master = loader.real.load_configuration("sweep", overrides=[f"store.root={tmp_path}"], run_mode=RunMode.MULTIRUN)

    def plan(*jobs: list[str], **kw):
        return plan_cells([list(j) for j in jobs], config_loader=loader, config=master, log=lambda m: None, **kw)

    return plan


def run_and_finish(cells):
    """What a launch does to a planned cell's run dir (claim writes spec.json), then finish it."""
    for c in cells:
        c.run_dir.ensure_spec(c.spec.spec_document())
        finish(c.run_dir)


LR_SWEEP = (["config=v2_baseline", "seed=0", "agent.lr=0.001"], ["config=v2_baseline", "seed=0", "agent.lr=0.002"])


def test_narrowed_widened_and_reordered_command_lines_find_the_finished_cell(planner, tmp_path):
    first = planner(*LR_SWEEP)
    assert [c.spec.config for c in first] == ["v2_baseline,agent.lr=0.001", "v2_baseline,agent.lr=0.002"]
    run_and_finish(first)
    stored = first[1].run_dir.path
    assert stored == tmp_path / "runs" / "v2_baseline,agent.lr=0.002" / "seed_0" / first[1].spec.hash

    alone = planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"])  # the same cell asked alone
    assert [(c.verdict, c.run_dir.path, c.spec.config) for c in alone] == [
        ("done", stored, "v2_baseline,agent.lr=0.002")]  # the label is the one it was first stored under
    widened = planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"], ["config=v2_full", "seed=0", "agent.lr=0.002"])
    assert [c.verdict for c in widened] == ["done", "new"] and widened[0].run_dir.path == stored
    reordered = planner(["agent.lr=0.002", "seed=0", "config=v2_baseline"])
    assert reordered[0].verdict == "done" and reordered[0].run_dir.path == stored
    # nothing new was written by planning: still the two run directories of the first sweep
    assert sorted(rd.path for rd in Store(tmp_path).iter_runs()) == sorted(c.run_dir.path for c in first)


def test_conflicts_are_still_refused(planner):
    run_and_finish(planner(["config=v2_baseline", "seed=0"]))
    with pytest.raises(PlanError, match=r"trainer.total_steps: .* -> 2048.*new_variant=true"):
        planner(["config=v2_baseline", "seed=0", "trainer.total_steps=2048"])


def test_one_identity_under_two_labels_in_one_sweep_runs_once(planner):
    # agent.lr=0.0003 is v2_baseline's own default: both jobs resolve to one config, labelled two ways
    cells = planner(["config=v2_baseline", "seed=0", "agent.lr=0.0003"], ["config=v2_baseline", "seed=0", "agent.lr=0.001"],
                    ["config=v2_baseline", "seed=0"])
    default = [c for c in cells if c.index in (0, 2)]
    if default[0].spec.hash != default[1].spec.hash:
        pytest.skip("v2_baseline's default agent.lr is not 0.0003 any more")
    assert default[0].verdict == "new" and default[1].verdict == "running-elsewhere"
    assert default[1].spec.config == default[0].spec.config and default[1].run_dir.path == default[0].run_dir.path


def test_an_old_store_without_index_keeps_working_and_the_index_is_rebuilt(planner, tmp_path):
    run_and_finish(planner(*LR_SWEEP))
    (tmp_path / INDEX_NAME).unlink()  # a store written before the index existed
    assert planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"])[0].verdict == "done"
    assert RunIndex(tmp_path).count() == 2

    (tmp_path / INDEX_NAME).write_bytes(b"not a database at all" * 100)  # corrupt: only a cache
    assert planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"])[0].verdict == "done"
    with sqlite3.connect(tmp_path / INDEX_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_the_index_is_rebuilt_when_stale_and_drops_what_moved(planner, tmp_path):
    first = planner(*LR_SWEEP)
    run_and_finish(first)
    idx = RunIndex(tmp_path)
    assert idx.count() == 2 and idx.rebuilt == 0  # fresh: registered by each new run directory

    # a run directory copied in by hand under a label the index never saw: runs/ gained a folder
    src = first[1].run_dir.path
    copied = tmp_path / "runs" / "copied_in" / "seed_0" / src.name
    copied.parent.mkdir(parents=True)
    import shutil

    shutil.move(str(src), str(copied))
    idx = RunIndex(tmp_path)
    assert idx.lookup(src.name) == [copied] and idx.rebuilt == 1
    assert planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"])[0].run_dir.path == copied

    # a registration that failed leaves the marker: the next lookup rebuilds
    (tmp_path / STALE_MARKER).touch()
    idx = RunIndex(tmp_path)
    idx.lookup("00000000")
    assert idx.rebuilt == 1 and not (tmp_path / STALE_MARKER).exists()

    # a directory deleted since it was indexed is dropped at its next lookup, not handed out
    shutil.rmtree(copied)
    assert planner(["config=v2_baseline", "seed=0", "agent.lr=0.002"])[0].verdict == "new"
    assert RunIndex(tmp_path).lookup(src.name) == []


def test_an_index_entry_is_checked_against_the_run_directory(tmp_path):
    """The index is never the truth: an entry whose spec.json holds another identity (a hash collision,
    a hand edit, another app with an equal config) is not handed out for it."""
    store = Store(tmp_path)
    rd = store.run_dir("a,k=1", 0, "abcd1234")
    rd.ensure_spec({"config": "a,k=1", "seed": 0, "hash": "abcd1234", "run_config": {"x": 1, "seed": 0}})
    assert store.locate("a", 0, "abcd1234", {"x": 1, "seed": 0}).path == rd.path
    assert store.locate("a", 0, "abcd1234", {"x": 2, "seed": 0}).path == store.run_dir("a", 0, "abcd1234").path
    assert store.locate("a", 1, "abcd1234").path == store.run_dir("a", 1, "abcd1234").path
    # another app (label base) whose config hashes the same is another cell
    assert store.locate("b", 0, "abcd1234", {"x": 1, "seed": 0}).path == store.run_dir("b", 0, "abcd1234").path


def test_the_matrix_lists_an_identity_once_however_many_command_lines_asked(tmp_path):
    store = Store(tmp_path)
    for label in ("train,alg=b,env=x", "train"):  # an older version stored it twice, under two labels
        rd = store.run_dir(label, 2, "67982b0b")
        rd.ensure_spec({"config": label, "seed": 2, "hash": "67982b0b", "done_when": "return", "run_config": {}})
    store.write_sweep_manifest("s1", {"created_at": 1, "cells": [
        {"config": "train,alg=b,env=x", "seed": 2, "hash": "67982b0b"},
        {"config": "train,alg=a,env=x", "seed": 2, "hash": "11111111"}]})
    store.write_sweep_manifest("s2", {"created_at": 2, "cells": [{"config": "train", "seed": 2, "hash": "67982b0b"}]})
    cells = store.expected_cells()
    assert sorted((c["config"], c["hash"]) for c in cells) == [
        ("train,alg=a,env=x", "11111111"), ("train,alg=b,env=x", "67982b0b")]


def test_an_index_that_cannot_be_opened_is_served_from_memory(tmp_path):
    """A store this process cannot write the index of (a read-only mount; here the index path is a
    folder, which sqlite cannot open even as root): lookups still find every run directory."""
    store = Store(tmp_path)
    rd = store.run_dir("a,k=1", 0, "abcd1234")
    rd.ensure_spec({"config": "a,k=1", "seed": 0, "hash": "abcd1234", "run_config": {}})
    (tmp_path / INDEX_NAME).mkdir()
    assert Store(tmp_path).locate("a", 0, "abcd1234").path == rd.path
    assert (tmp_path / INDEX_NAME).is_dir()  # nothing of the user's replaced
