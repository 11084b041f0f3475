"""The decision: an explicit, configurable rule applied to the tables (the caveats are
analysis/caveats.py).

The rule (report.rule in conf/sweep.yaml), for every config other than the baseline:

  recommended      the evidence is complete (every expected cell of the config and of the baseline
                   trained and evaluated, at least report.min_seeds seeds), AND its
                   `cost_metric` `cost_bound` (default: the upper 95% Student t CI bound of the OOD
                   cost) is below the cost limit, AND the Welch t CI of its `return_metric`
                   difference to the baseline lies above `min_return_gain` (default 0: the CI
                   excludes 0), AND both still hold after Holm's correction across every config
                   compared with the baseline (below).
  not recommended  the evidence is complete and either the cost is above the limit beyond doubt
                   (CI lower bound >= limit; with cost_bound=mean, the mean >= limit) or the return
                   difference's CI lies entirely below `min_return_gain`.
  inconclusive     anything else: holes, too few seeds, a CI that straddles the threshold, or a
                   config that passes alone but not after the correction. The report then
                   estimates how many seeds the observed variance needs.

Multiplicity. Each config's claim "safe and better" is two one-sided tests at level a/2 (a = 1 -
report.confidence): Welch t for the return gain, one-sample t for the cost against the limit (the
same t distributions as the printed CIs, so "CI above 0" is "p < a/2"). The claim's p-value is the
larger of the two (an intersection-union test needs no correction within a config). Across the m
configs compared with the baseline, Holm's step-down method adjusts these p-values; a config is
recommended only when its adjusted p-value is below a/2. The chance of recommending any config when
none truly differs stays at most a/2 however many configs the sweep has (bench/ci_coverage.py
measures it). The decision report names the correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from safedreamer_sweep.report.analysis import stats
from safedreamer_sweep.report.analysis.aggregate import METRICS, Frames
from safedreamer_sweep.report.analysis.tables import complete_seeds
from safedreamer_sweep.report.settings import ReportSettings

RECOMMENDED, NOT_RECOMMENDED, INCONCLUSIVE = "recommended", "not recommended", "inconclusive"


@dataclass
class ConfigDecision:
    """The rule's answer for one config, with every number it used."""

    config: str
    decision: str                      # RECOMMENDED | NOT_RECOMMENDED | INCONCLUSIVE
    reasons: list[str] = field(default_factory=list)
    complete: bool = False
    n: int = 0
    cost_value: float = math.nan       # the cost statistic the rule compared with the limit
    cost_ci: tuple[float, float] = (math.nan, math.nan)
    cost_mean: float = math.nan
    cost_std: float = math.nan
    return_diff: float = math.nan
    return_ci: tuple[float, float] = (math.nan, math.nan)
    return_std: float = math.nan
    baseline_std: float = math.nan
    prob_improvement: float = math.nan
    seeds_needed: float = math.nan     # per config, to settle the rule (nan when settled)
    p_value: float = math.nan          # one-sided p of "safe and better" (max of the rule's two tests)
    p_adjusted: float = math.nan       # the same after Holm's correction across the compared configs


@dataclass
class Decision:
    headline: str                      # recommended: X | inconclusive | not recommended (keep baseline)
    summary: str
    per_config: list[ConfigDecision]
    cost_limit: float
    flips: pd.DataFrame                # which numbers would change a decision, nearest first
    correction: str = ""               # the multiplicity correction applied, in words


@dataclass
class _Doubts:
    """Why a config is not recommended (fails) or not settled (unsure), before Holm's correction."""

    fails: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)


def _row(table: pd.DataFrame, config: str, metric: str) -> dict:
    r = table[(table["config"] == config) & (table["metric"] == metric)]
    return r.iloc[0].to_dict() if len(r) else {}


def _cost_limit(frames: Frames) -> float:
    """The cost limit the evaluations used (the largest when they differ; a caveat says so)."""
    if len(frames.cost_limits) == 1:
        return frames.cost_limits[0]
    return max(frames.cost_limits) if frames.cost_limits else math.nan


def decide(frames: Frames, cov: pd.DataFrame, main: pd.DataFrame, ablation: pd.DataFrame,
           settings: ReportSettings) -> Decision:
    """Apply the rule (module docstring) to every non-baseline config."""
    limit = _cost_limit(frames)
    n_ok = complete_seeds(cov)
    configs = sorted(frames.cells["config"].unique()) if len(frames.cells) else []
    incomplete = set(cov.loc[cov["status"] != "done", "config"]) if len(cov) else set()
    tested: list[tuple[ConfigDecision, _Doubts]] = []
    for config in configs:
        if config == settings.baseline:
            continue
        d = ConfigDecision(config=config, decision=INCONCLUSIVE)
        doubts = _apply_tests(d, frames, main, ablation, settings, limit, n_ok, configs, incomplete)
        tested.append((d, doubts))
    per_config = _settle(tested, limit, settings)
    headline, summary = _headline(per_config, configs, cov, settings)
    return Decision(headline=headline, summary=summary, per_config=per_config, cost_limit=limit,
                    flips=decision_flips(per_config, limit, settings),
                    correction=correction_text(len(per_config), settings))


def _settle(tested: list[tuple[ConfigDecision, _Doubts]], limit: float,
            settings: ReportSettings) -> list[ConfigDecision]:
    """Each config's decision, after Holm's correction across every config compared with the
    baseline (module docstring: Multiplicity)."""
    per_config = [d for d, _ in tested]
    for d, adj in zip(per_config, stats.holm([d.p_value for d in per_config])):
        d.p_adjusted = adj
    m = len(per_config)
    half_alpha = (1.0 - settings.confidence) / 2.0
    for d, doubts in tested:
        fails, unsure = doubts.fails, doubts.unsure
        if d.complete and fails:
            d.decision = NOT_RECOMMENDED
            d.reasons = fails + d.reasons
            continue
        if d.complete and not unsure:
            if d.p_adjusted < half_alpha:
                d.decision = RECOMMENDED
                if m > 1:
                    d.reasons.append(f"Holm-adjusted p = {d.p_adjusted:.3g} < {half_alpha:g} across {m} configs")
                continue
            unsure.append(f"passes on its own (p = {d.p_value:.3g}) but not after Holm's correction across {m} "
                          f"configs compared with {settings.baseline} (adjusted p = {d.p_adjusted:.3g}, "
                          f"needs < {half_alpha:g})")
        d.decision = INCONCLUSIVE
        d.reasons = unsure + [f"(points to: {f})" for f in fails] + d.reasons
        d.seeds_needed = _seeds_needed(d, limit, settings)
    return per_config


def _headline(per_config: list[ConfigDecision], configs: list[str], cov: pd.DataFrame,
              settings: ReportSettings) -> tuple[str, str]:
    """The decision's headline and its one-sentence summary."""
    holes = int((cov["status"] != "done").sum()) if len(cov) else 0
    rec = [d for d in per_config if d.decision == RECOMMENDED]
    if not configs:
        return INCONCLUSIVE, "the store holds no cells yet: nothing to decide."
    if holes:
        pruned = int((cov["status"] == "pruned").sum())
        of_them = f" ({pruned} of them parts of cells a study pruned: not failed, but not measured)" if pruned else ""
        return INCONCLUSIVE, (f"the matrix has {holes} hole(s){of_them}; no config is recommended until every "
                              f"expected cell is trained and evaluated.")
    if rec:
        best = max(rec, key=lambda d: d.return_diff)
        return (f"{RECOMMENDED}: {best.config}",
                f"{best.config} is recommended over {settings.baseline}: " + "; ".join(best.reasons) + ".")
    if per_config and all(d.decision == NOT_RECOMMENDED for d in per_config):
        return (f"{NOT_RECOMMENDED} (keep {settings.baseline})",
                f"no config passes the rule against {settings.baseline}; keep the baseline.")
    return INCONCLUSIVE, ("no config other than the baseline to compare." if not per_config else
                          "the evidence does not settle the rule for " +
                          ", ".join(_with_seeds(d) for d in per_config if d.decision == INCONCLUSIVE) + ".")


def correction_text(m: int, settings: ReportSettings) -> str:
    """The multiplicity correction the rule applied, in one sentence for the decision report."""
    half_alpha = (1.0 - settings.confidence) / 2.0
    tests = ("a Welch t test of the return gain and a one-sample t test of the cost against the limit; "
             "its p-value is the larger of the two" if settings.rule.cost_bound == "ci_high" else
             "a Welch t test of the return gain (the cost is compared by its mean, untested)")
    if m <= 1:
        return (f"No multiplicity correction needed: one config is compared with the baseline. Its claim is "
                f"tested one-sided at level {half_alpha:g}: {tests}.")
    return (f"Holm's step-down correction across the {m} configs compared with {settings.baseline} "
            f"(family-wise error rate {half_alpha:g}, one-sided): each config's claim \"safe and better\" is "
            f"{tests}; a config is recommended only when its Holm-adjusted p-value is below {half_alpha:g}, "
            f"so picking the best of {m} does not inflate the chance of a false recommendation.")


def _apply_tests(d: ConfigDecision, frames: Frames, main: pd.DataFrame, ablation: pd.DataFrame,
                 settings: ReportSettings, limit: float, n_ok: pd.Series, configs: list[str],
                 incomplete: set) -> _Doubts:
    """Fill `d` with the rule's numbers and its unadjusted p-value; return why it fails or is unsure."""
    rule = settings.rule
    cost = _row(main, d.config, rule.cost_metric)
    ret = _row(ablation, d.config, rule.return_metric)
    _fill_numbers(d, cost, ret, main, settings)
    d.n = int(n_ok.get(d.config, 0))
    n_base = int(n_ok.get(settings.baseline, 0))
    d.complete = (d.config not in incomplete and settings.baseline not in incomplete
                  and d.n >= settings.min_seeds and n_base >= settings.min_seeds)
    d.p_value = _claim_p_value(frames.seeds, d.config, settings, limit)
    doubts = _Doubts()
    _check_evidence(d, n_base, settings, configs, incomplete, doubts)
    _test_cost(d, int(cost.get("n", 0)), limit, settings, doubts)
    _test_return(d, ret, settings, doubts)
    return doubts


def _fill_numbers(d: ConfigDecision, cost: dict, ret: dict, main: pd.DataFrame, settings: ReportSettings) -> None:
    """The rule's numbers for `d`: the cost row of the main table, the return row of the ablation."""
    rule = settings.rule
    ret_main = _row(main, d.config, rule.return_metric)
    base_main = _row(main, settings.baseline, rule.return_metric)
    d.cost_mean, d.cost_std = cost.get("mean", math.nan), cost.get("std", math.nan)
    d.cost_ci = (cost.get("ci_low", math.nan), cost.get("ci_high", math.nan))
    d.cost_value = d.cost_mean if rule.cost_bound == "mean" else d.cost_ci[1]
    d.return_diff = ret.get("diff", math.nan)
    d.return_ci = (ret.get("ci_low", math.nan), ret.get("ci_high", math.nan))
    d.prob_improvement = ret.get("prob_improvement", math.nan)
    d.return_std, d.baseline_std = ret_main.get("std", math.nan), base_main.get("std", math.nan)


def _check_evidence(d: ConfigDecision, n_base: int, settings: ReportSettings, configs: list[str],
                    incomplete: set, doubts: _Doubts) -> None:
    """Unsure when the baseline is missing, either side has holes, or too few seeds are complete."""
    if settings.baseline not in configs:
        doubts.unsure.append(f"no baseline {settings.baseline!r} to compare with")
    if d.config in incomplete:
        doubts.unsure.append(f"{d.config} has holes in the matrix")
    if settings.baseline in incomplete:
        doubts.unsure.append(f"the baseline {settings.baseline} has holes in the matrix")
    if d.n < settings.min_seeds or n_base < settings.min_seeds:
        doubts.unsure.append(f"{d.n} complete seed(s) for {d.config} and {n_base} for the baseline, "
                             f"report.min_seeds={settings.min_seeds}")


def _test_cost(d: ConfigDecision, n: int, limit: float, settings: ReportSettings, doubts: _Doubts) -> None:
    """The cost against the limit (`n`: the seeds of the cost row)."""
    rule = settings.rule
    cost_label = METRICS[rule.cost_metric][0]
    cost_name = f"{cost_label} {'mean' if rule.cost_bound == 'mean' else 'CI upper bound'}"
    if math.isfinite(d.cost_mean) and not math.isfinite(d.cost_value):
        doubts.unsure.append(f"{cost_label}: {stats.no_interval_brief(n)}")
    elif not math.isfinite(limit) or not math.isfinite(d.cost_value):
        doubts.unsure.append(f"{cost_name} or the cost limit is unknown")
    elif d.cost_value < limit:
        d.reasons.append(f"{cost_name} {d.cost_value:.2f} < cost limit {limit:g}")
    elif rule.cost_bound == "mean" or d.cost_ci[0] >= limit:
        doubts.fails.append(f"{cost_name} {d.cost_value:.2f} >= cost limit {limit:g}")
    else:
        doubts.unsure.append(f"{cost_label} CI [{d.cost_ci[0]:.2f}, {d.cost_ci[1]:.2f}] straddles the cost "
                             f"limit {limit:g}")


def _test_return(d: ConfigDecision, ret: dict, settings: ReportSettings, doubts: _Doubts) -> None:
    """The return difference to the baseline against report.rule.min_return_gain (`ret`: its ablation row)."""
    rule = settings.rule
    ret_name = f"{METRICS[rule.return_metric][0]} difference to {settings.baseline}"
    lo, hi = d.return_ci
    if math.isfinite(d.return_diff) and not math.isfinite(lo):
        doubts.unsure.append(f"{ret_name} {d.return_diff:+.2f}: "
                             f"{stats.no_interval_brief(int(ret.get('n', 0)), int(ret.get('n_baseline', 0)))}")
    elif not math.isfinite(lo):
        doubts.unsure.append(f"{ret_name} is unknown")
    elif lo > rule.min_return_gain:
        d.reasons.append(f"{ret_name} {d.return_diff:+.2f}, CI [{lo:.2f}, {hi:.2f}] above {rule.min_return_gain:g}")
    elif hi < rule.min_return_gain:
        doubts.fails.append(f"{ret_name} {d.return_diff:+.2f}, CI [{lo:.2f}, {hi:.2f}] below "
                            f"{rule.min_return_gain:g}")
    else:
        doubts.unsure.append(f"{ret_name} {d.return_diff:+.2f} has a CI [{lo:.2f}, {hi:.2f}] that includes "
                             f"{rule.min_return_gain:g}")


def _claim_p_value(seeds: pd.DataFrame, config: str, settings: ReportSettings, limit: float) -> float:
    """One-sided p-value of "config is safe and better than the baseline": the larger of the
    return test's (Welch t) and, with cost_bound=ci_high, the cost test's (t against the limit)."""
    rule = settings.rule
    if not len(seeds) or rule.return_metric not in seeds or rule.cost_metric not in seeds:
        return math.nan
    mine = seeds[seeds["config"] == config]
    base = seeds[seeds["config"] == settings.baseline]
    p = stats.p_greater(mine[rule.return_metric].to_numpy(dtype=float),
                        base[rule.return_metric].to_numpy(dtype=float), rule.min_return_gain)
    if rule.cost_bound == "ci_high":
        p = max(p, stats.p_below(mine[rule.cost_metric].to_numpy(dtype=float), limit))
    return p


def _with_seeds(v: ConfigDecision) -> str:
    """"v2_full (about 12 seeds per config would, at the observed variance)" or just the name."""
    if math.isfinite(v.seeds_needed) and v.seeds_needed <= 1000:
        return f"{v.config} (about {int(v.seeds_needed)} seeds per config would, at the observed variance)"
    return v.config


def _seeds_needed(v: ConfigDecision, limit: float, settings: ReportSettings) -> float:
    """Seeds per config for the rule's two tests to resolve at the observed effect and variance
    (stats.seeds_needed: n = (z_{1-a/2} + z_power)^2 (s^2 + s_b^2) / effect^2)."""
    alpha = 1.0 - settings.confidence
    need = []
    if math.isfinite(v.return_diff):
        need.append(stats.seeds_needed(v.return_std, v.return_diff - settings.rule.min_return_gain,
                                       std_baseline=v.baseline_std, alpha=alpha, power=settings.power))
    if math.isfinite(v.cost_mean) and math.isfinite(limit) and settings.rule.cost_bound == "ci_high":
        need.append(stats.seeds_needed(v.cost_std, limit - v.cost_mean, alpha=alpha, power=settings.power))
    need = [n for n in need if not math.isnan(n)]
    return max(need) if need else math.inf


def decision_flips(per_config: list[ConfigDecision], limit: float, settings: ReportSettings) -> pd.DataFrame:
    """For every config, the rule's two thresholds and how far the deciding bound is from them:
    the smallest distances are the numbers that would change a decision."""
    rule = settings.rule
    rows = []
    for v in per_config:
        if math.isfinite(v.cost_value) and math.isfinite(limit):
            bound = "mean" if rule.cost_bound == "mean" else "CI upper bound"
            rows.append({"config": v.config, "number": f"{METRICS[rule.cost_metric][0]} {bound}",
                         "value": v.cost_value, "threshold": limit, "margin": limit - v.cost_value,
                         "verdict": v.decision})
        if math.isfinite(v.return_ci[0]):
            rows.append({"config": v.config, "number": f"{METRICS[rule.return_metric][0]} diff CI lower bound",
                         "value": v.return_ci[0], "threshold": rule.min_return_gain,
                         "margin": v.return_ci[0] - rule.min_return_gain, "verdict": v.decision})
    df = pd.DataFrame(rows, columns=["config", "number", "value", "threshold", "margin", "verdict"])
    if len(df):
        df = df.assign(_abs=df["margin"].abs()).sort_values(["_abs", "config"]).drop(columns="_abs")
    return df.reset_index(drop=True)
