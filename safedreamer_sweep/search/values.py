"""A trial's value over its seeds: the spread of the seeds' values, their aggregate (mean or IQM), and
the aggregate of their learning curves at env-step rungs every seed has reached (how a trial over
seeds is judged for pruning). Pure functions over numbers.

A seed's value that is None (the seed produced none) is left out; a NaN is kept, so a diverged seed
makes the aggregate NaN (the trial fails in Optuna) rather than flattering the point.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from scipy import stats


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def spread(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean, std (sample, ddof 1), iqm (25% trimmed mean), min, max and the Student-t interval of the
    mean (ci_low, ci_high) of the values that are not None. std and the interval are None below 2 values;
    every statistic is None with no value."""
    xs = _present(values)
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "iqm": None, "min": None, "max": None,
                           "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = math.fsum(xs) / n
    out.update(mean=mean, iqm=float(stats.trim_mean(xs, 0.25)), min=min(xs), max=max(xs))
    if n >= 2:
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def aggregate(values: Sequence[float | None], how: str = "mean") -> float | None:
    """The seeds' aggregate: "mean" or "iqm" (interquartile mean, 25% trimmed) of the values that are not
    None; None when there is none."""
    if how not in ("mean", "iqm"):
        raise ValueError(f"aggregate {how!r}: use 'mean' or 'iqm'")
    xs = _present(values)
    if not xs:
        return None
    return math.fsum(xs) / len(xs) if how == "mean" else float(stats.trim_mean(xs, 0.25))


def aligned(curves: Sequence[Sequence[tuple[int, float]]], how: str = "mean",
            every_steps: int | None = None) -> list[tuple[int, float]]:
    """The seeds' aggregate at env-step rungs every seed has reached, as (rung, value) in step order.

    A seed's value at rung r is its last point with step <= r. A rung counts only when every seed has a
    point with step >= r (it got there) and one with step <= r (it has a value). The rungs are the
    multiples of `every_steps`, or, when it is None, the steps of the first seed's curve."""
    # sorted by step only (stable): of two points at one step, the later one written counts
    seeds = [sorted(((int(s), float(v)) for s, v in curve), key=lambda p: p[0]) for curve in curves]
    if not seeds or any(not c for c in seeds):
        return []
    reached = min(c[-1][0] for c in seeds)
    if every_steps is None:
        rungs = sorted({s for s, _ in seeds[0] if s <= reached})
    else:
        if every_steps <= 0:
            raise ValueError(f"every_steps={every_steps}: rungs are a positive number of env steps apart")
        rungs = list(range(every_steps, reached + 1, every_steps))
    out = []
    for r in rungs:
        at = [_last_at_or_before(c, r) for c in seeds]
        if any(v is None for v in at):
            continue
        value = aggregate(at, how)
        if value is not None:
            out.append((r, value))
    return out


def _last_at_or_before(curve: list[tuple[int, float]], step: int) -> float | None:
    i = bisect.bisect_right([s for s, _ in curve], step)
    return curve[i - 1][1] if i else None
