"""Code fingerprints (core/code_fingerprint.py): which code computed a cell, recorded in spec.json and
compared at plan time. The fingerprint is a content hash of the code that trains (never tests or
docs), the same in a git checkout and in an installed copy; a cell computed by other code is
refused (default), rerun or accepted (sweep.code_change). The end-to-end test runs a tiny real
sweep from a non-git copy of the project, changes the copy's trainer, and plans again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from safedreamer_sweep.core import identity
from safedreamer_sweep.core.code_fingerprint import CodeFilesError, absolute_code_globs, code_fingerprint, recorded_fingerprint
from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = {"task": {"kind": "builtin"}}


def _external(code, cwd=None) -> dict:
    return {"task": {"kind": "external", "code": code, "cwd": cwd}}


# ----------------------------------------------------------------------------- the fingerprint


def test_builtin_fingerprint_is_the_trainer_files_content_wherever_they_are(tmp_path):
    """A copy of the trainer's files outside git hashes to the package's fingerprint: the hash is
    over content and paths relative to the files' folder, not over a commit or an absolute path."""
    ours = code_fingerprint(BUILTIN)
    assert len(ours["fingerprint"]) == 12 and ours["files"] >= 5 and "safedreamer_sweep/trainer/*.py" in ours["of"]
    copy = tmp_path / "installed" / "trainer"
    shutil.copytree(ROOT / "safedreamer_sweep" / "trainer", copy, ignore=shutil.ignore_patterns("__pycache__"))
    theirs = code_fingerprint(_external([str(copy / "*.py")]))
    assert theirs["fingerprint"] == ours["fingerprint"]
    assert theirs["uncommitted"] is None  # not a git checkout: nothing to compare with
    (copy / "ppo_lag.py").write_text((copy / "ppo_lag.py").read_text() + "# a change\n")
    assert code_fingerprint(_external([str(copy / "*.py")]))["fingerprint"] != ours["fingerprint"]


# Every stored built-in cell records this. It has been the trainer's fingerprint since 3619e38 (2026-12-01):
# a store written by any release since then plans its finished built-in cells `done` under this code.
BUILTIN_FINGERPRINT = "1dfe4cfbfeb1"


def test_the_builtin_trainer_fingerprint_changes_only_on_purpose():
    """An edit of trainer/*.py, even one that changes no number (an import line, a rename, a lint fix),
    changes the fingerprint, and then every built-in cell in every user's store plans `code-changed`
    after an upgrade: they must pass sweep.code_change=accept or train again. So the fingerprint is
    pinned: change it here only with a change to what the trainer computes, and say so in the release note."""
    got = code_fingerprint(BUILTIN)["fingerprint"]
    assert got == BUILTIN_FINGERPRINT, (
        f"the built-in trainer's code fingerprint is {got}, not {BUILTIN_FINGERPRINT}: an edit of "
        "safedreamer_sweep/trainer/*.py re-labels every stored built-in cell as computed by other code. "
        "Fix: revert an edit that does not change what the trainer computes; if it does, update "
        "BUILTIN_FINGERPRINT and say in the release note that stored built-in cells plan code-changed")


def test_external_code_globs_start_at_task_cwd_and_a_glob_matching_nothing_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('v1')\n")
    (tmp_path / "src" / "configs.yaml").write_text("a: 1\n")
    fp = code_fingerprint(_external(["*.py", "configs.yaml"], cwd=str(tmp_path / "src")))
    assert fp["files"] == 2 and fp["of"] == "task.code: *.py, configs.yaml"
    assert absolute_code_globs(_external(["*.py"], cwd=str(tmp_path / "src"))) == [str(tmp_path / "src" / "*.py")]
    (tmp_path / "src" / "configs.yaml").write_text("a: 2\n")
    assert code_fingerprint(_external(["*.py", "configs.yaml"], cwd=str(tmp_path / "src")))["fingerprint"] \
        != fp["fingerprint"]
    with pytest.raises(CodeFilesError, match=r"task.code: '.*nope/\*\.py' matches no file.*Fix"):
        code_fingerprint(_external(["nope/*.py"], cwd=str(tmp_path)))
    assert code_fingerprint(_external([]))["fingerprint"] is None  # nothing declared: never compared


def test_the_shipped_external_task_declares_its_code_and_it_is_not_part_of_the_identity(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.chdir(ROOT)  # relative task.code globs start where the sweep is launched
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("sweep", overrides=["hydra/launcher=basic", "task=external"])
        other = compose("sweep", overrides=["hydra/launcher=basic", "task=external", "task.code=[tests/*.py]"])
    spec = identity.RunSpec.from_cfg(cfg, config_name="v2_baseline")
    assert spec.code["of"] == "task.code: tests/fake_safedreamer.py" and spec.code["files"] == 1
    assert spec.code["fingerprint"] == code_fingerprint(_external([str(ROOT / "tests" / "fake_safedreamer.py")]))[
        "fingerprint"]
    assert identity.RunSpec.from_cfg(other, config_name="v2_baseline").hash == spec.hash  # which files: not identity


# ----------------------------------------------------------------------------- a run dir whose code changed


def _done_cell(tmp_path, fingerprint: str) -> tuple[RunDir, dict]:
    rd = RunDir(tmp_path / "runs" / "v2_full" / "seed_0" / "abcd1234")
    spec = {"config": "v2_full", "seed": 0, "hash": "abcd1234", "run_config": {},
            "code": {"fingerprint": fingerprint, "commit": "1111111", "uncommitted": False}}
    rd.ensure_spec(spec)
    rd.save_checkpoint(1024, {"x": 1})
    rd.write_eval("id", {"summary": {}})
    rd.update_state(lambda s: s.update(trained=True, trained_steps=1024, phase="done"))
    return rd, spec


def _new_spec(spec: dict, policy: str) -> dict:
    return {**spec, "code": {"fingerprint": "bbbbbbbbbbbb", "commit": "2222222", "uncommitted": True},
            "code_change": policy}


def test_a_cell_process_refuses_to_mix_code_naming_both_fingerprints(tmp_path):
    rd, spec = _done_cell(tmp_path, "aaaaaaaaaaaa")
    with pytest.raises(StoreError, match=r"aaaaaaaaaaaa \(commit 1111111\).*bbbbbbbbbbbb \(commit 2222222 \+ "
                                         r"uncommitted changes\).*Fix: .*sweep.code_change=rerun"):
        rd.ensure_spec(_new_spec(spec, "refuse"))
    assert rd.read_spec()["code"]["fingerprint"] == "aaaaaaaaaaaa"
    rd.ensure_spec({**spec, "code_change": "refuse"})  # the same code: nothing happens
    assert "code_change" not in json.loads(rd.spec_path.read_text())


def test_rerun_moves_the_old_work_aside_and_accept_records_the_new_code(tmp_path):
    rd, spec = _done_cell(tmp_path / "a", "aaaaaaaaaaaa")
    rd.ensure_spec(_new_spec(spec, "rerun"))
    (moved,) = (rd.path / "superseded").iterdir()
    assert moved.name.endswith("code-aaaaaaaaaaaa")
    assert json.loads((moved / "spec.json").read_text())["code"]["fingerprint"] == "aaaaaaaaaaaa"
    assert (moved / "eval" / "id.json").is_file() and (moved / "checkpoints").is_dir()
    assert not rd.checkpoints() and not rd.eval_path("id").exists() and not rd.read_state().get("trained")
    new = rd.read_spec()
    assert new["code"]["fingerprint"] == "bbbbbbbbbbbb" and new["supersedes"]["code"]["fingerprint"] == "aaaaaaaaaaaa"

    rd, spec = _done_cell(tmp_path / "b", "aaaaaaaaaaaa")
    rd.ensure_spec(_new_spec(spec, "accept"))
    kept = rd.read_spec()
    assert kept["code"]["fingerprint"] == "aaaaaaaaaaaa" and rd.eval_path("id").exists()
    assert [a["fingerprint"] for a in kept["code_accepted"]] == ["bbbbbbbbbbbb"]
    assert recorded_fingerprint(kept) == "bbbbbbbbbbbb"
    rd.ensure_spec(_new_spec(spec, "refuse"))  # the accepted code is now the cell's: no refusal


def test_a_run_dir_without_work_takes_the_new_code(tmp_path):
    rd = RunDir(tmp_path / "run")
    spec = {"config": "c", "seed": 0, "hash": "abcd1234", "run_config": {}, "code": {"fingerprint": "aaaaaaaaaaaa"}}
    rd.ensure_spec(spec)
    rd.ensure_spec(_new_spec(spec, "refuse"))
    assert rd.read_spec()["code"]["fingerprint"] == "bbbbbbbbbbbb"


# ----------------------------------------------------------------------------- end to end, from a non-git copy


def _project_copy(dst: Path) -> Path:
    """The package, its Hydra plugin and conf/ outside any git checkout (as an installed copy is)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("safedreamer_sweep", "hydra_plugins", "conf"):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)
    (dst / "README.md").write_text("docs\n")
    (dst / "tests").mkdir()
    (dst / "tests" / "test_nothing.py").write_text("def test_x():\n    pass\n")
    return dst


def _sweep(proj: Path, store: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(proj), "SDS_CODE_VERSION": "copy-v1"}
    env.pop("SDS_STORE", None)
    cmd = [sys.executable, "-m", "safedreamer_sweep", "-m", "hydra/launcher=sds_local", "config=v2_baseline",
           "seed=0", f"store.root={store}", *TINY, "hydra.launcher.poll_s=0.5", *extra]
    return subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_changing_the_trainer_after_a_finished_sweep_makes_the_next_plan_refuse_naming_both(tmp_path):
    proj, store = _project_copy(tmp_path / "proj"), tmp_path / "store"
    done = _sweep(proj, store)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = store.glob("runs/v2_baseline/seed_0/*")
    code = json.loads((run / "spec.json").read_text())["code"]
    assert code["commit"] == "copy-v1" and code["uncommitted"] is None  # the copy's code, not the checkout's
    first = code["fingerprint"]

    # tests and docs change: the same code, the cell is done
    (proj / "README.md").write_text("new docs\n")
    (proj / "tests" / "test_nothing.py").write_text("def test_y():\n    pass\n")
    same = _sweep(proj, store, "hydra.launcher.dry_run=true")
    assert same.returncode == 0 and "done 1" in same.stdout, same.stdout[-2000:] + same.stderr[-2000:]

    # the trainer changes: refused, naming the cell and both fingerprints
    ppo = proj / "safedreamer_sweep" / "trainer" / "ppo_lag.py"
    ppo.write_text(ppo.read_text() + "\n# a bug fix\n")
    refused = _sweep(proj, store, "hydra.launcher.dry_run=true")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out[-3000:]
    second = code_fingerprint(_external([str(proj / "safedreamer_sweep" / "trainer" / "*.py")]))["fingerprint"]
    assert second != first
    assert "refusing to launch: 1 cell(s) hold work computed by other code" in out, out[-3000:]
    assert f"v2_baseline seed 0 [{run.name}]: its work was computed by code {first} (commit copy-v1)" in out
    assert f"this code is {second}" in out and "sweep.code_change=rerun" in out
    assert not (run / "superseded").exists()  # a refused plan writes nothing

    accepted = _sweep(proj, store, "sweep.code_change=accept")  # done: nothing runs, the acceptance is recorded
    assert accepted.returncode == 0 and "accepted (sweep.code_change=accept)" in accepted.stdout, accepted.stdout[-2000:]
    manifest = max((json.loads(m.read_text()) for m in (store / "sweeps").glob("*.json")), key=lambda d: d["created_at"])
    (cell,) = manifest["cells"]
    assert cell["verdict"] == "done" and cell["code_change"]["code_change"] == "accept"
    assert (cell["code_change"]["recorded"]["fingerprint"], cell["code_change"]["now"]["fingerprint"]) == (first, second)

    rerun = _sweep(proj, store, "sweep.code_change=rerun")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "rerun 1" in rerun.stdout
    (moved,) = (run / "superseded").iterdir()
    assert json.loads((moved / "spec.json").read_text())["code"]["fingerprint"] == first
    assert json.loads((run / "spec.json").read_text())["code"]["fingerprint"] == second
    assert json.loads((run / "state.json").read_text())["phase"] == "done" and (run / "eval" / "ood.json").is_file()


# ----------------------------------------------------------------------------- what the report says


def test_the_reports_first_warning_lists_which_cells_came_from_which_code(tmp_path):
    from safedreamer_sweep.core.files import atomic_write_json
    from safedreamer_sweep.report.build import compute_report
    from safedreamer_sweep.report.synthetic import write_store

    cell = {"id_returns": [10.0, 11.0], "id_costs": [5.0, 6.0], "ood_returns": [8.0, 9.0], "ood_costs": [7.0, 8.0]}
    store = write_store(tmp_path / "store", {"v2_baseline": lambda s: cell, "v2_full": lambda s: cell}, [0, 1])
    old = {"fingerprint": "aaaaaaaaaaaa", "commit": "1111111", "uncommitted": False}
    new = {"fingerprint": "bbbbbbbbbbbb", "commit": "2222222", "uncommitted": False}
    for rd in store.iter_runs():
        spec = rd.read_spec()
        spec["run_config"]["task"] = {"kind": "builtin"}
        spec["code"] = old if (spec["config"], spec["seed"]) != ("v2_full", 1) else new
        if (spec["config"], spec["seed"]) == ("v2_baseline", 1):  # resumed under accepted code
            spec["code_accepted"] = [{**new, "at": 0.0}]
        atomic_write_json(rd.spec_path, spec)
    report = compute_report(store.root)
    first = report.warnings[0]
    assert first.kind == "code", [w.kind for w in report.warnings]
    assert "3 different versions" in first.text
    assert "code aaaaaaaaaaaa (commit 1111111): v2_baseline seed 0, v2_full seed 0" in first.text
    assert "code bbbbbbbbbbbb (commit 2222222): v2_full seed 1" in first.text
    assert "aaaaaaaaaaaa (commit 1111111) then bbbbbbbbbbbb (commit 2222222): v2_baseline seed 1" in first.text
    policy = [w.text for w in report.warnings if w.kind == "policy"]
    assert len(policy) == 1 and "stochastic policy" in policy[0] and "deterministic policy" in policy[0]

    for rd in store.iter_runs():  # one code again: no code warning
        atomic_write_json(rd.spec_path, {**rd.read_spec(), "code": old, "code_accepted": []})
    assert [w for w in compute_report(store.root).warnings if w.kind == "code"] == []
