"""build_report end to end on synthetic stores with known numbers, written through the RunDir API
(safedreamer_sweep/report/synthetic.py): artifacts, coverage and holes, warnings, the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from safedreamer_sweep.core.store import Store
from safedreamer_sweep.report import (
    ARTIFACTS,
    NotAStoreError,
    build_report,
    compute_report,
)
from safedreamer_sweep.report.synthetic import (
    KNOBS,
    run_config,
    write_cell,
    write_store,
)

CONFIGS = ["v2_baseline", "v2_u_only", "v2_cert_only", "v2_full"]
SEEDS = [0, 1, 2, 3, 4]


def cell(ret: float, cost: float, spread: float = 1.0):
    """Per-seed numbers: ID return ret + spread*seed (two episodes), ID cost fixed, OOD a bit worse."""
    def make(seed: int) -> dict:
        r = ret + spread * seed
        return {"id_returns": [r - 0.5, r + 0.5], "id_costs": [cost, cost], "ood_returns": [r - 3, r - 3],
                    "ood_costs": [cost + 2, cost + 2], "risk_penalty": 0.01 * seed}
    return make


def complete_store(root: Path) -> Store:
    # v2_full: clearly better return, OOD cost 7 < limit 25 -> recommended.
    # v2_cert_only: same return as baseline -> its difference CI includes 0 -> inconclusive.
    # v2_u_only: OOD cost 42 > limit beyond doubt -> not recommended.
    return write_store(root, {"v2_baseline": cell(10, 15), "v2_u_only": cell(12, 40), "v2_cert_only": cell(10, 10),
                              "v2_full": cell(30, 5)}, SEEDS)


def test_complete_store_writes_every_artifact_and_recommends(tmp_path):
    store = complete_store(tmp_path / "store")
    out = build_report(store.root)
    assert out == (store.root / "report").resolve()
    assert {p.name for p in out.iterdir()} == set(ARTIFACTS) | {"slides.md"}
    # One row per expected cell and per expected evaluation: 4 x 5 -> 20 and 40.
    train = pd.read_csv(out / "train_status.tsv", sep="\t")
    evals = pd.read_csv(out / "eval_status.tsv", sep="\t")
    assert len(train) == 20 and set(train["train_status"]) == {"done"}
    assert len(evals) == 40 and set(evals["status"]) == {"done"} and set(evals["kind"]) == {"id", "ood"}
    assert len(pd.read_parquet(out / "cells.parquet")) == 20
    assert len(pd.read_parquet(out / "evals.parquet")) == 20 * 2 * 2  # two episodes per eval
    seeds = pd.read_parquet(out / "seeds.parquet")
    assert seeds.loc[(seeds.config == "v2_full") & (seeds.seed == 3), "id_return"].item() == pytest.approx(33.0)
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["source"]) == {"train", "eval"} and curves["env_step"].max() == 8 * 2048

    main = pd.read_csv(out / "main.csv")
    row = main[(main.config == "v2_full") & (main.metric == "id_return")].iloc[0]
    assert row["n"] == 5 and row["mean"] == pytest.approx(32.0) and row["iqm"] == pytest.approx(32.0)
    assert row["ci_low"] <= 32.0 <= row["ci_high"]
    abl = pd.read_csv(out / "ablation.csv")
    full = abl[(abl.config == "v2_full") & (abl.metric == "id_return")].iloc[0]
    assert full["diff"] == pytest.approx(20.0) and full["prob_improvement"] == 1.0
    assert "\\begin{tabular}" in (out / "main.tex").read_text() and "v2\\_full" in (out / "main.tex").read_text()

    doc = (out / "decision.md").read_text()
    assert "**Decision: recommended: v2_full**" in doc
    verdicts = {v["config"]: v["verdict"] for v in json.loads((out / "report.json").read_text())["decision"]["verdicts"]}
    assert verdicts == {"v2_full": "recommended", "v2_cert_only": "inconclusive", "v2_u_only": "not recommended"}
    # Order: coverage, then warnings, then the numbers.
    assert doc.index("## 1. Experiment matrix") < doc.index("## 2. Warnings") < doc.index("## 4. Key metrics")
    assert "OOD is a proxy" in doc
    for png in ("coverage.png", "learning_curves.png", "id_ood.png", "per_seed.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_idempotent_and_keeps_user_files(tmp_path):
    store = complete_store(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_notes.md").write_text("mine")
    build_report(store.root, out=out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    build_report(store.root, out=out)
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first == second
    assert (out / "my_notes.md").read_text() == "mine"


def test_summary_first_then_figures_writes_the_same_report(tmp_path):
    """on_summary sees the text artifacts written and no figure yet; the finished report equals the
    one-pass build byte for byte (the end-of-sweep summary can show before the figures are drawn)."""
    store = complete_store(tmp_path / "store")
    one_pass = build_report(store.root, out=tmp_path / "one")
    seen: dict = {}

    def on_summary(out: Path, r) -> None:
        seen.update(files={p.name for p in out.iterdir()}, headline=r.decision.headline)

    two_pass = build_report(store.root, out=tmp_path / "two", on_summary=on_summary)
    figures = {"coverage.png", "learning_curves.png", "id_ood.png", "per_seed.png"}
    assert {"decision.md", "report.json", "main.md"} <= seen["files"] and not figures & seen["files"]
    assert "v2_full" in seen["headline"]
    assert {p.name: p.read_bytes() for p in one_pass.iterdir()} == {p.name: p.read_bytes() for p in two_pass.iterdir()}


def test_store_with_holes_leads_with_them_and_is_inconclusive(tmp_path):
    root = tmp_path / "store"
    full, u_only = cell(30, 5), cell(12, 10)
    write_store(root, {"v2_baseline": cell(10, 15), "v2_u_only": lambda s: None if s == 4 else u_only(s),
                       "v2_cert_only": cell(11, 10),
                       # seed 2 of v2_full never ran: only the sweep manifest knows about it
                       "v2_full": lambda s: None if s == 2 else full(s)}, SEEDS)
    store = Store(root)
    # seed 4 of v2_u_only trained but failed before its evaluations
    write_cell(store, "v2_u_only", 4, id_returns=[], id_costs=[], ood_returns=[], ood_costs=[], evals=(),
               phase="failed", trained=True)
    out = build_report(root)  # never raises on holes
    doc = (out / "decision.md").read_text()
    lead = doc.split("## 1.")[0]
    assert "hole(s) in the matrix" in lead and "v2_full seed 2 (train: missing)" in lead
    assert "v2_u_only seed 4 (id: failed)" in lead
    assert "**Decision: inconclusive**" in lead
    assert doc.index("hole") < doc.index("## 4. Key metrics")
    train = pd.read_csv(out / "train_status.tsv", sep="\t")
    evals = pd.read_csv(out / "eval_status.tsv", sep="\t")
    assert len(train) == 20 and len(evals) == 40
    assert train.set_index(["config", "seed"]).loc[("v2_full", 2), "train_status"] == "missing"
    ev = evals.set_index(["config", "seed", "kind"])
    assert ev.loc[("v2_full", 2, "ood"), "status"] == "missing"
    assert ev.loc[("v2_u_only", 4, "id"), "status"] == "failed"
    assert "v2_full: 4 complete seed(s), fewer than report.min_seeds=5" in doc
    cov = (out / "coverage.md").read_text()
    assert "–" in cov and "✗" in cov
    main = pd.read_csv(out / "main.csv")
    assert main[(main.config == "v2_full") & (main.metric == "ood_cost")]["n"].item() == 4
    r = json.loads((out / "report.json").read_text())
    assert r["decision"]["headline"] == "inconclusive" and r["coverage"] == {"done": 55, "total": 60}


def test_too_few_seeds_is_inconclusive_with_a_seed_estimate(tmp_path):
    # Noisy seeds, a small true effect: the CI of the difference includes 0.
    noisy = {0: 0.0, 1: 9.0, 2: 2.0, 3: 7.0, 4: 4.0}
    root = tmp_path / "store"
    write_store(root, {"v2_baseline": lambda s: {"id_returns": [10 + noisy[s]], "id_costs": [5], "ood_returns": [5],
                                                     "ood_costs": [5]},
                       "v2_full": lambda s: {"id_returns": [11 + noisy[(s + 2) % 5]], "id_costs": [5],
                                                 "ood_returns": [5], "ood_costs": [5]}}, SEEDS)
    r = compute_report(root)
    (v,) = r.decision.per_config
    assert v.decision == "inconclusive" and v.return_ci[0] < 0 < v.return_ci[1]
    # n = (1.96 + 0.8416)^2 * (s^2 + s_b^2) / 1^2 with s = s_b = std of the noise.
    s = pd.Series(list(noisy.values())).std()
    assert v.seeds_needed == pytest.approx(int(-(-7.8489 * 2 * s**2 // 1)), abs=1)
    doc = (build_report(root) / "decision.md").read_text()
    assert "includes 0" in doc and str(int(v.seeds_needed)) in doc
    assert f"**Decision: inconclusive** — the evidence does not settle the rule for v2_full (about " \
           f"{int(v.seeds_needed)} seeds per config would" in doc
    assert "Which numbers would change a decision" in doc and "ID return diff CI lower bound" in doc


def test_warnings_for_bimodal_seeds_confounds_and_missing_baseline(tmp_path):
    root = tmp_path / "store"
    store = write_store(root, {
        # two seeds collapse, three succeed
        "v2_baseline": lambda s: {"id_returns": [0.0 if s < 2 else 20.0 + s * 0.1], "id_costs": [5], "ood_returns": [1],
                                      "ood_costs": [5]},
    }, SEEDS)
    rc = run_config("v2_full", 0, *KNOBS["v2_full"])
    rc["agent"]["rew_rms"] = False  # a key the baseline does not have: a confound
    for s in SEEDS:
        write_cell(store, "v2_full", s, id_returns=[5], id_costs=[5], ood_returns=[5], ood_costs=[5],
                   run_cfg={**rc, "seed": s})
    doc = (build_report(root, cfg={"report": {"baseline": "v2_baseline"},
                                   "sweep": {"ablation_knobs": ["agent.u.enabled", "agent.cert.enabled"]}})
           / "decision.md").read_text()
    warnings = doc.split("## 2. Warnings")[1].split("## 3.")[0]
    assert "**bimodal**: v2_baseline: id_return splits into two groups of seeds, [0, 1]" in warnings
    assert "**confound**: agent.rew_rms" in warnings
    # The declared knobs are not confounds.
    confounds = [line for line in warnings.splitlines() if line.startswith("- **confound**")]
    assert len(confounds) == 1  # agent.u.enabled / agent.cert.enabled differ too, but are declared knobs
    doc2 = (build_report(root, out=tmp_path / "r2", cfg={"report": {"baseline": "v2_nope"}}) / "decision.md").read_text()
    assert "the baseline 'v2_nope' (report.baseline) is not in the matrix" in doc2
    assert "**Decision: inconclusive**" in doc2


def test_bad_paths_and_settings_are_clear_errors_that_write_nothing(tmp_path):
    with pytest.raises(NotAStoreError, match="no such directory"):
        build_report(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAStoreError, match="not a run store"):
        build_report(empty)
    assert list(empty.iterdir()) == []
    store = complete_store(tmp_path / "store")
    with pytest.raises(ValueError, match=r"unknown key.*min_seed"):
        build_report(store.root, cfg={"report": {"min_seed": 3}})
    with pytest.raises(ValueError, match=r"report\.rule: unknown metric"):
        build_report(store.root, cfg={"report": {"rule": {"cost_metric": "cost"}}})
    assert not (store.root / "report").exists()


def test_report_out_setting_and_rule_from_config(tmp_path):
    store = complete_store(tmp_path / "store")
    out = build_report(store.root, cfg={"report": {"out": str(tmp_path / "elsewhere"), "min_seeds": 3,
                                                   "rule": {"cost_bound": "mean", "return_metric": "ood_return"}},
                                        "cost": {"per_gpu_hour": 2.0, "currency": "RMB"}})
    assert out == (tmp_path / "elsewhere").resolve()
    doc = (out / "decision.md").read_text()
    assert "its OOD cost mean is below the cost limit" in doc and "OOD return difference" in doc
    # 20 cells x one 0.5 h attempt holding 1 GPU = 10 GPU-hours, priced at 2 RMB.
    assert "Total: 10.000 GPU-hours" in doc and "Money: 20.00 RMB" in doc


def test_a_corrupt_file_is_a_named_hole_not_a_crash(tmp_path):
    store = complete_store(tmp_path / "store")
    bad = store.find("v2_full", 1)[0].eval_path("ood")
    bad.write_text('{"kind": "ood", "episodes": [')  # torn by a crash of something that did not write atomically
    out = build_report(store.root)
    doc = (out / "decision.md").read_text()
    assert "**Decision: inconclusive**" in doc
    assert f"**corrupt**: {bad}: not valid JSON" in doc
    ev = pd.read_csv(out / "eval_status.tsv", sep="\t").set_index(["config", "seed", "kind"])
    assert ev.loc[("v2_full", 1, "ood"), "status"] == "corrupt"
    assert bad.read_text() == '{"kind": "ood", "episodes": ['  # evidence left as it was


def test_null_metrics_fields_are_missing_data_not_a_crash(tmp_path):
    # A short or unfinished cell logs windows in which no episode finished: episode_return is null.
    store = complete_store(tmp_path / "store")
    rd = store.find("v2_full", 2)[0]
    rd.append_metrics({"env_step": 10**6, "episode_return": None, "episode_cost": None, "risk_penalty": None})
    r = compute_report(store.root)
    row = r.frames.seeds.set_index(["config", "seed"]).loc[("v2_full", 2)]
    assert pd.isna(row["final_train_return"]) and pd.isna(row["risk_penalty"])
    assert (build_report(store.root) / "decision.md").exists()


def test_tables_fit_a_page_and_say_each_caveat_once(tmp_path):
    """Main and ablation tables: each cell the number, its interval, n in a column; Markdown lines
    of a table within 125 characters, LaTeX cells within 14 (the interval on its own row), and the
    table-wide caveat once under each table."""
    store = complete_store(tmp_path / "store")
    out = build_report(store.root, cfg={"report": {"figures": False}})
    for name in ("main.md", "ablation.md"):
        rows = [line for line in (out / name).read_text().splitlines() if line.startswith("|")]
        assert rows and max(len(r) for r in rows) <= 125, (name, max(len(r) for r in rows))
    main_md = (out / "main.md").read_text()
    assert "| v2_full      |   5 | 32.0 [30.0, 34.0] |" in main_md  # mean [95% t CI], n = 5 seeds
    assert main_md.count("Each cell: the mean over seeds") == 2 and "no interval" not in main_md
    tex = (out / "ablation.tex").read_text()
    body = [line for line in tex.splitlines() if line.endswith("\\\\") and "&" in line and not line.startswith("config")]
    cells = [c.strip().rstrip("\\").strip() for line in body for c in line.split("&")[2:]]
    assert cells and max(len(c) for c in cells) <= 14, max(cells, key=len)
    assert "+20.0" in cells and "[17.7, 22.3]" in cells  # v2_full's ID return gain and its Welch t CI below it
    # Below 3 seeds: no brackets in any cell, one note under each table (not one per cell).
    two = write_store(tmp_path / "two", {"v2_baseline": cell(10, 15), "v2_full": cell(30, 5)}, [0, 1])
    doc = (build_report(two.root, cfg={"report": {"figures": False}}) / "decision.md").read_text()
    metrics = doc[doc.index("## 4. Key metrics"):doc.index("## 5.")]
    assert metrics.count("Cells without brackets have no interval: they rest on 2 seeds") == 4
