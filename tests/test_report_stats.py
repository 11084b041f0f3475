"""Statistics with known answers (safedreamer_sweep/report/analysis/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safedreamer_sweep.report.analysis import stats


def test_iqm_of_known_array():
    # 8 values: the 25% trimmed from each end are {1, 2} and {100, 1000}; the middle is 3..6.
    assert stats.iqm([1, 2, 3, 4, 5, 6, 100, 1000]) == pytest.approx(4.5)
    assert stats.iqm([7.0] * 5) == pytest.approx(7.0)
    assert math.isnan(stats.iqm([]))


def test_iqm_is_robust_to_one_collapsed_seed_where_the_mean_is_not():
    x = np.array([10.0, 11, 12, 13, -1000])
    assert stats.iqm(x) == pytest.approx(11.0)  # trims 1 value at each end of 5: mean(10, 11, 12)
    assert x.mean() < 0


def test_mean_ci_is_the_student_t_interval():
    # n=4, mean 5, s = sqrt(20/3); t_{0.975, 3} = 3.182446: half-width 3.182446 * s / 2 = 4.1088.
    low, high = stats.mean_ci([2.0, 4.0, 6.0, 8.0])
    assert (low, high) == pytest.approx((5.0 - 4.10862, 5.0 + 4.10862), abs=1e-4)
    assert stats.mean_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)  # no variance in the data: zero width


def test_no_interval_below_three_seeds():
    for x in ([], [4.0], [1.0, 2.0]):
        assert all(math.isnan(v) for v in stats.mean_ci(x))
    assert all(math.isnan(v) for v in stats.difference_ci([1.0, 2.0], [1.0, 2.0, 3.0]))
    s = stats.summarize([1.0, 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0 and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    assert "no interval (n=2" in stats.no_interval_text(2)
    m, lo, _ = stats.curve_bands(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, np.nan]]))
    assert math.isfinite(lo[0]) and math.isnan(lo[1]) and m[1] == 2.0  # point 2: only 2 seeds


def test_difference_ci_is_welch_and_agrees_with_its_one_sided_test():
    a, b = np.array([10.0, 12.0, 11.0, 14.0]), np.array([1.0, 2.0, 9.0, 3.0, 5.0])
    low, high = stats.difference_ci(a, b, confidence=0.95)
    # Welch: se^2 = s_a^2/4 + s_b^2/5, df by Welch-Satterthwaite.
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 5
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    half = float(stats.sps.t.ppf(0.975, df)) * math.sqrt(va + vb)
    assert (low, high) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half))
    # "CI above margin" is exactly "one-sided p < 0.025".
    for margin in (low - 0.01, low + 0.01):
        assert (stats.p_greater(a, b, margin) < 0.025) == (low > margin)
    c = np.array([3.0, 5.0, 4.0, 6.0])
    _, hi_c = stats.mean_ci(c)
    for limit in (hi_c - 0.01, hi_c + 0.01):
        assert (stats.p_below(c, limit) < 0.025) == (hi_c < limit)


def test_holm_adjusts_in_input_order_and_counts_missing_tests():
    # Sorted 0.01, 0.02, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 0.04).
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    adj = stats.holm([0.01, float("nan")])  # the untestable config still counts in the family
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1])
    assert stats.holm([]) == []


def test_probability_of_improvement_of_separated_samples():
    a, b = [10.0, 11.0, 12.0], [1.0, 2.0, 3.0]
    assert stats.probability_of_improvement(a, b) == 1.0
    assert stats.probability_of_improvement(b, a) == 0.0
    assert stats.probability_of_improvement(a, a) == 0.5  # ties count half
    # For a cost, lower is better: the low-cost config improves on the high-cost one.
    assert stats.probability_of_improvement(b, a, higher_is_better=False) == 1.0
    # A known partial overlap: pairs (x > y) among 2x2 = {(3,1), (3,2), (0,...)} -> 2 of 4.
    assert stats.probability_of_improvement([0.0, 3.0], [1.0, 2.0]) == pytest.approx(0.5)


def test_compare_difference_and_its_ci():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    better = base + 10.0
    c = stats.compare(better, base)
    assert c["diff"] == pytest.approx(10.0)
    assert c["ci_low"] > 0 and c["ci_high"] > c["ci_low"]
    assert c["ci_low"] <= 10.0 <= c["ci_high"]
    assert c["prob_improvement"] == 1.0
    same = stats.compare(base, base)
    assert same["ci_low"] < 0 < same["ci_high"]  # no difference: the CI includes 0


def test_summarize_known_numbers():
    s = stats.summarize([2.0, 4.0, 6.0, 8.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(5.0)
    assert s["std"] == pytest.approx(np.std([2, 4, 6, 8], ddof=1))
    assert s["iqm"] == pytest.approx(5.0)
    assert s["ci_low"] < 5.0 < s["ci_high"]
    assert stats.summarize([np.nan, np.nan])["n"] == 0


def test_curve_bands_contain_the_mean_and_ignore_missing_points():
    v = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, np.nan], [4.0, 5.0, 6.0], [2.0, 3.0, 4.0]])
    m, lo, hi = stats.curve_bands(v)
    assert m == pytest.approx([2.0, 3.0, 4.0])  # the last point from the 3 seeds that reached it
    assert np.all(lo < m) and np.all(m < hi)


def test_curve_bands_of_complete_curves():
    rng = np.random.default_rng(0)
    v = rng.normal(0.0, 1.0, size=(20, 5)) + np.arange(5)  # 20 seeds, true mean curve 0..4
    m, lo, hi = stats.curve_bands(v)
    assert m == pytest.approx(v.mean(axis=0))
    assert np.all(lo < m) and np.all(m < hi)
    # The band is +-t_{0.975, 19} standard errors wide, per point.
    half = stats.sps.t.ppf(0.975, 19) * v.std(axis=0, ddof=1) / math.sqrt(20)
    assert hi - lo == pytest.approx(2 * half)
    same = np.tile([1.0, 2.0, 3.0], (4, 1))  # identical seeds: a zero-width band on the curve
    m, lo, hi = stats.curve_bands(same)
    assert lo == pytest.approx([1.0, 2.0, 3.0]) and hi == pytest.approx([1.0, 2.0, 3.0])


def test_bimodal_split_detects_bifurcating_seeds_only():
    assert stats.bimodal_split([0.1, 0.2, 0.0, 20.0, 21.0]) == (0.2, 20.0)
    assert stats.bimodal_split([10.0, 11.0, 12.0, 13.0, 14.0]) is None  # evenly spread
    assert stats.bimodal_split([0.0, 30.0, 31.0]) is None  # too few seeds to call it


def test_seeds_needed_formula():
    # n = (z_0.975 + z_0.8)^2 * (s^2 + s_b^2) / d^2 = 7.849 * 2 / 1 -> 16 per config.
    assert stats.seeds_needed(1.0, 1.0, std_baseline=1.0) == 16
    assert stats.seeds_needed(2.0, 1.0) == math.ceil(7.8489 * 4)
    assert stats.seeds_needed(1.0, 0.0) == math.inf
    assert stats.seeds_needed(float("nan"), 1.0) == math.inf
