"""A store outlives the version that wrote it (core/store_format.py, core/migrations.py): a store of
an older format is brought forward in place, backed up, idempotent and crash-safe; one of a newer
format is refused by name. The stores here are written as format 1 wrote them (no store.json, an app's
cells hashed without their app); tests/test_old_stores.py reads back stores built by the real code of
earlier commits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safedreamer_sweep.core.files import StoreError, atomic_write_bytes, atomic_write_json, read_json
from safedreamer_sweep.core.identity import config_hash, identity_hash
from safedreamer_sweep.core.migrations import migrate, needs_migration
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.core.store_format import FORMAT, StoreFormatError, read_format

ROOT = Path(__file__).resolve().parents[1]
APP = "git:0123456789ab:examples/any_app/app.py"
OTHER_APP = "git:feedfeedfeed:other.py"


def NO_SWEEP(rd: RunDir) -> None:
    return None


def _app_rc(lr: float, seed: int) -> dict:
    return {"lr": lr, "seed": seed, "steps": 60, "step_sleep": 0, "fail_at": -1}  # as stored: normalized


def legacy_store(root: Path, *, lrs=(0.01, 0.1), seeds=(0, 1), builtin: bool = True) -> dict[str, Path]:
    """A store as format 1 left it: any-app cells hashed from their run config alone, a built-in cell,
    a sweep manifest naming them, no store.json. Returns label/seed -> run dir."""
    out: dict[str, Path] = {}
    cells = []
    for lr in lrs:
        for seed in seeds:
            rc = _app_rc(lr, seed)
            label, h = f"app,lr={lr}", config_hash(rc)
            rd = RunDir(root / "runs" / label / f"seed_{seed}" / h)
            rd.path.mkdir(parents=True)
            atomic_write_json(rd.spec_path, {"config": label, "seed": seed, "hash": h, "done_when": "return",
                                             "run_config": rc, "overrides": [f"lr={lr}", f"seed={seed}"],
                                             "code": {"fingerprint": None}})
            rd.update_state(lambda s: s.update({"phase": "done", "attempts": [
                {"n": 1, "outcome": "done", "started_at": 1.0, "ended_at": 2.0, "host": "h", "pid": 1}]}))
            atomic_write_bytes(rd.path / "result.pkl", b"result-of-" + label.encode())
            out[f"{label}/{seed}"] = rd.path
            cells.append({"config": label, "seed": seed, "hash": h, "done_when": "return"})
    if builtin:
        rc = {"task": {"kind": "builtin"}, "seed": 0, "agent": {"lr": 0.0003}}
        h = config_hash(rc)
        rd = RunDir(root / "runs" / "v2_baseline" / "seed_0" / h)
        rd.path.mkdir(parents=True)
        atomic_write_json(rd.spec_path, {"config": "v2_baseline", "seed": 0, "hash": h, "done_when": "eval",
                                         "run_config": rc, "overrides": ["config=v2_baseline", "seed=0"]})
        rd.update_state(lambda s: s.update({"phase": "done", "attempts": [{"n": 1, "outcome": "done"}]}))
        out["v2_baseline/0"] = rd.path
    atomic_write_json(root / "sweeps" / "20261201-000000-1.json",
                      {"id": "20261201-000000-1", "created_at": 1.0, "cells": cells,
                       "jobs": {f"{c['config']}/seed_{c['seed']}/{c['hash']}": ["123"] for c in cells}})
    assert not (root / "store.json").exists()
    return out


def test_a_store_from_before_app_identity_is_brought_forward_with_the_launching_app(tmp_path):
    before = legacy_store(tmp_path)
    assert read_format(tmp_path) == 1 and needs_migration(tmp_path)
    said: list[str] = []
    done = migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app", say=said.append)
    assert done is not None and (done.from_format, done.to_format) == (1, FORMAT)
    assert len(done.migrated) == 4 and done.manifests == ["sweeps/20261201-000000-1.json"] and not done.pending
    assert said == [f"[sds] {done.line()}"] and f"store format 1 -> {FORMAT}: 4 run dir(s) migrated" in said[0]
    store = Store(tmp_path)
    for lr in (0.01, 0.1):
        for seed in (0, 1):
            rc = _app_rc(lr, seed)
            new = identity_hash(rc, APP)
            rd = store.locate(f"app,lr={lr}", seed, new, rc)
            assert rd.path.name == new and rd.path.exists(), "the cell is found under today's identity"
            spec = rd.read_spec()
            assert spec["app"] == APP and spec["hash"] == new and spec["migrated"][0]["hash"] == config_hash(rc)
            assert rd.read_state()["phase"] == "done" and len(rd.read_state()["attempts"]) == 1
            assert (rd.path / "result.pkl").read_bytes() == f"result-of-app,lr={lr}".encode()
            assert not before[f"app,lr={lr}/{seed}"].exists()
            original = tmp_path / "migrations" / "1-2" / "runs" / f"app,lr={lr}" / f"seed_{seed}" / config_hash(rc) / "spec.json"
            assert "app" not in read_json(original), "the original spec.json is kept"
    assert before["v2_baseline/0"].exists(), "a built-in cell's identity did not change: left in place"
    manifest = read_json(tmp_path / "sweeps" / "20261201-000000-1.json")
    assert {c["hash"] for c in manifest["cells"]} == {identity_hash(_app_rc(lr, s), APP) for lr in (0.01, 0.1) for s in (0, 1)}
    assert all(k.rsplit("/", 1)[1] in {c["hash"] for c in manifest["cells"]} for k in manifest["jobs"])
    assert read_json(tmp_path / "store.json")["format"] == FORMAT and not needs_migration(tmp_path)
    assert migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app") is None, "a second open has nothing to do"


def test_cells_of_another_app_wait_for_their_app_and_then_migrate(tmp_path):
    legacy_store(tmp_path, lrs=(0.01,), seeds=(0,), builtin=False)
    done = migrate(tmp_path, held=NO_SWEEP, app=OTHER_APP, app_label="other")
    assert done is not None and not done.migrated and done.pending == ["runs/app,lr=0.01/seed_0/" + config_hash(_app_rc(0.01, 0))]
    assert "left as they are until that app's sweep opens the store" in done.line()
    assert read_format(tmp_path) == FORMAT and needs_migration(tmp_path), f"format {FORMAT}, one cell pending"
    done = migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app")
    assert done is not None and len(done.migrated) == 1 and not done.pending and not needs_migration(tmp_path)


def test_a_store_of_a_newer_format_is_refused_by_name_and_left_as_it_is(tmp_path):
    legacy_store(tmp_path, lrs=(0.01,), seeds=(0,))
    atomic_write_json(tmp_path / "store.json", {"format": FORMAT + 5, "history": []})
    before = _tree(tmp_path)
    for attempt in (lambda: Store(tmp_path), lambda: migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app")):
        with pytest.raises(StoreFormatError, match=rf"written by store format {FORMAT + 5}; this version of "
                                                   rf"safedreamer-sweep reads up to format {FORMAT}.*Fix: upgrade"):
            attempt()
    p = subprocess.run([sys.executable, "-m", "safedreamer_sweep.commands.cli", "status", str(tmp_path)],
                       capture_output=True, text=True, check=False, timeout=120)
    assert p.returncode != 0 and f"format {FORMAT + 5}" in p.stdout + p.stderr and "Traceback" not in p.stdout + p.stderr, \
        p.stdout + p.stderr
    assert _tree(tmp_path) == before, "nothing read half or rewritten"


def test_a_new_store_records_its_format_and_an_old_one_is_not_marked_by_a_new_cell(tmp_path):
    new = Store(tmp_path / "new")
    new.run_dir("v2_baseline", 0, "aaaaaaaa").ensure_spec({"config": "v2_baseline", "seed": 0, "hash": "aaaaaaaa"})
    assert read_json(tmp_path / "new" / "store.json")["format"] == FORMAT
    old = tmp_path / "old"
    legacy_store(old, lrs=(0.01,), seeds=(0,))
    Store(old).run_dir("v2_full", 0, "bbbbbbbb").ensure_spec({"config": "v2_full", "seed": 0, "hash": "bbbbbbbb"})
    assert not (old / "store.json").exists() and read_format(old) == 1, "an old store waits for its migration"


def test_a_hand_made_run_dir_whose_hash_is_not_ours_is_never_renamed(tmp_path):
    rd = RunDir(tmp_path / "runs" / "train" / "aaaaaaaa")
    rd.path.mkdir(parents=True)
    atomic_write_json(rd.spec_path, {"config": "train", "seed": None, "hash": "aaaaaaaa", "done_when": "return"})
    done = migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="train")
    assert done is not None and not done.migrated and rd.path.exists() and read_format(tmp_path) == FORMAT


@pytest.mark.parametrize("start", ["format-1", "pending-app-cells", "format-2", "format-2-pending"])
def test_a_sigkill_at_any_write_then_a_rerun_ends_as_an_uninterrupted_migration(tmp_path, start):
    """A format-1 store, one whose app cells wait for their app (migrated by another app's sweep
    first), a format-2 store, and one of format 2 with app cells pending: killed before any write of
    the migration, then migrated again, each ends as uninterrupted."""
    pending = start.endswith("pending") or start == "pending-app-cells"

    def old_store(root: Path) -> None:
        legacy_store(root)
        if pending:
            assert migrate(root, held=NO_SWEEP, app=OTHER_APP, app_label="other").pending
        if start.startswith("format-2"):
            if not pending:
                migrate(root, held=NO_SWEEP, app=APP, app_label="app")
            as_format_2(root)

    reference = tmp_path / "reference"
    old_store(reference)
    _migrate_in_child(reference, kill_at=None)
    want = _tree(reference)
    kills = 0
    for k in range(1, 40):
        store = tmp_path / f"killed-{k}"
        old_store(store)
        code = _migrate_in_child(store, kill_at=k)
        if code == 0:  # fewer writes than k: every kill point was covered
            assert _tree(store) == want
            break
        assert code == -signal.SIGKILL
        kills += 1
        assert _migrate_in_child(store, kill_at=None) == 0
        assert _tree(store) == want, f"killed before write {k}, then re-run: not the uninterrupted store"
    least = {"format-1": 10, "pending-app-cells": 8, "format-2": 1, "format-2-pending": 8}[start]
    assert kills >= least, f"only {kills} kill points: the migration writes less than expected"


def _migrate_in_child(store: Path, kill_at: int | None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SDS_MIGRATE_KILL_AT", None)
    if kill_at is not None:
        env["SDS_MIGRATE_KILL_AT"] = str(kill_at)
    code = (f"from safedreamer_sweep.core.migrations import migrate; "
            f"migrate({str(store)!r}, held=lambda rd: None, app={APP!r}, app_label='app')")
    return subprocess.run([sys.executable, "-c", code], env=env, check=False, timeout=120).returncode


def _tree(root: Path) -> dict[str, object]:
    """Every file under root (but locks and the index cache), JSON documents without their timestamps."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or p.name in (".migrate.lock", ".lock", "index.stale", "index.sqlite") or p.name.endswith(".tmp"):
            continue
        out[rel] = _without_times(json.loads(p.read_text())) if p.suffix == ".json" else p.read_bytes()
    return out


def _without_times(x: object) -> object:
    if isinstance(x, dict):
        return {k: _without_times(v) for k, v in x.items() if k not in ("at", "created_at", "by", "updated_at")}
    if isinstance(x, list):
        return [_without_times(v) for v in x]
    return x


def test_a_cell_a_live_sweep_holds_is_not_migrated_under_it(tmp_path):
    from safedreamer_sweep.core.run_dir import host
    from safedreamer_sweep.sweep.claim import live_holder

    cells = legacy_store(tmp_path, lrs=(0.01,), seeds=(0,), builtin=False)
    rd = RunDir(cells["app,lr=0.01/0"])
    atomic_write_json(rd.claim_path, {"sweep_id": "s-live", "host": host(), "pid": os.getpid(), "backend": "local",
                                      "generation": 1, "lease_s": 60})
    before = _tree(tmp_path)
    with pytest.raises(StoreError, match=r"sweep s-live: launcher pid \d+ on .* is alive.*cannot be migrated under it.*"
                                         r"Fix: let that sweep end"):
        migrate(tmp_path, held=lambda r: live_holder(r, stall_after=600.0), app=APP, app_label="app")
    assert _tree(tmp_path) == before and read_format(tmp_path) == 1, "nothing changed"


def test_doctor_reports_the_store_format(tmp_path):
    from safedreamer_sweep.commands.doctor import check_store_format

    legacy_store(tmp_path / "old", lrs=(0.01,), seeds=(0,))
    old = check_store_format(tmp_path / "old")
    assert old.status == "warn" and f"store format 1, older than this version's {FORMAT}" in old.detail
    assert old.data["needs_migration"] and "safedreamer-sweep migrate" in old.fix
    migrate(tmp_path / "old", held=NO_SWEEP, app=APP, app_label="app")
    assert check_store_format(tmp_path / "old").status == "ok"
    shutil.copytree(tmp_path / "old", tmp_path / "newer")
    atomic_write_json(tmp_path / "newer" / "store.json", {"format": 99})
    newer = check_store_format(tmp_path / "newer")
    assert newer.status == "fail" and "format 99" in newer.detail


def as_format_2(root: Path) -> None:
    """The store as the format-2 code (492b99a .. 6e9e943) left it: its store.json says format 2 and
    its history ends at 2 (spec.json `migrated[]` records `to_format` 2 either way)."""
    doc = read_json(root / "store.json")
    history = [{**h, "to": 2} for h in doc.get("history", []) if h.get("to") == FORMAT]
    for h in history:
        h.pop("steps", None)
    atomic_write_json(root / "store.json", {**doc, "format": 2, "history": history})


def test_a_format_2_store_is_brought_to_format_3_by_recording_it_and_says_so_once(tmp_path):
    """Format 3 adds studies/ and the phase `pruned`: a format-2 store holds neither, so the step
    rewrites nothing (no run dir, no manifest, no backup) and records the format; said once."""
    legacy_store(tmp_path)
    migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app")
    as_format_2(tmp_path)
    before = {k: v for k, v in _tree(tmp_path).items() if k != "store.json"}
    assert read_format(tmp_path) == 2 and needs_migration(tmp_path)
    said: list[str] = []
    done = migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app", say=said.append)
    assert done is not None and (done.from_format, done.to_format) == (2, 3) and not done.migrated
    assert said == [f"[sds] {done.line()}"] and said[0].startswith("[sds] store format 2 -> 3: 0 run dir(s) migrated")
    assert "studies/<name>/" in said[0] and "pruned" in said[0] and "nothing of it to rewrite" in said[0]
    assert {k: v for k, v in _tree(tmp_path).items() if k != "store.json"} == before, "nothing but store.json written"
    doc = read_json(tmp_path / "store.json")
    assert doc["format"] == 3 and doc["history"][-1]["from"] == 2 and doc["history"][-1]["steps"] == ["2-3"]
    assert [h["to"] for h in doc["history"]] == [2, 3], "the 1 -> 2 line of the format-2 code is kept"
    assert not (tmp_path / "migrations" / "2-3").exists()
    again: list[str] = []
    assert migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app", say=again.append) is None and not again
    assert not needs_migration(tmp_path)


def test_a_format_1_store_goes_to_3_in_one_migration_whose_1_2_step_keeps_its_records(tmp_path):
    legacy_store(tmp_path, lrs=(0.01,), seeds=(0,))
    done = migrate(tmp_path, held=NO_SWEEP, app=APP, app_label="app")
    assert done is not None and (done.from_format, done.to_format) == (1, 3) and len(done.migrated) == 1
    spec = read_json(tmp_path / done.migrated[0] / "spec.json")
    assert spec["migrated"][0]["to_format"] == 2, "the re-hash is the 1 -> 2 step's, whatever FORMAT is now"
    assert (tmp_path / "migrations" / "1-2").is_dir() and not (tmp_path / "migrations" / "1-3").exists()
    assert read_json(tmp_path / "store.json")["history"][-1]["steps"] == ["1-2", "2-3"]
