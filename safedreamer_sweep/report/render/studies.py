"""The study section of decision.md and report.html, as text: the summary line, the best feasible
point, the trials table, the test-seed re-runs, the importances and what pruning saved (one
function each, from a report/study.py StudyView; html.py and document.py lay them out)."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from safedreamer_sweep.report.render import text
from safedreamer_sweep.report.study import StudyView


def slug(name: str) -> str:
    """A study name as a file-name part (`study-<slug>-history.png`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "study"


def figure_files(view: StudyView) -> dict[str, str]:
    """The study's figure files: kind (history, front, importances) -> file name."""
    return {k: f"study-{slug(view.name)}-{k}.png" for k in ("history", "front", "importances")}


def _p(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def params_text(params: dict) -> str:
    """`agent.lr=0.003, agent.horizon=16`."""
    return ", ".join(f"{k}={_p(v)}" for k, v in params.items()) or "(no parameters)"


def _seeds(seeds: Any) -> str:
    return ",".join(str(s) for s in seeds or []) or "?"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def value_text(value: float, ci_low: float, ci_high: float, n: int | None = None) -> str:
    """`12.50 [CI 6.15, 18.85]`, or `12.50` without an interval (fewer than 2 seeds)."""
    if not _finite(value):
        return "–"
    ci = f" [CI {text.fmt(ci_low)}, {text.fmt(ci_high)}]" if _finite(ci_low) and _finite(ci_high) else ""
    return f"{text.fmt(value)}{ci}" + (f" (n={n})" if n is not None else "")


def _counts_text(view: StudyView) -> str:
    c = view.counts
    total = f"{c['trials']} of {view.n_trials} trials" if view.n_trials else f"{c['trials']} trials"
    waiting = f", {c['waiting']} waiting" if c["waiting"] else ""
    return (f"{total}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, "
            f"{c['running']} running{waiting}")


def _best_text(view: StudyView) -> str:
    b = view.best_row
    if b is None:
        done = view.trials[view.trials["state"] == "complete"] if len(view.trials) else view.trials
        bad = int((done["feasible"] == False).sum()) if len(done) else 0  # noqa: E712
        limit = f" ({view.constraint['metric']} <= {view.constraint['limit']:g})" if view.constraint else ""
        return (f"no feasible trial yet ({bad} of {len(done)} complete trial(s) break the cost limit{limit})"
                if bad else "no complete trial yet")
    what = (f"best feasible: trial {b['number']}" if not view.multi_objective else
            f"feasible Pareto front: trial(s) {', '.join(map(str, view.best))}; on it, best {view.objectives[0]}: "
            f"trial {b['number']}")
    return (f"{what}, {view.objectives[0]} {value_text(b['value'], b['ci_low'], b['ci_high'])} over seeds "
            f"{_seeds(b['seeds'])} at {params_text(b['params'])}")


def summary_line(view: StudyView) -> str:
    """`12 of 12 trials: 9 complete, 2 pruned, 1 failed, 0 running; best feasible: trial 7,
    id.return_mean 12.50 [CI 6.15, 18.85] over seeds 0,1 at agent.lr=0.003, agent.horizon=16`."""
    if view.error and not len(view.trials):
        return f"not readable: {view.error}"
    return f"{_counts_text(view)}; {_best_text(view)}"


def best_point_line(view: StudyView) -> str | None:
    """The best feasible point with its interval, its seeds' values and its cost against the limit."""
    b = view.best_row
    if b is None:
        return None
    vals = ", ".join(text.fmt(v) for v in b["seed_values"] or [] if v is not None)
    cost = (f"; cost {text.fmt(b['cost'])} against the limit {b['limit']:g}"
            f"{' (' + view.constraint['metric'] + ')' if view.constraint else ''}" if _finite(b["cost"]) else "")
    return (f"Best feasible point: trial {b['number']} at {params_text(b['params'])}: {view.objectives[0]} "
            f"{value_text(b['value'], b['ci_low'], b['ci_high'])} (Student t 95% CI of the mean over tuning seeds "
            f"{_seeds(b['seeds'])}{': ' + vals if vals else ''}){cost}.")


def trials_table(view: StudyView) -> pd.DataFrame:
    """One row per trial: state, one column per parameter, the value with its seed spread, the
    seeds' values, the cost against the limit and feasible yes / no, device-hours, a note."""
    names = list(dict.fromkeys(k for p in view.trials["params"] for k in p)) if len(view.trials) else []
    rows = []
    for r in view.trials.sort_values("number").itertuples() if len(view.trials) else ():
        feasible = {True: "yes", False: "no"}.get(r.feasible, "–")
        note = f"pruned at env step {int(r.pruned_at)}" if r.state == "pruned" and _finite(r.pruned_at) else ""
        if r.number in view.best:
            note = "best feasible" if not view.multi_objective else "on the feasible Pareto front"
        rows.append({"trial": str(r.number), "state": r.state, **{k: _p(r.params.get(k, "")) for k in names},
                     view.objectives[0]: value_text(r.value, r.ci_low, r.ci_high, r.n or None),
                     "seed values": ", ".join(text.fmt(v) for v in r.seed_values or [] if v is not None),
                     "cost": text.fmt(r.cost) if _finite(r.cost) else "–",
                     "feasible": feasible, "device-h": text.fmt(r.device_hours, 3) if _finite(r.device_hours) else "–",
                     "note": note})
    return pd.DataFrame(rows)


def test_table(view: StudyView) -> pd.DataFrame:
    """The re-runs on test seeds: the tuning value beside the test value, each with its seeds."""
    return pd.DataFrame([{"trial": str(t.number), "parameters": params_text(t.params),
                          "tuning value": f"{value_text(t.tuning_value, t.tuning_ci_low, t.tuning_ci_high)} "
                                          f"(seeds {_seeds(t.tuning_seeds)})",
                          "test value": f"{value_text(t.test_value, t.test_ci_low, t.test_ci_high)} "
                                        f"(seeds {_seeds(t.test_seeds)})"}
                         for t in view.test.itertuples()]) if len(view.test) else pd.DataFrame()


def importances_line(view: StudyView) -> str:
    if view.importances:
        return ("Parameter importances (Optuna's default evaluator, over the complete trials, for "
                f"{view.objectives[0]}): " + ", ".join(f"{k} {v:.2f}" for k, v in view.importances.items()) + ".")
    return f"Parameter importances: {view.importances_why}."


def savings_line(view: StudyView) -> str:
    """`pruning saved: pruned cells used 0.050 device-h, completed 0.900 device-h; ...`."""
    s = view.savings
    if not s:
        return "Pruning: no trials yet."
    head = f"pruned cells used {s['pruned_h']:.3f} device-h, completed {s['complete_h']:.3f} device-h"
    finished = s["n_pruned"] + s["n_complete"]
    if not s["n_pruned"]:
        return f"Pruning saved nothing yet: no trial was pruned ({head})."
    line = (f"pruning saved: {head}; {s['n_pruned']} of {finished} finished trials pruned "
            f"({100 * s['pruned_fraction']:.0f}%)")
    if _finite(s.get("saved_h")):
        line += (f"; run to the end, the pruned trials would have used about {s['saved_h']:.3f} device-h more "
                 f"(an estimate: the completed trials' mean of {s['mean_complete_h']:.3f} device-h each)")
    return line[0].upper() + line[1:] + "."


def markdown_section(view: StudyView, number: int | None = None) -> list[str]:
    """`## <number>. Study <name>` for decision.md (without `number`: `## Study <name>`, for results.md)."""
    L = [f"## {f'{number}. ' if number is not None else ''}Study `{view.name}`", "", f"**{summary_line(view)}**", ""]
    if view.error:
        L += [f"Error: {view.error}", ""]
    if not len(view.trials):
        return L
    best = best_point_line(view)
    L += [*([best, ""] if best else []),
          (f"Objective {', '.join(f'{o} ({d})' for o, d in zip(view.objectives, view.directions))}"
           + (f", constraint {view.constraint['metric']} <= {view.constraint['limit']:g}" if view.constraint else "")
           + f". The study is Optuna's journal at `{view.path / 'journal.log'}` (it opens in optuna-dashboard)."), "",
          text.to_markdown(trials_table(view), index=False, as_text=True), "",
          importances_line(view), "", savings_line(view), ""]
    if len(view.test):
        L += ["### Re-run on test seeds", "",
              "The best points re-run on fresh seeds, kept apart from the tuning seeds they were chosen on.", "",
              text.to_markdown(test_table(view), index=False, as_text=True), ""]
    files = figure_files(view)
    L += [f"Figures: {files['history']} (value per trial, best feasible so far, pruned trials marked), "
          f"{files['front']} (return against cost, the cost limit, the feasible Pareto front)"
          + (f", {files['importances']}" if view.importances else "") + "; all in report.html.", ""]
    return L
