"""The decision report (Markdown). Order is the point: the matrix and its coverage first, then
every warning, then the decision and the numbers behind it, then what would change it, then cost."""

from __future__ import annotations

import math

import pandas as pd

from safedreamer_sweep.core.durations import format_duration
from safedreamer_sweep.report.analysis import stats, tables
from safedreamer_sweep.report.analysis.aggregate import METRICS
from safedreamer_sweep.report.analysis.decision import INCONCLUSIVE
from safedreamer_sweep.report.render import studies, text
from safedreamer_sweep.report.result import Report

_SEEDS_FORMULA = "n = ⌈(z₁₋α/₂ + z_power)² · (s² + s_b²) / δ²⌉"


def fmt_seeds(n: float) -> str:
    if not math.isfinite(n):
        return "not estimable (zero observed effect or unknown variance)"
    if n > 1000:
        return f"{int(n)} (the observed effect is negligible next to the seed variance: more seeds will not settle it)"
    return str(int(n))


def decision_markdown(r: Report) -> str:
    """The whole decision report as Markdown text: the lead (coverage, decision), then one section
    each for the matrix, the warnings, the decision, the key metrics, what would flip it and the cost."""
    L = [f"# Decision report: `{r.frames.store_root}`", ""]
    L += _lead(r)
    L += _matrix_section(r)
    L += _warnings_section(r)
    L += _decision_section(r)
    L += _metrics_section(r)
    L += _flips_section(r)
    L += ["## 6. Cost spent", "", *cost_lines(r), ""]
    for i, view in enumerate(r.studies):  # none in a store without studies: the report is as it was
        L += studies.markdown_section(view, 7 + i)
    return "\n".join(L)


def _lead(r: Report) -> list[str]:
    """What the evidence covers, then the decision in one line."""
    cov, d = r.coverage, r.decision
    n_parts, n_done = len(cov), int((cov["status"] == "done").sum()) if len(cov) else 0
    hole_rows = tables.holes(cov)
    if len(hole_rows):
        cells = sorted({f"{x.config} seed {x.seed} ({x.part}: {x.status})" for x in hole_rows.itertuples()})
        L = [(f"**{len(hole_rows)} hole(s) in the matrix** — {n_done} of {n_parts} parts done. "
              f"Missing or unfinished: {'; '.join(cells[:20])}{' ...' if len(cells) > 20 else ''}."), ""]
    elif n_parts == 0:
        L = ["**Empty store**: no sweep manifest asks for any cell and no run directory exists yet.", ""]
    else:
        L = [f"**Coverage complete**: {n_done} of {n_parts} parts done (train, ID eval, OOD eval).", ""]
    L += [f"**Study {v.name}**: {studies.summary_line(v)}." for v in r.studies] + ([""] if r.studies else [])
    return [*L, f"**Decision: {d.headline}** — {d.summary}", ""]


def _matrix_section(r: Report) -> list[str]:
    """1. The config x seed coverage matrix, and the cause of every hole."""
    cov, cells = r.coverage, r.frames.cells
    configs = sorted(cells["config"].unique()) if len(cells) else []
    seeds = sorted(cells["seed"].unique()) if len(cells) else []
    L = ["## 1. Experiment matrix and coverage", "",
         (f"{len(configs)} config(s) x {len(seeds)} seed(s) = {len(cells)} cells, each trained, "
          f"evaluated in-distribution (ID) and out-of-distribution (OOD). Each entry shows train / ID / OOD: "
          f"✓ done, … running, – missing or pending, ✗ failed, ✂ pruned by a study (not failed), ! corrupt file. "
          f"(coverage.png; train_status.tsv and "
          f"eval_status.tsv list every cell and every evaluation.)"), "",
         text.to_markdown(tables.coverage_matrix(cov))]
    hole_rows = tables.holes(cov)
    if len(hole_rows):
        causes = cells.set_index(["config", "seed"])
        L += ["| config | seed | part | status | last cause | evidence |", "|---|---|---|---|---|---|"]
        for x in hole_rows.itertuples():
            c = causes.loc[(x.config, x.seed)] if (x.config, x.seed) in causes.index else None
            cause = (c["last_cause"] if c is not None and isinstance(c["last_cause"], str) else "")
            ev = (c["last_evidence"] if c is not None and isinstance(c["last_evidence"], str) else "")
            L.append(f"| {x.config} | {x.seed} | {x.part} | {x.status} | {cause} | {ev[:80].replace('|', '/')} |")
        L.append("")
    return L


def _warnings_section(r: Report) -> list[str]:
    """2. Every warning, before any number."""
    return ["## 2. Warnings (read before any number)", "",
            *([f"- **{w.kind}**: {w.text}" for w in r.warnings] or ["- none"]), ""]


def _decision_section(r: Report) -> list[str]:
    """3. The rule, the multiplicity correction, and each config's decision with the seeds it needs."""
    s, d = r.settings, r.decision
    rule = s.rule
    L = ["## 3. Decision", "",
         f"**{d.headline}**. {d.summary}", "",
         ("Rule (report.rule in conf/sweep.yaml): a config is *recommended* over the baseline "
          f"`{s.baseline}` only if every expected cell of both is trained and evaluated with at least "
          f"{s.min_seeds} seeds (report.min_seeds), its {METRICS[rule.cost_metric][0]} "
          f"{'mean' if rule.cost_bound == 'mean' else f'{int(s.confidence * 100)}% CI upper bound'} is below the "
          f"cost limit ({d.cost_limit:g}), and the {int(s.confidence * 100)}% Welch t CI of its "
          f"{METRICS[rule.return_metric][0]} difference to the baseline lies above {rule.min_return_gain:g}. "
          "It is *not recommended* when complete evidence puts it beyond either threshold; otherwise it is "
          "*inconclusive*."), "",
         f"Multiplicity: {d.correction}", ""]
    if not d.per_config:
        return [*L, f"No config other than the baseline `{s.baseline}` to decide on.", ""]
    L += ["| config | verdict | complete seeds | reasons | seeds needed per config |", "|---|---|---|---|---|"]
    for v in d.per_config:
        need = fmt_seeds(v.seeds_needed) if v.decision == INCONCLUSIVE else "—"
        L.append(f"| {v.config} | **{v.decision}** | {v.n} | {'; '.join(v.reasons)} | {need} |")
    if any("no interval" in reason for v in d.per_config for reason in v.reasons):
        L += ["", stats.NO_INTERVAL_NOTE]
    return [*L, "", (f"Seeds needed: the normal-approximation sample size to resolve each of the rule's tests at "
                     f"the observed effect δ and standard deviations, {_SEEDS_FORMULA} with α = {1 - s.confidence:.2f}, "
                     f"power = {s.power:g}; for the return test δ = observed difference − {rule.min_return_gain:g}, "
                     f"s and s_b the config's and the baseline's seed std; for the cost test δ = limit − mean cost "
                     f"and s_b = 0. An estimate from few seeds, not a guarantee."), ""]


def _metrics_section(r: Report) -> list[str]:
    """4. The main and ablation tables (each caveat once, under its table), with what each interval
    is and what it is not."""
    s = r.settings
    return ["## 4. Key metrics", "",
            (f"Per config: the mean over seeds and the {int(s.confidence * 100)}% Student t CI of the mean; "
             f"n = seeds behind the number. Violation rate = fraction of evaluation episodes with cost > the "
             f"cost limit; risk penalty = the final training row's `risk_penalty`. Std and IQM (interquartile "
             f"mean) are in main.csv. (main.csv / main.md / main.tex)"), "",
            text.tables_markdown(text.main_tables(r.main, s.confidence)),
            (f"Against the baseline `{s.baseline}`: difference of means (config − baseline) and its "
             f"{int(s.confidence * 100)}% Welch t CI (no shared variance assumed). (ablation.csv / .md / .tex)"), "",
            text.tables_markdown(text.ablation_tables(r.ablation, s.baseline, s.confidence)),
            ("IQM and P(improvement) are computed with rliable (Agarwal et al., 2021) and shown as point "
             "estimates only. rliable's CIs for them are stratified percentile-bootstrap intervals, built for "
             "aggregates over many runs x tasks; at a few seeds of one task the percentile bootstrap "
             "under-covers (it held the true mean 86% of the time at n = 5 for a nominal 95%, "
             "bench/ci_coverage.py), so they are not printed. With 5 seeds per side P(improvement) "
             "moves in steps of 1/25 and a value of 0.8 can arise with no true difference: read it as a "
             "description of these seeds, not as a test. The decision uses the t intervals above."), "",
            ("Figures: learning_curves.png (return and cost vs env steps, Student t CI bands where at least "
             f"{stats.MIN_SEEDS_FOR_INTERVAL} seeds reached the point, cost limit), id_ood.png "
             "(ID vs OOD, every seed a point), per_seed.png (one line per seed: bifurcating seeds); all of "
             "them, with the tables and a drill-down per cell, in report.html."), ""]


def _flips_section(r: Report) -> list[str]:
    """5. The rule's deciding bounds, nearest to their threshold first."""
    d = r.decision
    L = ["## 5. Which numbers would change a decision", ""]
    if not len(d.flips):
        return [*L, "No bound is computable yet (no config with evaluations against a baseline).", ""]
    L += [("The rule's deciding bounds, nearest to their threshold first. A positive margin passes the "
           "test, a negative one fails it; the smaller its size, the less new evidence it takes to flip."), "",
          text.to_markdown(d.flips.assign(value=d.flips["value"].round(3), margin=d.flips["margin"].round(3)),
                             index=False)]
    top = d.flips.iloc[0]
    return [*L, (f"Nearest to flipping: {top['config']}'s {top['number']} = {top['value']:.3f} against "
                 f"{top['threshold']:g} (margin {top['margin']:+.3f})."), ""]


def cost_lines(r: Report) -> list[str]:
    """The cost section: device-hours per config (useful, wasted, pending) and money, or why not."""
    c = r.cost
    if not c.get("available"):
        return [f"Cost is unavailable: {c.get('why', 'no cost data')}.", *_node_fault_lines(r)]
    unit = "GPU-hours" if c["device"] == "gpu" else "CPU-core-hours"
    lines = [(f"Total: {c['device_hours']:.3f} {unit}: {c['useful_h']:.3f} useful (the attempts a finished cell "
             f"used), {c['wasted_h']:.3f} wasted (failed, duplicated or redone work), {c['pending_h']:.3f} "
             f"pending (cells not finished yet)"
             + (f", {c['pruned_h']:.3f} pruned (cells a study's pruner stopped early)" if c.get("pruned_h") else "")
             + ".")]
    for dev, h in sorted(c.get("by_device", {}).items()):
        if dev != c["device"]:
            lines.append(f"Also {h.get('total_h', 0.0):.3f} {dev.upper()}-hours (reported apart, never added).")
    if c.get("money") is not None:
        lines.append(f"Money: {c['money']:.2f} {c['currency']} at {c['per_gpu_hour']:g} {c['currency']} per "
                     f"GPU-hour (CPU-core-hours are not priced).")
    else:
        lines.append("Money: not computed (set cost.per_gpu_hour in conf/sweep.yaml).")
    q = c.get("queue") or {}
    if q.get("attempts"):
        lines.append(f"Waiting: {q['attempts']} attempt(s) waited {format_duration(q['total_h'] * 3600)} in all "
                     f"from submission to start (median {format_duration(q['median_s'])}, longest "
                     f"{format_duration(q['max_s'])}: "
                     f"{q['max_cell']}); wall time in the queue, not device-hours (a waiting job holds nothing).")
    lines += ["", text.to_markdown(pd.DataFrame(c["per_config"]), index=False)]
    return lines + _node_fault_lines(r)


def _node_fault_lines(r: Report) -> list[str]:
    """One line per node that ended attempts with a node fault: the node, its evidence, the cells
    and device-hours it cost (their retries ran elsewhere: the node is excluded for the sweep)."""
    from safedreamer_sweep.sweep.failures import bad_nodes_text

    return [""] + [f"Bad node {bad_nodes_text(n)}; {n.get('hours', 0.0):.4f} device-hours lost on it, "
                   f"excluded for the rest of that sweep." for n in r.cost.get("bad_nodes") or []] \
        if r.cost.get("bad_nodes") else []
