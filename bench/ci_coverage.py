"""Benchmark: simulated coverage of every interval the report prints, and the false-recommendation
rate of its decision rule (issue 10.1).

    .venv/bin/python bench/ci_coverage.py [--sims 2000] [--decision-sims 1000] [--rliable]

For each data shape (normal, two lognormals, two-cluster "bifurcating seeds") and n = 2, 3, 5, 10
seeds, draw `--sims` samples with a known true value and count how often the report's interval
holds it:

  mean CI           stats.summarize: the main table's CI of a config's mean (and the decision's
                    cost bound), nominal 0.95
  mean CI upper     its upper bound alone, nominal 0.975: what "cost CI upper bound < limit" needs
  difference CI     stats.compare: the ablation table's CI of config mean - baseline mean (config =
                    baseline shape shifted by +1), nominal 0.95
  curve band        stats.curve_bands: the learning-curve band, pointwise over 4 curve points,
                    nominal 0.95
  rliable IQM CI    (--rliable; NOT printed by the report) rliable's stratified percentile bootstrap
                    of the IQM, shown to say why the report prints IQM as a point estimate only

"-" means the method prints no interval at that n (the report says "no interval" instead).
Then the full decision rule (tables.main_table, tables.ablation_table, decision.decide) on 3
configs and the baseline, n = 5 seeds each, all drawn from one distribution (no true difference),
costs far below the limit so the return test alone decides: the fraction of sweeps where any
config is recommended. Goals: coverage >= 0.93 at n >= 3 on normal and lognormal data (sigma =
0.25; sigma = 0.5 is shown as a harder case), false-recommendation rate <= 0.05.

Runs against whatever `safedreamer_sweep` is importable: to measure another version, put its
package first on PYTHONPATH (e.g. `git archive HEAD safedreamer_sweep | tar -x -C /tmp/old` then
`PYTHONPATH=/tmp/old python bench/ci_coverage.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from safedreamer_sweep.report.analysis import decision, stats, tables
from safedreamer_sweep.report.analysis.aggregate import METRICS, Frames
from safedreamer_sweep.report.settings import ReportSettings

NS = (2, 3, 5, 10)
CONFIDENCE = 0.95
GOAL_COVERAGE, GOAL_FALSE_REC = 0.93, 0.05


@dataclasses.dataclass(frozen=True)
class Shape:
    """A data-generating distribution of per-seed values with its true mean and IQM."""

    name: str
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
    goal: bool  # does the coverage goal apply to it?

    def truth(self) -> tuple[float, float]:
        big = self.draw(np.random.default_rng(12345), (2_000_000,))
        return float(big.mean()), float(stats.iqm(big))


def _two_cluster(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    # 60% of seeds succeed (around 10), 40% collapse (around 0): bifurcating seeds.
    ok = rng.random(size) < 0.6
    return np.where(ok, rng.normal(10.0, 1.0, size), rng.normal(0.0, 1.0, size))


SHAPES = [
    Shape("normal(10, 2)", lambda r, s: r.normal(10.0, 2.0, s), True),
    Shape("lognormal(0, 0.25)", lambda r, s: r.lognormal(0.0, 0.25, s), True),
    Shape("lognormal(0, 0.5)", lambda r, s: r.lognormal(0.0, 0.5, s), False),
    Shape("two-cluster 60/40", _two_cluster, False),
]


def _covers(lo: float, hi: float, truth: float) -> float:
    """1 or 0, NaN when the method gave no interval."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return float(lo <= truth <= hi)


def _rate(hits: list[float]) -> float:
    """Coverage over the simulations that produced an interval; NaN when none did."""
    a = np.asarray(hits, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size and a.size >= 0.5 * len(hits) else math.nan


def coverage_rows(sims: int, use_rliable: bool, seed: int = 0) -> pd.DataFrame:
    """One row per (interval, shape), one column per n."""
    rng = np.random.default_rng(seed)
    rows = []
    for shape in SHAPES:
        true_mean, true_iqm = shape.truth()
        for n in NS:
            hits: dict[str, list[float]] = {k: [] for k in ("mean CI", "mean CI upper", "difference CI",
                                                            "curve band", "rliable IQM CI")}
            for i in range(sims):
                x = shape.draw(rng, (n,))
                s = stats.summarize(x, confidence=CONFIDENCE)
                hits["mean CI"].append(_covers(s["ci_low"], s["ci_high"], true_mean))
                hits["mean CI upper"].append(float(true_mean <= s["ci_high"]) if math.isfinite(s["ci_high"])
                                             else math.nan)
                base = shape.draw(rng, (n,))
                c = stats.compare(x + 1.0, base, confidence=CONFIDENCE)
                hits["difference CI"].append(_covers(c["ci_low"], c["ci_high"], 1.0))
                curves = shape.draw(rng, (n, 4)) + np.arange(4.0)
                _, lo, hi = stats.curve_bands(curves, confidence=CONFIDENCE)
                for p in range(4):
                    hits["curve band"].append(_covers(lo[p], hi[p], true_mean + p))
                if use_rliable and n >= 5 and i < min(sims, 100):
                    hits["rliable IQM CI"].append(_rliable_iqm_covers(x, true_iqm, i))
            for k, h in hits.items():
                if h:
                    rows.append({"interval": k, "data": shape.name, "n": n, "coverage": _rate(h)})
    df = pd.DataFrame(rows)
    out = df.pivot_table(index=["interval", "data"], columns="n", values="coverage", sort=False, dropna=False)
    out.columns = [f"n={c}" for c in out.columns]
    return out


def _rliable_iqm_covers(x: np.ndarray, true_iqm: float, seed: int) -> float:
    """rliable as its authors use it: get_interval_estimates over a (runs x tasks) matrix, IQM as
    the aggregate, stratified percentile bootstrap (one task here)."""
    from rliable import library as rly
    from rliable import metrics as rm

    if x.size < 2:
        return math.nan
    _, ci = rly.get_interval_estimates({"x": x[:, None]}, lambda s: np.array([rm.aggregate_iqm(s)]),
                                       reps=1000, random_state=np.random.RandomState(seed))
    lo, hi = np.asarray(ci["x"]).ravel()[:2]
    return _covers(float(lo), float(hi), true_iqm)


def _frames(seeds: pd.DataFrame, limit: float) -> Frames:
    """A Frames holding only what the decision rule reads (cells, seeds, cost limit); every other
    field empty of its type, so this works across versions of Frames."""
    given = {"store_root": Path("."), "cells": seeds[["config", "seed"]].copy(), "seeds": seeds,
             "cost_limits": [limit]}
    kw = {}
    for f in dataclasses.fields(Frames):
        if f.name in given:
            kw[f.name] = given[f.name]
        else:
            t = str(f.type)
            kw[f.name] = (pd.DataFrame() if "DataFrame" in t else [] if t.startswith("list") else {}
                          if t.startswith("dict") else False if t == "bool" else None)
    return Frames(**kw)


def false_recommendation_rate(sims: int, shape: Shape, n: int = 5, configs: int = 3, seed: int = 1) -> float:
    """Fraction of no-difference sweeps in which the full decision rule recommends a config."""
    rng = np.random.default_rng(seed)
    settings = ReportSettings(min_seeds=n, figures=False, templates=())
    names = [settings.baseline] + [f"variant_{i}" for i in range(configs)]
    limit = 25.0
    wins = 0
    for _ in range(sims):
        rows = []
        for name in names:
            ret = shape.draw(rng, (n,))
            for s in range(n):
                row = dict.fromkeys(METRICS, math.nan)
                row.update(config=name, seed=s, id_return=ret[s], ood_return=ret[s],
                           id_cost=rng.normal(5.0, 1.0), ood_cost=rng.normal(5.0, 1.0))
                rows.append(row)
        seeds = pd.DataFrame(rows)
        cov = pd.DataFrame([{"config": c, "seed": s, "part": p, "status": "done"}
                            for c in names for s in range(n) for p in ("train", "id", "ood")])
        main = tables.main_table(seeds, settings)
        abl = tables.ablation_table(seeds, settings)
        d = decision.decide(_frames(seeds, limit), cov, main, abl, settings)
        wins += d.headline.startswith(decision.RECOMMENDED)
    return wins / sims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000, help="samples per (interval, data, n) cell")
    ap.add_argument("--decision-sims", type=int, default=1000, help="simulated sweeps for the decision rule")
    ap.add_argument("--rliable", action="store_true", help="also measure rliable's IQM bootstrap CI (slow)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"stats module: {stats.__file__}")
    cov = coverage_rows(args.sims, args.rliable)
    pd.set_option("display.width", 200)
    print(f"\nCoverage of nominal {CONFIDENCE:.0%} intervals ({args.sims} samples each; the mean CI upper "
          f"bound's nominal one-sided coverage is {1 - (1 - CONFIDENCE) / 2:.3f}):\n")
    print(cov.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
    goal_cells = cov[cov.index.get_level_values("data").isin([s.name for s in SHAPES if s.goal])]
    goal_cells = goal_cells.drop(index=["mean CI upper", "rliable IQM CI"], level="interval", errors="ignore")
    worst = float(np.nanmin(goal_cells[["n=3", "n=5", "n=10"]].to_numpy()))
    print(f"\nworst coverage at n >= 3 on {', '.join(s.name for s in SHAPES if s.goal)} (printed intervals): "
          f"{worst:.3f} (goal >= {GOAL_COVERAGE}) -> {'met' if worst >= GOAL_COVERAGE else 'NOT met'}")
    print(f"\nFalse-recommendation rate of the decision rule (3 configs vs baseline, n=5, no true difference, "
          f"{args.decision_sims} sweeps):")
    for shape in SHAPES[:2] if args.decision_sims > 0 else []:
        rate = false_recommendation_rate(args.decision_sims, shape)
        se = math.sqrt(max(rate * (1 - rate), 1e-12) / args.decision_sims)
        print(f"  returns {shape.name:<20} {rate:.3f} (± {1.96 * se:.3f}; goal <= {GOAL_FALSE_REC}) -> "
              f"{'met' if rate <= GOAL_FALSE_REC else 'NOT met'}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
