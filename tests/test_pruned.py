"""A cell its study's pruner stopped (issue 30) is `pruned` everywhere a cell's phase is read, and never
`failed`: observe, the supervisor's classification, the plan (it resumes from its checkpoint when asked
again), `status` (text and --json), the report's coverage, warnings and cost. The cells are made by
hand in a tmp store through the RunDir API, as the supervisor writes them (attempt_end.close_pruned)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode

from safedreamer_sweep.commands import status
from safedreamer_sweep.commands.cli import main as cli_main
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.attempt_end import close_attempt, close_pruned
from safedreamer_sweep.sweep.compose import job_spec
from safedreamer_sweep.sweep.failures import RetryPolicy, classify_failure
from safedreamer_sweep.sweep.observe import observe_run
from safedreamer_sweep.sweep.plan import plan_cells

ROOT = Path(__file__).resolve().parent.parent
STUDY = "lr-search"
H = 3600.0


class Loader:
    """Hydra's real config loader; every job's overrides carry store.root (as in test_plan.py)."""

    def __init__(self, root: Path):
        self.real = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
        self.root = root

    def load_sweep_config(self, master, overrides):
        return self.real.load_sweep_config(master, [f"store.root={self.root}", *overrides])


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_cell(loader: Loader, master, seed: int) -> RunDir:
    spec, cfg = job_spec(loader, master, ["config=v2_full", f"seed={seed}"])
    rd = Store(cfg.store.root).run_dir(spec.config, spec.seed, spec.hash)
    rd.ensure_spec(spec.spec_document())
    return rd


def an_hour_ago(rd: RunDir) -> None:
    """The newest attempt ran for one hour on one GPU (so its device-hours are known)."""
    def change(s: dict) -> None:
        s["attempts"][-1].update(started_at=time.time() - H, ended_at=time.time(), resources={"gpus": 1, "cpus": 2})
    rd.update_state(change)


def prune(rd: RunDir, trial: int, step: int | None, checkpoint: bool) -> None:
    """What the supervisor does when the pruner stops a cell: the attempt closed pruned, phase pruned."""
    rd.begin_attempt(pid=dead_pid())
    if checkpoint:
        rd.save_checkpoint(step or 0, {"w": 1})
    rd.heartbeat(step or 0, 16384)
    close_pruned(rd, study=STUDY, trial=trial, env_step=step)
    an_hour_ago(rd)


@pytest.fixture
def study_store(tmp_path):
    """v2_full seed 0 done, seeds 1 and 2 pruned (with and without a checkpoint), seed 3 failed."""
    loader = Loader(tmp_path)
    master = loader.real.load_configuration("sweep", overrides=[f"store.root={tmp_path}"], run_mode=RunMode.MULTIRUN)
    done = make_cell(loader, master, 0)
    done.begin_attempt()
    done.update_state(lambda s: s.update(trained=True, trained_steps=16384))
    for k in ("id", "ood"):
        done.write_eval(k, {"summary": {"return_mean": 1.0, "cost_mean": 1.0}, "episodes": []})
    done.end_attempt("done")
    done.set_phase("done")
    an_hour_ago(done)
    prune(make_cell(loader, master, 1), trial=4, step=4096, checkpoint=True)
    prune(make_cell(loader, master, 2), trial=5, step=2048, checkpoint=False)
    failed = make_cell(loader, master, 3)
    failed.begin_attempt()
    failed.end_attempt("failed", cause="error", evidence="ValueError: boom")
    failed.set_phase("failed")
    an_hour_ago(failed)
    return tmp_path, loader, master


def rd_of(store: Path, seed: int) -> RunDir:
    (rd,) = Store(store).find("v2_full", seed)
    return rd


def test_observe_reads_a_pruned_cell_as_pruned_never_failed_stalled_or_lost(study_store):
    store, _, _ = study_store
    v = observe_run(rd_of(store, 1), stall_after=0.0)
    assert (v.phase, v.cause, v.pruned_at, v.pruned_by) == ("pruned", None, 4096, {"study": STUDY, "trial": 4})
    assert v.detail.startswith(f"pruned by study {STUDY} trial 4 at env step 4096; stopped early on purpose")
    rd = rd_of(store, 2)
    rd.set_phase("failed")  # a supervisor that wrote failed over it: the attempt's outcome is the record
    assert observe_run(rd, stall_after=600.0).phase == "pruned"
    # killed by its pruner, attempt not closed yet (phase first): pruned, not lost
    rd.begin_attempt(pid=dead_pid())
    rd.set_phase("pruned")
    assert observe_run(rd, stall_after=600.0).phase == "pruned"
    # planned again and queued: no longer pruned
    rd.update_state(lambda s: s["attempts"][-1].update(outcome="submitted"))
    assert observe_run(rd, stall_after=600.0).phase == "pending"


def test_the_supervisors_classification_never_calls_a_pruned_attempt_a_failure(study_store):
    store, _, _ = study_store
    cause, evidence = classify_failure({"pruned": "pruned by study s trial 1 at env step 8", "signal": int(signal.SIGKILL),
                                        "stalled": True})
    assert (cause, evidence) == ("pruned", "pruned by study s trial 1 at env step 8")
    rd = rd_of(store, 1)
    attempts = rd.read_state()["attempts"]
    act = RetryPolicy(max_attempts=1).decide(cause, attempts)
    assert act.kind == "pruned" and "not a failure" in act.reason
    assert RetryPolicy().counted_attempts(attempts) == 0, "a pruned attempt does not use up max_attempts"
    state = close_attempt(rd, attempts[-1], "lost", "pid gone", None)  # a classification that came too late
    assert state["attempts"][-1]["outcome"] == "pruned" and state["attempts"][-1]["cause"] is None


def test_a_pruned_cell_planned_again_resumes_from_its_checkpoint_with_the_reason(study_store):
    _, loader, master = study_store
    jobs = [["config=v2_full", f"seed={s}"] for s in range(4)]
    cells = plan_cells(jobs, config_loader=loader, config=master, stall_after=60, sweep_id="me", log=lambda m: None)
    assert [c.verdict for c in cells] == ["done", "resume", "new", "failed"]
    assert cells[1].reason == (f"pruned by study {STUDY} trial 4 at env step 4096; resumed because asked again "
                               f"(checkpoint at env_step 4096)")
    assert cells[2].reason.startswith(f"pruned by study {STUDY} trial 5 at env step 2048; asked again, it starts "
                                      f"from scratch")
    assert all("fail" not in c.reason for c in cells[1:3])


def test_status_text_and_json_show_pruned_apart_and_never_claim_done(study_store, capsys):
    from rich.console import Console

    store, _, _ = study_store
    doc = status.collect(store, sample_cpu=False)
    assert doc["verdict"].startswith("INCOMPLETE: 1 failed: v2_full seed 3 (error)")
    assert doc["verdict"].endswith(f"; 2 pruned (study {STUDY})") and "DONE" not in doc["verdict"]
    assert doc["counts"]["pruned"] == 2 and doc["counts"]["failed"] == 1 and not doc["finished"]
    console = Console(width=220, record=True)
    console.print(status.status_view(doc))
    text = console.export_text()
    assert "✂ pruned 25%" in text and "✂ pruned 12%" in text and f"pruned by study {STUDY} trial 4" in text
    assert "pruned" in text.split("device-hours")[1], "the cost table has a pruned column"
    capsys.readouterr()
    code = cli_main(["status", str(store), "--json"])
    js = json.loads(capsys.readouterr().out)
    assert code == 1
    cell = next(c for c in js["cells"] if c["seed"] == 1)
    assert (cell["phase"], cell["cause"], cell["pruned_at"], cell["pruned_by"]) == ("pruned", None, 4096,
                                                                                     {"study": STUDY, "trial": 4})
    assert cell["cost"]["pruned_h"] == pytest.approx(1.0, rel=0.01) and cell["cost"]["wasted_h"] == 0.0
    assert js["cost"]["total"]["gpu"]["pruned_h"] == pytest.approx(2.0, rel=0.01)
    assert js["cost"]["total"]["gpu"]["wasted_h"] == pytest.approx(1.0, rel=0.01), "only the failed cell is wasted"
    text = (ROOT / "docs" / "status-json.md").read_text()
    for k in ("finished", "pruned_at", "pruned_by", "pruned_h", "`pruned`"):
        assert k in text, f"docs/status-json.md does not document {k}"


def test_a_finished_study_store_says_done_with_its_pruned_cells_counted_apart_and_exits_0(study_store):
    store, _, _ = study_store
    import shutil

    shutil.rmtree(rd_of(store, 3).path.parent)  # the failed cell gone: done and pruned cells only
    doc = status.collect(store, sample_cpu=False)
    assert doc["verdict"] == f"DONE 1/3, 2 pruned (study {STUDY})"
    assert doc["finished"] and not doc["all_done"] and status.exit_code(doc) == 0


def test_headline_shapes_with_pruned_cells():
    base = {"attempts": 1, "eta_s": None, "progress_age_s": None, "pid": None, "pid_alive": None, "job_id": None,
            "host": "vm", "cause": None, "state_phase": None, "last_outcome": None, "config": "c", "seed": 0}
    done = {**base, "phase": "done"}
    a = {**base, "phase": "pruned", "pruned_by": {"study": "a", "trial": 1}}
    b = {**base, "phase": "pruned", "pruned_by": {"study": "b", "trial": 2}}
    unknown = {**base, "phase": "pruned", "pruned_by": None}
    running = {**base, "phase": "running", "eta_s": 60.0, "steps_per_s": 10.0, "env_step": 10, "total_steps": 100}
    assert status.headline([done, done]) == "DONE 2/2"
    assert status.headline([done, a, b]) == "DONE 1/3, 2 pruned (studies a, b)"
    assert status.headline([unknown]) == "DONE 0/1, 1 pruned"
    line = status.headline([done, a, running])
    assert line.startswith("RUNNING 1/3 (") and line.endswith("; 1 pruned (study a))")


def test_the_report_shows_a_pruned_cell_as_a_hole_with_cause_pruned_not_a_failure(study_store):
    from safedreamer_sweep.report.build import compute_report, template_context
    from safedreamer_sweep.report.render.html import report_html

    store, _, _ = study_store
    r = compute_report(store)
    cov = r.coverage
    assert set(cov.loc[cov["seed"].isin([1, 2]), "status"]) == {"pruned"}
    cells = r.frames.cells.set_index("seed")
    assert cells.loc[1, "last_cause"] == "pruned" and cells.loc[1, "phase"] == "pruned"
    assert cells.loc[1, "last_evidence"].startswith(f"pruned by study {STUDY} trial 4 at env step 4096")
    kinds = {w.kind: w.text for w in r.warnings}
    assert "v2_full seed 1" in kinds["pruned"] and "not failed" in kinds["pruned"]
    assert "v2_full seed 1" not in kinds["holes"] and "pruned" not in kinds["holes"], "the holes line lists failures"
    assert not any("failed" in w.text and "seed 1" in w.text and w.kind != "pruned" for w in r.warnings)
    assert r.cost["pruned_h"] == pytest.approx(2.0, rel=0.01) and r.cost["wasted_h"] == pytest.approx(1.0, rel=0.01)
    ctx = template_context(r)
    assert any("seed 1 train (pruned)" in h for h in ctx["coverage"].holes)
    page = report_html(r)
    assert '<span class="tag prn">pruned</span>' in page and "✂" in page
    assert "pruned (cells a study&#39;s pruner stopped early)" in page or "pruned (cells a study's pruner" in page


@pytest.mark.parametrize("cell_first", [False, True], ids=["pruner-first", "cell-first"])
def test_the_pruners_record_wins_over_the_cells_own_account_of_the_kill(tmp_path, cell_first):
    """Killed by its pruner with a signal the cell catches, the cell closes its attempt `interrupted`
    (tasks/run.py) before or after the supervisor's close_pruned: either way the attempt stays pruned,
    the cell's account kept beside it, and the cell reads pruned."""
    rd = Store(tmp_path).run_dir("v2_full", 0, "aaaaaaaa")
    rd.ensure_spec({"config": "v2_full", "seed": 0, "hash": "aaaaaaaa"})
    rd.begin_attempt(pid=dead_pid())

    def cell_closes() -> None:
        rd.end_attempt("interrupted", cause="interrupted", evidence="SystemExit / SIGINT")
        rd.set_phase("interrupted")

    if cell_first:
        cell_closes()
    close_pruned(rd, study=STUDY, trial=2, env_step=512)
    if not cell_first:
        cell_closes()
    (a,) = rd.read_state()["attempts"]
    assert (a["outcome"], a["cause"], a["pruned_at"], a["cell_outcome"]) == ("pruned", None, 512, "interrupted")
    assert observe_run(rd, stall_after=600.0).phase == "pruned"
    done = Store(tmp_path).run_dir("v2_full", 1, "bbbbbbbb")
    done.ensure_spec({"config": "v2_full", "seed": 1, "hash": "bbbbbbbb"})
    done.begin_attempt()
    done.end_attempt("done")
    done.set_phase("done")
    close_pruned(done, study=STUDY, trial=3, env_step=9)
    assert done.read_state()["attempts"][-1]["outcome"] == "done", "a cell that finished first is not pruned"
