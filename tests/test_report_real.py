"""The report of a store written by a real short sweep: every artifact, numbers equal to the
evaluation files, and an honest "inconclusive" (2 seeds < report.min_seeds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from report_real_sweep import real_store

from safedreamer_sweep.core.store import Store
from safedreamer_sweep.report import ARTIFACTS, build_report

pytestmark = pytest.mark.slow


def test_report_of_a_real_sweep(tmp_path_factory, tmp_path):
    root = real_store(tmp_path_factory)
    out = build_report(root, out=tmp_path / "report")
    assert {p.name for p in out.iterdir()} == set(ARTIFACTS) | {"slides.md"}
    assert len(pd.read_csv(out / "train_status.tsv", sep="\t")) == 4
    assert len(pd.read_csv(out / "eval_status.tsv", sep="\t")) == 8
    # The main table's means are the means of the evaluation files' episodes, read independently.
    store = Store(root)
    per_config: dict[str, list[float]] = {}
    for rd in store.iter_runs():
        doc = json.loads(rd.eval_path("ood").read_text())
        returns = [e["return"] for e in doc["episodes"]]
        per_config.setdefault(rd.read_spec()["config"], []).append(sum(returns) / len(returns))
    main = pd.read_csv(out / "main.csv").set_index(["config", "metric"])
    for config, vals in per_config.items():
        assert main.loc[(config, "ood_return"), "n"] == 2
        assert main.loc[(config, "ood_return"), "mean"] == pytest.approx(sum(vals) / len(vals))
    doc = (out / "decision.md").read_text()
    assert "**Coverage complete**: 12 of 12 parts done" in doc
    assert "**Decision: inconclusive**" in doc
    assert "v2_full: 2 complete seed(s), fewer than report.min_seeds=5" in doc
    assert "OOD is a proxy: SafetyPointGoal2-v0" in doc  # declared in conf/eval/id_ood.yaml
    assert "**confound**" not in doc  # the configs differ only in sweep.ablation_knobs
    assert "## 6. Cost spent" in doc and "CPU-core-hours" in doc  # no GPU here: core-hours, never priced
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["source"]) == {"train", "eval"} and curves["env_step"].max() == 1024
