"""Statistics with known answers (safedreamer_sweep/report/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safedreamer_sweep.report import stats


def test_iqm_of_known_array():
    # 8 values: the 25% trimmed from each end are {1, 2} and {100, 1000}; the middle is 3..6.
    assert stats.iqm([1, 2, 3, 4, 5, 6, 100, 1000]) == pytest.approx(4.5)
    assert stats.iqm([7.0] * 5) == pytest.approx(7.0)
    assert math.isnan(stats.iqm([]))


def test_iqm_is_robust_to_one_collapsed_seed_where_the_mean_is_not():
    x = np.array([10.0, 11, 12, 13, -1000])
    assert stats.iqm(x) == pytest.approx(11.0)  # trims 1 value at each end of 5: mean(10, 11, 12)
    assert x.mean() < 0


def test_bootstrap_ci_contains_the_true_mean_of_a_constructed_sample():
    # A symmetric sample around a known mean: the percentile CI of the mean must bracket it.
    true_mean = 3.0
    sample = true_mean + np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    low, high = stats.stratified_bootstrap([sample], stats.mean, reps=4000, seed=1)
    assert low < true_mean < high
    assert high - low < 3.0  # and it is an interval, not the whole real line


def test_bootstrap_ci_coverage_over_many_samples():
    # A 95% CI of the mean of n=10 normal draws covers the true mean in ~95% of samples
    # (percentile bootstrap undercovers slightly at small n; 85% is a loose, still failing bound).
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        x = rng.normal(5.0, 2.0, size=10)
        low, high = stats.stratified_bootstrap([x], stats.mean, reps=1000, seed=i)
        hits += low <= 5.0 <= high
    assert 0.85 <= hits / 200 <= 0.99


def test_bootstrap_is_reproducible_and_handles_empty_and_single_seed():
    x = [1.0, 2.0, 4.0]
    assert stats.stratified_bootstrap([x], stats.mean, seed=3) == stats.stratified_bootstrap([x], stats.mean, seed=3)
    assert all(math.isnan(v) for v in stats.stratified_bootstrap([[]], stats.mean))
    assert stats.stratified_bootstrap([[4.0]], stats.mean) == (4.0, 4.0)


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
    c = stats.compare(better, base, reps=2000)
    assert c["diff"] == pytest.approx(10.0)
    assert c["ci_low"] > 0 and c["ci_high"] > c["ci_low"]
    assert c["ci_low"] <= 10.0 <= c["ci_high"]
    assert c["prob_improvement"] == 1.0
    same = stats.compare(base, base, reps=2000)
    assert same["ci_low"] < 0 < same["ci_high"]  # no difference: the CI includes 0


def test_summarize_known_numbers():
    s = stats.summarize([2.0, 4.0, 6.0, 8.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(5.0)
    assert s["std"] == pytest.approx(np.std([2, 4, 6, 8], ddof=1))
    assert s["iqm"] == pytest.approx(5.0)
    assert s["ci_low"] < 5.0 < s["ci_high"]
    assert stats.summarize([np.nan, np.nan])["n"] == 0


def test_curve_bands_contain_the_mean_and_ignore_missing_points():
    v = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, np.nan], [4.0, 5.0, 6.0]])
    m, lo, hi = stats.curve_bands(v, reps=500)
    assert m == pytest.approx([2.0, 3.0, 4.0])
    assert np.all(lo <= m) and np.all(m <= hi)


def test_curve_bands_of_complete_curves():
    rng = np.random.default_rng(0)
    v = rng.normal(0.0, 1.0, size=(20, 5)) + np.arange(5)  # 20 seeds, true mean curve 0..4
    m, lo, hi = stats.curve_bands(v, reps=2000)
    assert m == pytest.approx(v.mean(axis=0))
    assert np.all(lo < m) and np.all(m < hi)
    # The band is about +-1.96 standard errors wide (std 1, 20 seeds -> se 0.22).
    assert np.all((hi - lo) > 0.5) and np.all((hi - lo) < 1.4)
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
