"""Statistics for a handful of seeds: pure functions over numpy arrays, with intervals that keep
their nominal coverage at the seed counts sweeps use.

Methods, and why (coverage measured by bench/ci_coverage.py, simulated at n = 2, 3, 5, 10):

- CI of a mean (main table, the decision's cost bound, learning-curve bands): Student t,
  mean ± t_{n-1} s / √n (scipy.stats.ttest_1samp). Exact for normal seeds at every n; on
  right-skewed seeds it under-covers somewhat (the bench prints by how much).
- CI of a difference of means (ablation table, the decision's return test): Welch t
  (scipy.stats.ttest_ind, equal_var=False), which does not assume the two configs share a variance.
- The percentile bootstrap this module used before covered the true mean 51% of the time at n = 2
  and 84% at n = 5 for a nominal 95%; bootstrap intervals (percentile, BCa) are not used.
- Fewer than MIN_SEEDS_FOR_INTERVAL seeds: no interval at all (NaN). At n = 2 a t interval is
  valid but about ±9 standard deviations wide, and any narrower one is false comfort; the report
  says "no interval" in words instead.
- IQM and probability of improvement: rliable's `aggregate_iqm` and `probability_of_improvement`
  (Agarwal et al., 2021). Its authors attach stratified percentile-bootstrap CIs to them for
  aggregates over many runs x tasks; at a few seeds of one task the percentile bootstrap
  under-covers (0.86 for the mean at n = 5), so the report shows both as point estimates only
  (bench/ci_coverage.py --rliable measures rliable's IQM CI itself).
- Multiplicity: `holm` adjusts the p-values of the configs compared with one baseline
  (statsmodels' multipletests, method "holm"), so that recommending the best of several configs
  keeps the rule's error rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from rliable import metrics as rly_metrics
from scipy import stats as sps

# Below this many seeds the report prints no interval (see the module docstring).
MIN_SEEDS_FOR_INTERVAL = 3

_ArrayLike = Sequence[float] | np.ndarray
_NAN = float("nan")


def _clean(x: _ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


@contextmanager
def _quiet_precision_loss() -> Iterator[None]:
    """scipy warns when seeds are nearly identical (not exactly: those are handled before); the
    interval it then gives is still the t interval of the data, just nearly zero-width."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        yield


def no_interval_text(n: int, n_baseline: int | None = None) -> str:
    """What the report prints where an interval would be, at too few seeds."""
    seeds = f"n={n}" if n_baseline is None else f"n={n} vs {n_baseline}"
    return f"no interval ({seeds}; at least {MIN_SEEDS_FOR_INTERVAL} seeds are needed for one to mean anything)"


def no_interval_brief(n: int, n_baseline: int | None = None) -> str:
    """The same in a table that says why once, under it (NO_INTERVAL_NOTE): `no interval (n=2 vs 2)`."""
    return f"no interval (n={n})" if n_baseline is None else f"no interval (n={n} vs {n_baseline})"


NO_INTERVAL_NOTE = (f"\"no interval\": fewer than {MIN_SEEDS_FOR_INTERVAL} seeds on a side, too few for an interval "
                    f"to mean anything (at n = 2 a Student t interval spans about ±9 standard deviations).")


def iqm(x: _ArrayLike) -> float:
    """Interquartile mean (rliable.metrics.aggregate_iqm): the mean of the middle 50% of values,
    25% trimmed from each end. Robust to one collapsed seed, less noisy than the median."""
    a = _clean(x)
    if a.size == 0:
        return _NAN
    return float(rly_metrics.aggregate_iqm(a[:, None]))


def probability_of_improvement(x: _ArrayLike, y: _ArrayLike, higher_is_better: bool = True) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all seed pairs (rliable.metrics.probability_of_improvement:
    the Mann-Whitney U statistic over n_x * n_y): the chance that a random seed of X beats a random
    seed of Y. For a cost, pass `higher_is_better=False` so that "improvement" means "lower"."""
    a, b = _clean(x), _clean(y)
    if a.size == 0 or b.size == 0:
        return _NAN
    if not higher_is_better:
        a, b = -a, -b
    return float(rly_metrics.probability_of_improvement(a[:, None], b[:, None]))


def mean_ci(x: _ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Student t confidence interval of the mean; (nan, nan) below MIN_SEEDS_FOR_INTERVAL seeds.
    Identical seeds give a zero-width interval at their value (the data show no variance)."""
    a = _clean(x)
    if a.size < MIN_SEEDS_FOR_INTERVAL:
        return _NAN, _NAN
    if np.ptp(a) == 0:
        return float(a[0]), float(a[0])
    with _quiet_precision_loss():
        ci = sps.ttest_1samp(a, 0.0).confidence_interval(confidence_level=confidence)
    return float(ci.low), float(ci.high)


def difference_ci(x: _ArrayLike, y: _ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Welch t confidence interval of mean(x) - mean(y); (nan, nan) when either side has fewer
    than MIN_SEEDS_FOR_INTERVAL seeds."""
    a, b = _clean(x), _clean(y)
    if min(a.size, b.size) < MIN_SEEDS_FOR_INTERVAL:
        return _NAN, _NAN
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        d = float(a[0] - b[0])
        return d, d
    with _quiet_precision_loss():
        ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=confidence)
    return float(ci.low), float(ci.high)


def p_greater(x: _ArrayLike, y: _ArrayLike, margin: float = 0.0) -> float:
    """One-sided Welch t test p-value of "mean(x) - mean(y) > margin". Below it the one-sided
    level a/2, exactly when the (1 - a) difference_ci lies above `margin`. NaN below
    MIN_SEEDS_FOR_INTERVAL seeds on either side."""
    a, b = _clean(x), _clean(y)
    if min(a.size, b.size) < MIN_SEEDS_FOR_INTERVAL:
        return _NAN
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] - b[0] > margin else 1.0
    with _quiet_precision_loss():
        return float(sps.ttest_ind(a - margin, b, equal_var=False, alternative="greater").pvalue)


def p_below(x: _ArrayLike, limit: float) -> float:
    """One-sided t test p-value of "mean(x) < limit" (below a/2 exactly when the (1 - a) mean_ci
    lies below `limit`). NaN below MIN_SEEDS_FOR_INTERVAL seeds."""
    a = _clean(x)
    if a.size < MIN_SEEDS_FOR_INTERVAL or not math.isfinite(limit):
        return _NAN
    if np.ptp(a) == 0:
        return 0.0 if a[0] < limit else 1.0
    with _quiet_precision_loss():
        return float(sps.ttest_1samp(a, limit, alternative="less").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels multipletests, method "holm"), in the input order. A
    NaN p-value (no test possible) counts as 1 in the family and stays NaN, so a config with too
    few seeds still widens the correction of the others instead of silently shrinking it."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    adjusted = multipletests(np.where(np.isfinite(p), p, 1.0), method="holm")[1]
    return [float(a) if math.isfinite(q) else _NAN for a, q in zip(adjusted, p)]


def summarize(x: _ArrayLike, *, confidence: float = 0.95) -> dict[str, float]:
    """n, mean, std (ddof=1), IQM, and the Student t CI of the mean of one sample."""
    a = _clean(x)
    n = int(a.size)
    if n == 0:
        return {"n": 0, "mean": _NAN, "std": _NAN, "iqm": _NAN, "ci_low": _NAN, "ci_high": _NAN}
    low, high = mean_ci(a, confidence)
    return {"n": n, "mean": float(a.mean()), "std": float(a.std(ddof=1)) if n > 1 else _NAN,
            "iqm": iqm(a), "ci_low": low, "ci_high": high}


def compare(x: _ArrayLike, baseline: _ArrayLike, *, higher_is_better: bool = True,
            confidence: float = 0.95) -> dict[str, float]:
    """`x` against `baseline`: difference of means with its Welch t CI, and the probability of
    improvement."""
    a, b = _clean(x), _clean(baseline)
    if a.size == 0 or b.size == 0:
        return {"n": int(a.size), "n_baseline": int(b.size), "diff": _NAN, "ci_low": _NAN, "ci_high": _NAN,
                "prob_improvement": _NAN}
    low, high = difference_ci(a, b, confidence)
    return {"n": int(a.size), "n_baseline": int(b.size), "diff": float(a.mean() - b.mean()),
            "ci_low": low, "ci_high": high,
            "prob_improvement": probability_of_improvement(a, b, higher_is_better)}


def curve_bands(values: np.ndarray, *, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student t CI band of learning curves, per curve point, for a (seeds, points) array
    that may hold NaN where a seed has no point yet. Each point uses the seeds that reached it;
    points reached by fewer than MIN_SEEDS_FOR_INTERVAL seeds get no band (NaN)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[0] == 0:
        empty = np.full(v.shape[-1] if v.ndim else 0, np.nan)
        return empty, empty, empty
    n = np.isfinite(v).sum(axis=0)
    with warnings.catch_warnings():
        # Points no seed (or one seed) reached: nanmean/nanstd of an empty slice stay NaN.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = np.nanmean(v, axis=0)
        half = sps.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * np.nanstd(v, axis=0, ddof=1) / np.sqrt(n)
    half = np.where(n >= MIN_SEEDS_FOR_INTERVAL, half, np.nan)
    return m, m - half, m + half


def bimodal_split(x: _ArrayLike, gap_ratio: float = 2.0, min_seeds: int = 4) -> tuple[float, float] | None:
    """Detect seeds that bifurcate (some collapse, some succeed).

    Sort the values and split at the largest gap between neighbours. The sample is called
    bimodal when it has at least `min_seeds` values and that gap is at least `gap_ratio` times the
    sum of the spreads (max - min) of the two sides, i.e. the two groups are further apart than
    either is wide. Returns (gap_low, gap_high), the values either side of the split, or None.
    """
    a = np.sort(_clean(x))
    if a.size < max(min_seeds, 3):
        return None
    gaps = np.diff(a)
    i = int(np.argmax(gaps))
    lower, upper = a[: i + 1], a[i + 1:]
    spread = (lower.max() - lower.min()) + (upper.max() - upper.min())
    gap = float(gaps[i])
    if gap <= 0:
        return None
    # Absolute floor: values equal up to float noise are not two modes.
    if gap <= 1e-9 * max(1.0, float(np.abs(a).max())):
        return None
    if spread == 0 or gap / spread >= gap_ratio:
        return float(a[i]), float(a[i + 1])
    return None


def seeds_needed(std: float, effect: float, *, std_baseline: float | None = None, alpha: float = 0.05,
                 power: float = 0.8) -> float:
    """Seeds per config for a two-sided test at level `alpha` with `power` to detect `effect`.

    n = (z_{1-alpha/2} + z_{power})^2 * (s^2 + s_b^2) / effect^2   (two independent groups), or
    n = (z_{1-alpha/2} + z_{power})^2 * s^2 / effect^2             (one group against a fixed
    threshold, when `std_baseline` is None). Normal approximation; with the observed std and the
    observed effect plugged in, it is an estimate, not a guarantee. inf when effect is 0 or
    the std is unknown (NaN).
    """
    var = std ** 2 + (std_baseline ** 2 if std_baseline is not None else 0.0)
    if not math.isfinite(var) or not math.isfinite(effect) or effect == 0:
        return float("inf")
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(math.ceil(z ** 2 * var / effect ** 2))
