"""The study in the report and in status (issue 30, item 8), from synthetic studies with known numbers
(report/synthetic.py study_store: an Optuna journal whose trials carry the sds_* attributes of
the search spec). In the default study, trial 4 has the highest return (21.0) but breaks the cost
limit (42 > 25); trial 7 (12.5) is the best feasible one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from safedreamer_sweep.commands import status
from safedreamer_sweep.commands.cli import main as cli_main
from safedreamer_sweep.commands.status.headline import study_line
from safedreamer_sweep.report import build_report
from safedreamer_sweep.report.study import read_studies
from safedreamer_sweep.report.synthetic import STUDY_TRIALS, study_store, write_store

ROOT = Path(__file__).resolve().parents[1]
NO_FIGURES = {"report": {"figures": False}}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The default study's store and its report (with figures)."""
    root = tmp_path_factory.mktemp("study") / "store"
    study_store(root)
    return root, build_report(root)


def test_decision_md_has_the_study_section_and_the_best_feasible_trial(built):
    _, out = built
    md = (out / "decision.md").read_text()
    assert "## 7. Study `lr-search`" in md
    line = ("12 of 12 trials: 9 complete, 2 pruned, 1 failed, 0 running; best feasible: trial 7, id.return_mean "
            "12.50 [CI 6.15, 18.85] over seeds 0,1 at agent.lr=0.003, agent.horizon=16")
    assert f"**Study lr-search**: {line}." in md  # in the lead
    assert f"**{line}**" in md  # and on top of its section
    assert "Best feasible point: trial 7 at agent.lr=0.003, agent.horizon=16" in md
    assert "cost 23.00 against the limit 25 (id.cost_mean)" in md
    # the highest return breaks the limit: shown as infeasible, never as the best
    assert "trial 4," not in md and "best feasible: trial 4" not in md
    # the trials table: trial, state, agent.lr, agent.horizon, value, seed values, cost, feasible, device-h, note
    rows = {c[0]: c for c in ([x.strip() for x in r.split("|")[1:-1]] for r in md.splitlines() if r.startswith("| "))
            if len(c) == 10 and c[0].isdigit()}
    assert len(rows) == 12
    assert rows["4"][1] == "complete" and rows["4"][7] == "no" and rows["4"][4].startswith("21.00 [CI 8.29, 33.71]")
    assert rows["7"][7] == "yes" and rows["7"][-1] == "best feasible"
    assert rows["2"][1] == "pruned" and rows["2"][-1] == "pruned at env step 4096"
    assert rows["5"][1] == "failed"


def test_report_html_shows_the_study_with_its_figures(built):
    _, out = built
    page = (out / "report.html").read_text()
    assert 'id="study-lr-search"' in page and "Study lr-search" in page
    assert "best feasible: trial 7" in page and "best feasible: trial 4" not in page
    for kind in ("history", "front", "importances"):
        assert f'id="fig-study-lr-search-{kind}" src="data:image/png;base64,' in page, kind
        assert (out / f"study-lr-search-{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count('data-state="pruned"') == 2 and page.count('data-state="failed"') == 1
    assert page.count('data-state="complete"') == 9
    assert "Re-run on test seeds" in page
    report = json.loads((out / "report.json").read_text())
    (s,) = report["studies"]
    assert s["best"]["number"] == 7 and s["front"] == [7]
    assert "study-lr-search-front.png" in report["artifacts"] and "study-lr-search.csv" in report["artifacts"]


def test_front_shows_the_infeasible_highest_return_apart_from_the_feasible_front(built):
    root, _ = built
    (view,) = read_studies(root)
    front = view.front().set_index("number")
    assert len(front) == 9  # every complete trial is a point
    assert front.loc[4, "value"] == max(front["value"]) == 21.0
    assert front.loc[4, "feasible"] is False and not front.loc[4, "on_front"]
    assert front.loc[10, "feasible"] is False and not front.loc[10, "on_front"]
    assert front.loc[7, "on_front"] and front.loc[3, "on_front"]
    assert view.best == [7] and view.best_row["value"] == 12.5
    assert view.constraint == {"metric": "id.cost_mean", "limit": 25.0}
    assert list(view.history["best_so_far"])[-1] == 12.5  # best-so-far over feasible trials only


def test_pruned_trials_are_counted_as_pruned_not_failed(built):
    root, _ = built
    (view,) = read_studies(root)
    assert view.counts == {"trials": 12, "complete": 9, "pruned": 2, "failed": 1, "running": 0, "waiting": 0}
    pruned = view.trials[view.trials["state"] == "pruned"]
    assert list(pruned["number"]) == [2, 8] and list(pruned["pruned_at"]) == [4096, 8192]
    assert pruned["value"].isna().all()  # Optuna's intermediate value is not the objective


def test_pruning_savings_match_the_fixtures_device_hours(built):
    root, out = built
    (view,) = read_studies(root)
    pruned_h = sum(t.get("device_hours", 0.1) for t in STUDY_TRIALS if t["state"] == "pruned")
    complete_h = 0.1 * sum(t["state"] == "complete" for t in STUDY_TRIALS)
    s = view.savings
    assert s["pruned_h"] == pytest.approx(pruned_h) == pytest.approx(0.05)
    assert s["complete_h"] == pytest.approx(complete_h) == pytest.approx(0.9)
    assert s["failed_h"] == pytest.approx(0.01)
    assert s["pruned_fraction"] == pytest.approx(2 / 11)
    assert s["saved_h"] == pytest.approx(2 * 0.1 - 0.05)
    line = ("Pruning saved: pruned cells used 0.050 device-h, completed 0.900 device-h; 2 of 11 finished trials "
            "pruned (18%)")
    assert line in (out / "decision.md").read_text() and line in (out / "report.html").read_text()


def test_importances_with_five_complete_trials(built):
    root, out = built
    (view,) = read_studies(root)
    assert set(view.importances) == {"agent.lr", "agent.horizon"}
    assert sum(view.importances.values()) == pytest.approx(1.0)
    assert "Parameter importances (Optuna's default evaluator" in (out / "decision.md").read_text()


def test_fewer_than_five_complete_trials_say_why_there_are_no_importances(tmp_path):
    trials = [t for t in STUDY_TRIALS if t["state"] != "complete"] + [
        t for t in STUDY_TRIALS if t["state"] == "complete"][:4]
    study_store(tmp_path / "s", trials=trials)
    out = build_report(tmp_path / "s", cfg=NO_FIGURES)
    md = (out / "decision.md").read_text()
    assert "Parameter importances: not computed: 4 complete trial(s), and parameter importances need at least 5." in md
    assert "study-lr-search-importances.png" not in json.loads((out / "report.json").read_text())["artifacts"]
    # one parameter fixed: it does not vary, so there is nothing to rank
    same = [{**t, "params": {"agent.lr": 0.001}} for t in STUDY_TRIALS[:8]]
    study_store(tmp_path / "same", trials=same, cells=False)
    (view,) = read_studies(tmp_path / "same")
    assert view.importances is None and "no parameter takes more than one value" in view.importances_why


def test_test_seed_reruns_are_a_table_of_their_own(built):
    _, out = built
    md = (out / "decision.md").read_text()
    section = md[md.index("### Re-run on test seeds"):]
    assert "| 7 " in section and "12.50 [CI 6.15, 18.85] (seeds 0,1)" in section
    assert "11.50 [CI 5.15, 17.85] (seeds 100,101)" in section
    # the trials table carries the tuning seeds' values only, never the test seeds'
    trials = md[md.index("## 7. Study"):md.index("### Re-run on test seeds")]
    assert "11.50" not in trials and "100,101" not in trials


def test_no_feasible_trial_is_said_not_hidden(tmp_path):
    trials = [{**t, "costs": [c + 30 for c in t["costs"]]} if t["state"] == "complete" else t for t in STUDY_TRIALS]
    study_store(tmp_path / "s", trials=trials, cells=False)
    (view,) = read_studies(tmp_path / "s")
    assert view.best == [] and view.best_row is None
    from safedreamer_sweep.report.render.studies import summary_line

    assert summary_line(view).endswith("no feasible trial yet (9 of 9 complete trial(s) break the cost limit "
                                       "(id.cost_mean <= 25))")
    assert study_line(view.to_dict()) == "study lr-search: 12/12 trials (9 done, 2 pruned, 1 failed, 0 running); " \
                                         "no feasible trial yet"


def test_reading_a_study_writes_nothing_and_takes_no_lock(tmp_path):
    d = study_store(tmp_path / "s", cells=False)

    def snapshot() -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir()}

    before = snapshot()
    os.chmod(d, 0o555)  # a study the reader cannot write to (root ignores it; the snapshot still checks)
    try:
        (view,) = read_studies(tmp_path / "s")
    finally:
        os.chmod(d, 0o755)
    assert view.error is None and view.counts["trials"] == 12
    assert snapshot() == before and sorted(before) == ["journal.log", "study.json"]


def test_a_damaged_journal_is_reported_not_raised(tmp_path):
    d = study_store(tmp_path / "s", cells=False)
    lines = (d / "journal.log").read_text().splitlines(keepends=True)
    (d / "journal.log").write_text("".join([*lines[:3], "{not json\n", *lines[3:]]))
    (view,) = read_studies(tmp_path / "s")
    assert view.error and "journal.log: unreadable by Optuna" in view.error and "Fix:" in view.error
    assert view.n_trials == 12 and not len(view.trials)


def test_a_store_without_studies_has_no_study_section(tmp_path):
    def cell(seed: int) -> dict:
        return {"id_returns": [10.0 + seed], "id_costs": [5.0], "ood_returns": [9.0], "ood_costs": [6.0]}

    store = write_store(tmp_path / "s", {"v2_baseline": cell, "v2_full": cell}, [0, 1, 2])
    assert read_studies(store.root) == []
    out = build_report(store.root, cfg=NO_FIGURES)
    assert "Study" not in (out / "decision.md").read_text() and "## 7." not in (out / "decision.md").read_text()
    page = (out / "report.html").read_text()
    assert "study-" not in page and "Study " not in page
    assert "studies" not in json.loads((out / "report.json").read_text())
    assert status.collect(store.root, sample_cpu=False)["studies"] == []


def test_status_text_and_json_carry_the_study_line(tmp_path, capsys):
    # 8 of 12 trials so far: 6 complete, 1 pruned, 1 running (its invocation in flight)
    trials = [*[t for t in STUDY_TRIALS if t["state"] == "complete"][:6], STUDY_TRIALS[2],
              {"state": "running", "params": {"agent.lr": 0.006, "agent.horizon": 8}}]
    study_store(tmp_path / "s", trials=trials, n_trials=12)
    code = cli_main(["status", str(tmp_path / "s"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    (s,) = doc["studies"]
    assert {k: s[k] for k in ("name", "n_trials", "trials", "complete", "pruned", "failed", "running")} == {
        "name": "lr-search", "n_trials": 12, "trials": 8, "complete": 6, "pruned": 1, "failed": 0, "running": 1}
    # numbered in this study's order: the default's trial 4 (21.0, breaks the limit) is trial 3 here, its
    # trial 7 (12.5, the best feasible) trial 5
    assert s["best"]["number"] == 5 and s["best"]["value"] == 12.5 and s["best"]["feasible"] is True
    assert s["best"]["params"] == {"agent.lr": 0.003, "agent.horizon": 16} and s["best"]["n"] == 2
    assert s["constraint"] == {"metric": "id.cost_mean", "limit": 25.0} and s["error"] is None
    assert s["savings"]["pruned_h"] == pytest.approx(0.02)
    documented = (ROOT / "docs" / "status-json.md").read_text()
    for key in ("studies", *s, *s["best"]):
        assert f"`{key}`" in documented, f"docs/status-json.md does not document `{key}`"
    line = "study lr-search: 8/12 trials (6 done, 1 pruned, 1 running); best feasible 12.5 (trial 5, agent.lr=0.003, agent.horizon=16)"
    assert cli_main(["status", str(tmp_path / "s"), "--width", "250"]) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == line  # under the verdict


def test_an_apps_report_shows_its_study(tmp_path):
    """A study over any Hydra app: its cells return their result, so the report is the app's page
    (build_app_report), and that page and results.md carry the study section too."""
    from safedreamer_sweep.core.store import Store
    from safedreamer_sweep.report.build import build_app_report

    store = Store(tmp_path / "s")
    for seed in (0, 1):
        rd = store.run_dir("agent.lr=0.003", seed, f"{seed:02d}abcdef")
        rd.ensure_spec({"config": "agent.lr=0.003", "seed": seed, "hash": f"{seed:02d}abcdef", "done_when": "return",
                        "overrides": ["agent.lr=0.003"]})
        rd.begin_attempt(launcher="basic")
        rd.write_result({"return_mean": 12.0 + seed})
        rd.end_attempt("done")
        rd.set_phase("done")
    study_store(store.root, cells=False)
    out = build_app_report(store.root)
    assert "## Study `lr-search`" in (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    assert "best feasible: trial 7" in page and 'id="fig-study-lr-search-front" src="data:image/png' in page
    assert {"study-lr-search-history.png", "study-lr-search-front.png", "study-lr-search.csv"} <= {
        p.name for p in out.iterdir()}
    # the mixed case: build_report's page shows the study; the app's tables do not repeat it
    out2 = build_app_report(store.root, tmp_path / "mixed", page=False)
    assert "Study" not in (out2 / "results.md").read_text()
