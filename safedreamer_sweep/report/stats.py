"""Statistics for a handful of seeds: pure functions over numpy arrays and tidy pandas frames.

The model is rliable's (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"):
report the interquartile mean (IQM) beside the mean, give every point estimate a stratified
bootstrap confidence interval, and compare two configs by their probability of improvement.

One bootstrap routine (`stratified_bootstrap`) serves every interval: it is a small vectorised
numpy percentile bootstrap, not `scipy.stats.bootstrap`, because a report computes thousands of
intervals (every config x metric x curve point) and scipy's per-call overhead and its BCa default
(which fails on constant samples) cost more than the whole report otherwise does. Each stratum
(the seeds of one config) is resampled with replacement at its own size, independently of the
others, which is what "stratified" means here: a difference between two configs never borrows
seeds across them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

Statistic = Callable[..., np.ndarray]


def _clean(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def iqm(x: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of values (25% trimmed from each end).

    Robust to one collapsed seed, less noisy than the median. Works along `axis` so the bootstrap
    can evaluate it on every replicate at once.
    """
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return float("nan")
    out = sps.trim_mean(a, 0.25, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Arithmetic mean along `axis` (the statistic function form the bootstrap expects)."""
    return np.mean(x, axis=axis)


def stratified_bootstrap(
    strata: Sequence[Sequence[float] | np.ndarray],
    statistic: Statistic,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic(*strata)`.

    `strata` is a list of 1-D samples (e.g. the per-seed values of one config, or of a config and
    the baseline). Each replicate resamples every stratum with replacement at its own size;
    `statistic` receives one array per stratum, shaped (reps, n_i), and returns one value per
    replicate (reduce along axis -1). Returns (low, high) of the central `confidence` interval;
    (nan, nan) when a stratum is empty. A single-seed stratum gives a zero-width interval, which
    is honest about the bootstrap (it cannot see variance it has no sample of) and is why the
    report flags configs with fewer than `report.min_seeds` seeds before showing any number.
    """
    samples = [_clean(s) for s in strata]
    if any(s.size == 0 for s in samples):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = [s[rng.integers(0, s.size, size=(reps, s.size))] for s in samples]
    values = np.asarray(statistic(*resampled), dtype=float)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                               higher_is_better: bool = True) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all seed pairs: the chance that a random seed of X beats a
    random seed of Y (the Mann-Whitney U statistic divided by n_x * n_y). For a cost, pass
    `higher_is_better=False` so that "improvement" means "lower"."""
    a, b = _clean(x), _clean(y)
    if a.size == 0 or b.size == 0:
        return float("nan")
    if not higher_is_better:
        a, b = -a, -b
    diff = a[:, None] - b[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def summarize(x: Sequence[float] | np.ndarray, *, reps: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> dict[str, float]:
    """n, mean, std (ddof=1), IQM, and the bootstrap CI of the mean, of one sample."""
    a = _clean(x)
    n = int(a.size)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "std": nan, "iqm": nan, "ci_low": nan, "ci_high": nan}
    low, high = stratified_bootstrap([a], mean, reps=reps, confidence=confidence, seed=seed)
    return {"n": n, "mean": float(a.mean()), "std": float(a.std(ddof=1)) if n > 1 else float("nan"),
            "iqm": float(iqm(a)), "ci_low": low, "ci_high": high}


def compare(x: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, *,
            higher_is_better: bool = True, reps: int = 2000, confidence: float = 0.95,
            seed: int = 0) -> dict[str, float]:
    """`x` against `baseline`: difference of means with its stratified bootstrap CI, and the
    probability of improvement."""
    a, b = _clean(x), _clean(baseline)
    nan = float("nan")
    if a.size == 0 or b.size == 0:
        return {"n": int(a.size), "n_baseline": int(b.size), "diff": nan, "ci_low": nan, "ci_high": nan,
                "prob_improvement": nan}
    low, high = stratified_bootstrap([a, b], lambda p, q: p.mean(-1) - q.mean(-1), reps=reps,
                                     confidence=confidence, seed=seed)
    return {"n": int(a.size), "n_baseline": int(b.size), "diff": float(a.mean() - b.mean()),
            "ci_low": low, "ci_high": high,
            "prob_improvement": probability_of_improvement(a, b, higher_is_better)}


def curve_bands(values: np.ndarray, *, reps: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and bootstrap CI band of learning curves, per curve point, for a (seeds, points)
    array that may hold NaN where a seed has no point yet. Seeds are resampled jointly across
    points (a seed is one unit), all points at once."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[0] == 0:
        empty = np.full(v.shape[-1] if v.ndim else 0, np.nan)
        return empty, empty, empty
    rng = np.random.default_rng(seed)
    n = v.shape[0]
    alpha = (1.0 - confidence) / 2.0
    if np.isfinite(v).all():
        # The common case. A resample of n seeds with replacement is a multinomial count per seed,
        # so every replicate's mean curve is one row of counts @ curves / n: a small matrix product
        # instead of a (reps, seeds, points) array.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=reps)
        boot = counts @ v / n  # (reps, points)
        low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
        return v.mean(axis=0), low, high
    idx = rng.integers(0, n, size=(reps, n))
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        m = np.nanmean(v, axis=0)
        boot = np.nanmean(v[idx], axis=1)
        low, high = np.nanquantile(boot, [alpha, 1.0 - alpha], axis=0)
    return m, low, high


def bimodal_split(x: Sequence[float] | np.ndarray, gap_ratio: float = 2.0,
                  min_seeds: int = 4) -> tuple[float, float] | None:
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


class _quiet_nan_warnings:
    """Silence numpy's 'Mean of empty slice' for curve points no seed reached (they stay NaN)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
