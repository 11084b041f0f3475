"""Coverage of the report's intervals at the seed counts sweeps use (issue 10.1; the full table
over data shapes and n is bench/ci_coverage.py). Fixed seeds, no timing."""

from __future__ import annotations

import numpy as np
import pytest

from safedreamer_sweep.report.analysis import stats

SIMS = 2000
# Binomial tolerance around the nominal 0.95: sd = sqrt(.95 * .05 / 2000) = 0.0049, and 3.5 sd
# either side is [0.933, 0.967]. The percentile bootstrap this replaced covered about 0.84 at n=5.
LOW, HIGH = 0.933, 0.967


def test_mean_ci_of_the_main_table_covers_at_five_normal_seeds():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(SIMS, 5))
    hits = 0
    for row in x:
        s = stats.summarize(row, confidence=0.95)
        hits += s["ci_low"] <= 5.0 <= s["ci_high"]
    assert LOW <= hits / SIMS <= HIGH


def test_difference_ci_of_the_ablation_table_covers_at_five_normal_seeds():
    # Unequal spreads on purpose: Welch's interval must not lean on a pooled variance.
    rng = np.random.default_rng(1)
    config = rng.normal(11.0, 3.0, size=(SIMS, 5))
    base = rng.normal(10.0, 1.0, size=(SIMS, 5))
    hits = 0
    for a, b in zip(config, base):
        low, high = stats.difference_ci(a, b, confidence=0.95)  # what stats.compare reports
        hits += low <= 1.0 <= high
    assert LOW <= hits / SIMS <= HIGH


def test_curve_band_covers_pointwise_at_five_normal_seeds():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(SIMS // 4):
        curves = rng.normal(0.0, 1.0, size=(5, 4)) + np.arange(4.0)
        _, lo, hi = stats.curve_bands(curves, confidence=0.95)
        hits += int(np.sum((lo <= np.arange(4.0)) & (np.arange(4.0) <= hi)))
    assert LOW <= hits / SIMS <= HIGH


def _cell(ret: float, cost: float):
    """Per-seed ID return ret + seed (0..4), costs constant far below the limit 25."""
    def make(seed: int) -> dict:
        r = ret + seed
        return {"id_returns": [r], "id_costs": [cost], "ood_returns": [r], "ood_costs": [cost]}
    return make


def test_holm_keeps_a_config_that_passes_alone_from_being_picked_among_three(tmp_path):
    from safedreamer_sweep.report import compute_report
    from safedreamer_sweep.report.analysis.decision import INCONCLUSIVE, RECOMMENDED
    from safedreamer_sweep.report.render.document import decision_markdown
    from safedreamer_sweep.report.synthetic import write_store

    seeds = [0, 1, 2, 3, 4]
    # v2_full: +2.6 over the baseline, Welch CI [0.29, 4.91] above 0, one-sided p = 0.016.
    alone = compute_report(write_store(tmp_path / "alone", {"v2_baseline": _cell(10, 5),
                                                            "v2_full": _cell(12.6, 5)}, seeds).root)
    (v,) = alone.decision.per_config
    assert v.decision == RECOMMENDED and v.p_value == pytest.approx(0.0158, abs=1e-3)
    assert "No multiplicity correction needed" in decision_markdown(alone)
    # The same config among three compared with the baseline: Holm needs 3 * 0.016 < 0.025.
    three = compute_report(write_store(tmp_path / "three", {"v2_baseline": _cell(10, 5), "v2_full": _cell(12.6, 5),
                                                            "v2_u_only": _cell(10, 5),
                                                            "v2_cert_only": _cell(10, 5)}, seeds).root)
    full = next(v for v in three.decision.per_config if v.config == "v2_full")
    assert full.decision == INCONCLUSIVE and full.p_adjusted == pytest.approx(3 * full.p_value)
    assert any("not after Holm's correction across 3 configs" in r for r in full.reasons)
    assert three.decision.headline == INCONCLUSIVE
    assert "Holm's step-down correction across the 3 configs" in decision_markdown(three)


def test_two_seeds_print_no_interval_anywhere(tmp_path):
    # At n=2 every place that would show an interval says so in words instead: once under each
    # table (not in every cell), in the rule's reasons and in the user's templates.
    from safedreamer_sweep.report import build_report
    from safedreamer_sweep.report.synthetic import write_store

    store = write_store(tmp_path / "store", {"v2_baseline": _cell(10, 5), "v2_full": _cell(14, 5)}, [0, 1])
    out = build_report(store.root, cfg={"report": {"figures": False}})
    main_md, abl_md = (out / "main.md").read_text(), (out / "ablation.md").read_text()
    caveat = "Cells without brackets have no interval: they rest on 2 seeds"
    assert main_md.count(caveat) == 2 and "[" not in main_md  # two tables (return and cost; violations and risk)
    assert abl_md.count(caveat + " on a side") == 2 and "[" not in abl_md
    assert "| v2_full     |   2 |        14.5 |      5.00 |" in main_md  # the number and n, nothing else in the cell
    slides = (out / "slides.md").read_text()
    assert "+4.00 no interval (n=2 vs 2;" in slides
    doc = (out / "decision.md").read_text()
    # the rule's reasons: the brief form, and why once, under the verdict table
    assert "ID return difference to v2_baseline +4.00: no interval (n=2 vs 2)" in doc
    from safedreamer_sweep.report.analysis.stats import NO_INTERVAL_NOTE

    assert doc.count(NO_INTERVAL_NOTE) == 1 and "seeds are needed for one to mean anything" not in doc
    assert "CI [nan" not in doc and "[n/a" not in doc
    metrics = doc[doc.index("## 4. Key metrics"):doc.index("## 5.")]
    assert metrics.count("no interval") == 4 and "no interval (n=" not in metrics  # once per table
