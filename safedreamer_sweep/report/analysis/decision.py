"""Warnings and the recommendation: an explicit, configurable rule applied to the tables.

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

from safedreamer_sweep.core.confounds import find_confounds, format_confounds
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.report.analysis import stats
from safedreamer_sweep.report.analysis.aggregate import METRICS, Frames
from safedreamer_sweep.report.settings import ReportSettings

RECOMMENDED, NOT_RECOMMENDED, INCONCLUSIVE = "recommended", "not recommended", "inconclusive"


@dataclass
class Warning_:
    kind: str   # holes | seeds | baseline | confound | bimodal | ood_proxy | identity | cost_limit | resume |
                # code | stale_eval | policy
    text: str


@dataclass
class Verdict:
    """The rule's answer for one config, with every number it used."""

    config: str
    verdict: str
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
    verdicts: list[Verdict]
    cost_limit: float
    flips: pd.DataFrame                # which numbers would change a decision, nearest first
    correction: str = ""               # the multiplicity correction applied, in words


def _row(table: pd.DataFrame, config: str, metric: str) -> dict:
    r = table[(table["config"] == config) & (table["metric"] == metric)]
    return r.iloc[0].to_dict() if len(r) else {}


def complete_seeds(cov: pd.DataFrame) -> pd.Series:
    """Per config: how many seeds have train, ID eval and OOD eval all done."""
    if cov.empty:
        return pd.Series(dtype=int)
    done = cov.assign(ok=cov["status"] == "done").groupby(["config", "seed"], observed=True)["ok"].all()
    return done.groupby(level="config").sum().astype(int)


def collect_warnings(frames: Frames, cov: pd.DataFrame, settings: ReportSettings) -> list[Warning_]:
    """Every caveat, in the order the report shows them (before any result)."""
    out: list[Warning_] = []
    bad = cov[cov["status"] != "done"]
    if not len(frames.cells):
        out.append(Warning_("holes", "the store has no expected cells and no run directories: nothing to report."))
    if len(bad):
        by_status = bad.groupby("status").size().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        cells = sorted({f"{r.config} seed {r.seed}" for r in bad.itertuples()})
        out.append(Warning_("holes", f"{len(bad)} of {len(cov)} expected parts (train / ID eval / OOD eval) are "
                                     f"not done ({summary}): {', '.join(cells)}."))
    for problem in frames.corrupt:
        out.append(Warning_("corrupt", problem))
    n_ok = complete_seeds(cov)
    for config in sorted(frames.cells["config"].unique()):
        n = int(n_ok.get(config, 0))
        if n < settings.min_seeds:
            out.append(Warning_("seeds", f"{config}: {n} complete seed(s), fewer than report.min_seeds="
                                         f"{settings.min_seeds}; its numbers cannot support a decision."))
    if len(frames.cells) and settings.baseline not in set(frames.cells["config"]):
        out.append(Warning_("baseline", f"the baseline {settings.baseline!r} (report.baseline) is not in the "
                                        f"matrix; no ablation comparison is possible. Fix: set report.baseline "
                                        f"to one of {sorted(frames.cells['config'].unique())}."))
    for text in find_config_confounds(frames, settings):
        out.append(Warning_("confound", text))
    for metric in settings.bimodal_metrics:
        if metric not in frames.seeds:
            continue
        for config, g in frames.seeds.groupby("config", sort=True):
            split = stats.bimodal_split(g[metric].to_numpy(dtype=float), settings.bimodal_gap_ratio)
            if split:
                lo_seeds = sorted(int(s) for s, v in zip(g["seed"], g[metric]) if v <= split[0])
                hi_seeds = sorted(int(s) for s, v in zip(g["seed"], g[metric]) if v >= split[1])
                out.append(Warning_("bimodal", f"{config}: {metric} splits into two groups of seeds, "
                                               f"{lo_seeds} (<= {split[0]:.2f}) and {hi_seeds} (>= {split[1]:.2f}); "
                                               f"a mean over bifurcating seeds describes neither group "
                                               f"(see per_seed.png)."))
    for proxy in frames.ood_proxy:
        out.append(Warning_("ood_proxy", f"OOD is a proxy: {proxy}"))
    if len(frames.cells) and not frames.ood_proxy:
        out.append(Warning_("ood_proxy", "no OOD evaluation declared what its OOD proxy is (eval/ood.json has no "
                                         "ood_proxy); read OOD numbers as 'a different environment', no more."))
    if frames.extra_run_dirs:
        out.append(Warning_("identity", f"{len(frames.extra_run_dirs)} run dir(s) hold other identities of matrix "
                                        f"cells (an older resolved config) and are not in the tables: "
                                        f"{', '.join(frames.extra_run_dirs[:5])}"
                                        f"{' ...' if len(frames.extra_run_dirs) > 5 else ''}"))
    out.extend(Warning_("resume", text) for text in resume_caveats(frames.cells))
    if len(frames.cost_limits) > 1:
        out.append(Warning_("cost_limit", f"evaluations used different cost limits {frames.cost_limits}; "
                                          f"violation rates are not comparable across them."))
    out.extend(stale_eval_warnings(frames))
    out.extend(policy_warnings(frames))
    code = code_origin_warning(frames)  # first: numbers from different code are not one experiment
    return ([code] if code else []) + out


def _code_label(spec: dict) -> str:
    """`3f2a9c1b0d4e (commit 97c8f4e)`, or `A (...) then B (...)` for a cell continued under accepted code."""
    from safedreamer_sweep.core.identity import describe_code

    chain = [spec.get("code"), *(spec.get("code_accepted") or [])]
    return " then ".join(describe_code(c) for c in chain)


def code_origin_warning(frames: Frames) -> Warning_ | None:
    """Which cells came from which code, when the cells in the tables were not all computed by the
    same code (fingerprints in spec.json; sweep.code_change=accept keeps such cells)."""
    groups: dict[str, list[str]] = {}
    for (config, seed), spec in sorted(frames.specs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if spec and "run_config" in spec:
            groups.setdefault(_code_label(spec), []).append(f"{config} seed {seed}")
    if len(groups) < 2:
        return None
    parts = [f"code {label}: {', '.join(cells)}" for label, cells in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return Warning_("code", f"the cells came from {len(groups)} different versions of the code that trains them "
                            f"(accepted with sweep.code_change=accept, or recorded before code fingerprints), so "
                            f"differences between them may be the code's, not the configs': " + "; ".join(parts) + ".")


def stale_eval_warnings(frames: Frames) -> list[Warning_]:
    """Cells whose evaluation ran on a checkpoint older than their trained steps."""
    from safedreamer_sweep.sweep.observe import stale_evaluations

    es, cells = frames.eval_status, frames.cells
    if not len(es) or "trained_steps" not in cells:
        return []
    trained = {(r.config, r.seed): r.trained_steps for r in cells.itertuples()}
    out: list[Warning_] = []
    for (config, seed), g in es.groupby(["config", "seed"], sort=True):
        steps = {str(r.kind): (None if pd.isna(r.checkpoint_step) else int(r.checkpoint_step)) for r in g.itertuples()}
        t = trained.get((config, seed))
        text = stale_evaluations(steps, None if t is None or pd.isna(t) else int(t))
        if text:
            out.append(Warning_("stale_eval", f"{config} seed {seed}: {text}; its numbers are those of an older "
                                              f"policy (the newest checkpoint was unreadable, or the script saves on "
                                              f"a timer). Fix: evaluate it again from its newest checkpoint."))
    return out


def policy_warnings(frames: Frames) -> list[Warning_]:
    """The built-in trainer enforces the cost limit on the policy it trains, evaluation runs another."""
    kinds = {((spec.get("run_config") or {}).get("task") or {}).get("kind") for spec in frames.specs.values() if spec}
    if "builtin" not in kinds:
        return []
    return [Warning_("policy", "the cost limit was enforced during training on the stochastic policy (sampled "
                               "actions: the Lagrange multiplier and the certified step see those episodes' costs), "
                               "while every evaluation here runs the deterministic policy (the mean action), whose "
                               "cost can be lower or higher: read the cost numbers as the deterministic policy's.")]


def resume_caveats(cells: pd.DataFrame) -> list[str]:
    """What a resumed cell's resume did not restore (state.json `resumes`, written by the external
    task adapter: e.g. SafeDreamer's replay buffer and PID-Lagrangian state), and the frames it
    trained twice. A resumed run is not the same experiment as an uninterrupted one."""
    from pathlib import Path

    from safedreamer_sweep.core.store import RunDir

    out = []
    for r in cells.itertuples():
        if not isinstance(getattr(r, "run_dir", None), str):
            continue
        try:
            resumes = RunDir(Path(r.run_dir)).read_state().get("resumes") or []
        except Exception:  # noqa: BLE001, S112  an unreadable state is reported as corrupt elsewhere
            continue
        for e in resumes:
            missing = ", ".join(e.get("not_restored") or []) or "nothing declared"
            seed = int(r.seed) if isinstance(r.seed, (int, float)) and r.seed == r.seed else r.seed
            out.append(f"{r.config} seed {seed}: attempt {e.get('attempt')} resumed from env step "
                       f"{e.get('from_step')} (the previous attempt had reached {e.get('reached')}: "
                       f"{e.get('lost_frames')} frames trained again); the resume did not restore: {missing}.")
    return out


def find_config_confounds(frames: Frames, settings: ReportSettings) -> list[str]:
    """Keys of the resolved run configs (spec.json) that differ between configs beyond the
    declared ablation knobs (sweep.ablation_knobs), by safedreamer_sweep.core.confounds.find_confounds
    (the same check the launcher runs before a sweep; here it covers what was actually run)."""
    specs = [RunSpec(config=c, seed=s, hash=str(sp.get("hash")), run_config=sp["run_config"])
             for (c, s), sp in sorted(frames.specs.items()) if sp.get("run_config")]
    knobs = list(settings.ablation_knobs)
    knob_text = ("declared ablation knobs: " + ", ".join(knobs)) if knobs else "no ablation knobs declared"
    return [f"{f.key} differs between configs beyond the ablation knobs ({knob_text}):"
            f"{format_confounds([f]).split(':', 1)[1]}" for f in find_confounds(specs, knobs)]


def decide(frames: Frames, cov: pd.DataFrame, main: pd.DataFrame, ablation: pd.DataFrame,
           settings: ReportSettings) -> Decision:
    """Apply the rule (module docstring) to every non-baseline config."""
    limit = frames.cost_limits[0] if len(frames.cost_limits) == 1 else (
        max(frames.cost_limits) if frames.cost_limits else math.nan)
    n_ok = complete_seeds(cov)
    configs = sorted(frames.cells["config"].unique()) if len(frames.cells) else []
    incomplete = set(cov.loc[cov["status"] != "done", "config"]) if len(cov) else set()
    half_alpha = (1.0 - settings.confidence) / 2.0
    verdicts: list[Verdict] = []
    pending: list[tuple[Verdict, list[str], list[str]]] = []
    for config in configs:
        if config == settings.baseline:
            continue
        v = Verdict(config=config, verdict=INCONCLUSIVE)
        fails, unsure = _apply_tests(v, frames, cov, main, ablation, settings, limit, n_ok, configs, incomplete)
        verdicts.append(v)
        pending.append((v, fails, unsure))

    # Holm across every config compared with the baseline (module docstring: Multiplicity).
    for v, adj in zip(verdicts, stats.holm([v.p_value for v in verdicts])):
        v.p_adjusted = adj
    m = len(verdicts)
    for v, fails, unsure in pending:
        if v.complete and fails:
            v.verdict = NOT_RECOMMENDED
            v.reasons = fails + v.reasons
            continue
        if v.complete and not unsure:
            if v.p_adjusted < half_alpha:
                v.verdict = RECOMMENDED
                if m > 1:
                    v.reasons.append(f"Holm-adjusted p = {v.p_adjusted:.3g} < {half_alpha:g} across {m} configs")
                continue
            unsure.append(f"passes on its own (p = {v.p_value:.3g}) but not after Holm's correction across {m} "
                          f"configs compared with {settings.baseline} (adjusted p = {v.p_adjusted:.3g}, "
                          f"needs < {half_alpha:g})")
        v.verdict = INCONCLUSIVE
        v.reasons = unsure + [f"(points to: {f})" for f in fails] + v.reasons
        v.seeds_needed = _seeds_needed(v, limit, settings)

    holes = int((cov["status"] != "done").sum()) if len(cov) else 0
    rec = [v for v in verdicts if v.verdict == RECOMMENDED]
    if not configs:
        headline = INCONCLUSIVE
        summary = "the store holds no cells yet: nothing to decide."
    elif holes:
        headline = INCONCLUSIVE
        summary = (f"the matrix has {holes} hole(s); no config is recommended until every "
                   f"expected cell is trained and evaluated.")
    elif rec:
        best = max(rec, key=lambda v: v.return_diff)
        headline = f"{RECOMMENDED}: {best.config}"
        summary = (f"{best.config} is recommended over {settings.baseline}: " + "; ".join(best.reasons) + ".")
    elif verdicts and all(v.verdict == NOT_RECOMMENDED for v in verdicts):
        headline = f"{NOT_RECOMMENDED} (keep {settings.baseline})"
        summary = f"no config passes the rule against {settings.baseline}; keep the baseline."
    else:
        headline = INCONCLUSIVE
        summary = ("no config other than the baseline to compare." if not verdicts else
                                      "the evidence does not settle the rule for " +
                                      ", ".join(_with_seeds(v) for v in verdicts if v.verdict == INCONCLUSIVE) + ".")
    return Decision(headline=headline, summary=summary, verdicts=verdicts, cost_limit=limit,
                    flips=decision_flips(verdicts, limit, settings),
                    correction=correction_text(m, settings))


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


def _apply_tests(v: Verdict, frames: Frames, cov: pd.DataFrame, main: pd.DataFrame, ablation: pd.DataFrame,
                 settings: ReportSettings, limit: float, n_ok: pd.Series, configs: list[str],
                 incomplete: set) -> tuple[list[str], list[str]]:
    """Fill `v` with the rule's numbers and its unadjusted p-value; return (fails, unsure) reasons."""
    rule, config = settings.rule, v.config
    v.n = int(n_ok.get(config, 0))
    cost = _row(main, config, rule.cost_metric)
    ret = _row(ablation, config, rule.return_metric)
    ret_main = _row(main, config, rule.return_metric)
    base_main = _row(main, settings.baseline, rule.return_metric)
    v.cost_mean, v.cost_std = cost.get("mean", math.nan), cost.get("std", math.nan)
    v.cost_ci = (cost.get("ci_low", math.nan), cost.get("ci_high", math.nan))
    v.cost_value = v.cost_mean if rule.cost_bound == "mean" else v.cost_ci[1]
    v.return_diff = ret.get("diff", math.nan)
    v.return_ci = (ret.get("ci_low", math.nan), ret.get("ci_high", math.nan))
    v.prob_improvement = ret.get("prob_improvement", math.nan)
    v.return_std, v.baseline_std = ret_main.get("std", math.nan), base_main.get("std", math.nan)
    n_base = int(n_ok.get(settings.baseline, 0))
    v.complete = (config not in incomplete and settings.baseline not in incomplete
                  and v.n >= settings.min_seeds and n_base >= settings.min_seeds)
    v.p_value = _claim_p_value(frames.seeds, config, settings, limit)

    fails, unsure = [], []
    if settings.baseline not in configs:
        unsure.append(f"no baseline {settings.baseline!r} to compare with")
    if config in incomplete:
        unsure.append(f"{config} has holes in the matrix")
    if settings.baseline in incomplete:
        unsure.append(f"the baseline {settings.baseline} has holes in the matrix")
    if v.n < settings.min_seeds or n_base < settings.min_seeds:
        unsure.append(f"{v.n} complete seed(s) for {config} and {n_base} for the baseline, "
                      f"report.min_seeds={settings.min_seeds}")
    # Cost against the limit.
    cost_label = METRICS[rule.cost_metric][0]
    cost_name = f"{cost_label} {'mean' if rule.cost_bound == 'mean' else 'CI upper bound'}"
    if math.isfinite(v.cost_mean) and not math.isfinite(v.cost_value):
        unsure.append(f"{cost_label}: {stats.no_interval_brief(int(cost.get('n', 0)))}")
    elif not math.isfinite(limit) or not math.isfinite(v.cost_value):
        unsure.append(f"{cost_name} or the cost limit is unknown")
    elif v.cost_value < limit:
        v.reasons.append(f"{cost_name} {v.cost_value:.2f} < cost limit {limit:g}")
    elif rule.cost_bound == "mean" or v.cost_ci[0] >= limit:
        fails.append(f"{cost_name} {v.cost_value:.2f} >= cost limit {limit:g}")
    else:
        unsure.append(f"{cost_label} CI [{v.cost_ci[0]:.2f}, {v.cost_ci[1]:.2f}] straddles the cost limit {limit:g}")
    # Return against the baseline.
    ret_name = f"{METRICS[rule.return_metric][0]} difference to {settings.baseline}"
    lo, hi = v.return_ci
    if math.isfinite(v.return_diff) and not math.isfinite(lo):
        unsure.append(f"{ret_name} {v.return_diff:+.2f}: "
                      f"{stats.no_interval_brief(int(ret.get('n', 0)), int(ret.get('n_baseline', 0)))}")
    elif not math.isfinite(lo):
        unsure.append(f"{ret_name} is unknown")
    elif lo > rule.min_return_gain:
        v.reasons.append(f"{ret_name} {v.return_diff:+.2f}, CI [{lo:.2f}, {hi:.2f}] above {rule.min_return_gain:g}")
    elif hi < rule.min_return_gain:
        fails.append(f"{ret_name} {v.return_diff:+.2f}, CI [{lo:.2f}, {hi:.2f}] below {rule.min_return_gain:g}")
    else:
        unsure.append(f"{ret_name} {v.return_diff:+.2f} has a CI [{lo:.2f}, {hi:.2f}] that includes "
                      f"{rule.min_return_gain:g}")
    return fails, unsure


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


def _with_seeds(v: Verdict) -> str:
    """"v2_full (about 12 seeds per config would, at the observed variance)" or just the name."""
    if math.isfinite(v.seeds_needed) and v.seeds_needed <= 1000:
        return f"{v.config} (about {int(v.seeds_needed)} seeds per config would, at the observed variance)"
    return v.config


def _seeds_needed(v: Verdict, limit: float, settings: ReportSettings) -> float:
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


def decision_flips(verdicts: list[Verdict], limit: float, settings: ReportSettings) -> pd.DataFrame:
    """For every config, the rule's two thresholds and how far the deciding bound is from them:
    the smallest distances are the numbers that would change a decision."""
    rule = settings.rule
    rows = []
    for v in verdicts:
        if math.isfinite(v.cost_value) and math.isfinite(limit):
            bound = "mean" if rule.cost_bound == "mean" else "CI upper bound"
            rows.append({"config": v.config, "number": f"{METRICS[rule.cost_metric][0]} {bound}",
                         "value": v.cost_value, "threshold": limit, "margin": limit - v.cost_value,
                         "verdict": v.verdict})
        if math.isfinite(v.return_ci[0]):
            rows.append({"config": v.config, "number": f"{METRICS[rule.return_metric][0]} diff CI lower bound",
                         "value": v.return_ci[0], "threshold": rule.min_return_gain,
                         "margin": v.return_ci[0] - rule.min_return_gain, "verdict": v.verdict})
    df = pd.DataFrame(rows, columns=["config", "number", "value", "threshold", "margin", "verdict"])
    if len(df):
        df = df.assign(_abs=df["margin"].abs()).sort_values(["_abs", "config"]).drop(columns="_abs")
    return df.reset_index(drop=True)
