"""report.html: the whole report as one file a person opens from disk, sends to an advisor or
prints. Figures are embedded as base64 PNG, the styles are inline, there is no script, and a
Content-Security-Policy forbids the page any request (no network, no server).

Order, as in decision.md: the decision and the coverage matrix (holes, failures and their causes at
a glance), the warnings, the main and ablation tables (each caveat once, under its table), the
figures, what would change the decision, the cost, then a drill-down per cell (attempts, causes
with evidence, resume lines, checkpoint and evaluation steps, log tails).

`app_html` is the page of an app's sweep (cells whose task returns its result): the results table
and a figure of the returned values.

Rendered by jinja2 (a dependency already) from report.html.j2 beside this file, with autoescape on:
config names, evidence and log lines are the user's text.
"""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.report.analysis import stats, tables
from safedreamer_sweep.report.analysis.decision import INCONCLUSIVE
from safedreamer_sweep.report.render import text
from safedreamer_sweep.report.result import Report

_TEMPLATE = "report.html.j2"
# The figures of the page, in order: (file, heading, what to read in it).
FIGURES = (
    ("learning_curves.png", "Learning curves",
     ("Return and cost against env steps per config: the mean over seeds with its Student t band (where at "
      "least 3 seeds reached the point), and the cost limit dashed on the cost panel.")),
    ("per_seed.png", "Every seed",
     "One line per seed, per config, labelled at its end: seeds that bifurcate show as separate bundles."),
    ("id_ood.png", "ID vs OOD, cost against the limit",
     ("Final return and cost in and out of distribution: bars are means, every dot is a seed; the dashed line "
      "is the cost limit.")),
)
_LOG_TAIL_LINES = 40
_LOG_TAIL_BYTES = 16 * 1024
_STATUS_CLASS = {"done": "ok", "running": "run", "pending": "wait", "missing": "wait", "failed": "bad",
                "interrupted": "bad", "corrupt": "bad", "pruned": "prn"}  # prn: stopped by a pruner, not failed


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "–"
    env.filters["hours"] = lambda h: "–" if h is None or not math.isfinite(h) else f"{h:.3f}"
    return env


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def anchor(config: Any, seed: Any) -> str:
    """The drill-down anchor of a cell (ids allow no spaces)."""
    return "cell-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{config}-{seed}")


def _frame(df: pd.DataFrame) -> dict:
    return {"columns": [str(c) for c in df.columns], "rows": [["" if v is None else str(v) for v in row]
                                                              for row in df.itertuples(index=False)]}


def _text_tables(ts: list[text.TextTable]) -> list[dict]:
    return [{"title": t.title, **_frame(t.frame), "notes": t.notes} for t in ts]


def _tail(path: Path) -> str:
    """The last _LOG_TAIL_LINES lines of a log (reading at most _LOG_TAIL_BYTES from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(unreadable: {e})"
    return "\n".join(data.splitlines()[-_LOG_TAIL_LINES:])


def _coverage(r: Report) -> dict:
    """The matrix as rows of configs and columns of seeds, each entry its three parts with status."""
    cov = r.coverage
    if cov.empty:
        return {"seeds": [], "rows": []}
    seeds = sorted(cov["seed"].unique(), key=lambda s: (str(type(s)), s))
    parts = {(x.config, x.seed, x.part): x.status for x in cov.itertuples()}
    causes = {}
    for c in r.frames.cells.itertuples():
        if isinstance(c.last_cause, str):
            causes[(c.config, c.seed)] = f"{c.last_cause}: {c.last_evidence if isinstance(c.last_evidence, str) else ''}"
    rows = []
    for config in sorted(cov["config"].unique()):
        entries: list[dict[str, object] | None] = []
        for seed in seeds:
            ps = [(p, parts.get((config, seed, p))) for p in tables.PARTS]
            if all(s is None for _, s in ps):
                entries.append(None)
                continue
            statuses = [s or "missing" for _, s in ps]
            hole = any(s != "done" for s in statuses)
            title = ", ".join(f"{p}: {s}" for (p, _), s in zip(ps, statuses))
            if hole and (config, seed) in causes:
                title += f" — {causes[(config, seed)]}"
            prn = hole and all(st in ("done", "pruned") for st in statuses)  # a pruned cell: a hole, not a failure
            entries.append({"anchor": anchor(config, seed), "hole": hole, "prn": prn, "title": title,
                            "parts": [{"part": p, "status": s, "cls": _STATUS_CLASS.get(s, "wait"),
                                       "symbol": tables.SYMBOLS.get(s, "?")} for (p, _), s in zip(ps, statuses)]})
        rows.append({"config": config, "entries": entries})
    return {"seeds": [str(s) for s in seeds], "rows": rows}


def _holes(r: Report) -> list[dict]:
    """One row per cell with a hole: which parts, their status, the last cause and its evidence."""
    cells = r.frames.cells.set_index(["config", "seed"]) if len(r.frames.cells) else None
    out: dict[tuple, dict] = {}
    for x in tables.holes(r.coverage).itertuples():
        key = (x.config, x.seed)
        if key not in out:
            c = cells.loc[key] if cells is not None and key in cells.index else None
            cause = c["last_cause"] if c is not None and isinstance(c["last_cause"], str) else ""
            evidence = c["last_evidence"] if c is not None and isinstance(c["last_evidence"], str) else ""
            if c is not None and not isinstance(c["run_dir"], str) and not cause:
                cause = "never started (no run directory)"
            out[key] = {"config": x.config, "seed": x.seed, "parts": [], "cause": cause, "evidence": evidence,
                        "anchor": anchor(x.config, x.seed)}
        out[key]["parts"].append({"part": x.part, "status": x.status, "cls": _STATUS_CLASS.get(x.status, "wait")})
    return list(out.values())


def _drilldown(r: Report) -> list[dict]:
    """Per expected cell: status of each part, attempts with causes and evidence, resume lines,
    trained/checkpoint/eval steps, traceback tail of the newest failure and the tails of its logs."""
    es = r.frames.eval_status
    by_cell: dict[tuple, list] = {}
    for e in es.itertuples():  # one pass, not a filter per cell (1,000 cells: 1 s)
        by_cell.setdefault((e.config, e.seed), []).append(e)
    out = []
    for c in r.frames.cells.sort_values(["config", "seed"]).itertuples():
        key = (c.config, c.seed)
        state = r.frames.states.get(key) or {}
        evals = by_cell.get(key, [])
        cell: dict[str, Any] = {
            "config": c.config, "seed": c.seed, "hash": c.hash if isinstance(c.hash, str) else "",
            "anchor": anchor(c.config, c.seed), "phase": c.phase, "run_dir": c.run_dir if isinstance(c.run_dir, str) else "",
            "trained_steps": None if pd.isna(c.trained_steps) else int(c.trained_steps),
            "evals": [{"kind": e.kind, "status": e.status, "cls": _STATUS_CLASS.get(e.status, "wait"),
                       "checkpoint_step": None if pd.isna(e.checkpoint_step) else int(e.checkpoint_step),
                       "episodes": None if pd.isna(e.episodes) else int(e.episodes),
                       "return_mean": text.num(e.return_mean), "cost_mean": text.num(e.cost_mean)}
                      for e in evals],
        }
        cell["train_status"] = c.train_status
        cell["cls"] = _STATUS_CLASS.get(c.train_status, "wait")
        cell["hole"] = c.train_status != "done" or any(e["status"] != "done" for e in cell["evals"])
        cell["prn"] = c.train_status == "pruned"
        cell["attempts"], cell["traceback"] = _attempt_rows(state)
        cell["resumes"] = _resume_lines(state)
        cell["checkpoints"], cell["logs"] = _run_dir_files(cell["run_dir"])
        out.append(cell)
    return out


def _attempt_rows(state: dict) -> tuple[list[dict], str]:
    """A cell's attempts (where they ran, their hours and class, cause and evidence) and the
    traceback tail of the newest attempt that recorded one."""
    from safedreamer_sweep.report.cost import cell_cost

    try:
        costs = {a["n"]: a for a in cell_cost(state)["attempts"]} if state.get("attempts") else {}
    except Exception:  # noqa: BLE001 (a cell the cost model cannot price still gets its drill-down)
        costs = {}
    rows, traceback = [], ""
    for i, a in enumerate(state.get("attempts") or []):
        n = a.get("n", i + 1)
        cost = costs.get(n) or {}
        where = " ".join(str(x) for x in dict.fromkeys((a.get("host"), a.get("node"),
                                                        f"job {a['job_id']}" if a.get("job_id") else None,
                                                        f"pid {a['pid']}" if a.get("pid") else None)) if x)
        rows.append({"n": n, "outcome": a.get("outcome") or "?", "started": a.get("started_at"),
                     "ended": a.get("ended_at"), "where": where or "–",
                     "hours": cost.get("hours"), "class": cost.get("class", "–"),
                     "cause": a.get("cause") or "", "evidence": a.get("evidence") or ""})
        if a.get("traceback_tail"):
            traceback = f"attempt {n}:\n" + str(a["traceback_tail"]).rstrip()[-3000:]
    return rows, traceback


def _resume_lines(state: dict) -> list[str]:
    """One line per resume of the cell: where it resumed from, the frames trained twice, what it did not restore."""
    out = []
    for e in state.get("resumes") or []:
        missing = ", ".join(e.get("not_restored") or []) or "nothing declared"
        out.append(f"attempt {e.get('attempt')} resumed from env step {e.get('from_step')} (the "
                   f"previous attempt had reached {e.get('reached')}: {e.get('lost_frames')} frames "
                   f"trained again); not restored: {missing}")
    return out


def _run_dir_files(run_dir: str) -> tuple[list[int], list[dict]]:
    """The cell's checkpoint steps and the tails of its logs (none without a run directory)."""
    if not run_dir:
        return [], []
    rd = RunDir(Path(run_dir))
    try:
        checkpoints = [step for step, _ in rd.checkpoints()]
    except (OSError, StoreError):
        checkpoints = []
    logs = []
    if rd.logs_dir.is_dir():
        for p in sorted(rd.logs_dir.iterdir()):
            if p.is_file():
                logs.append({"name": p.name, "path": str(p), "tail": _tail(p)})
    return checkpoints, logs


def _cost(r: Report) -> dict:
    c = r.cost
    lines = [line for line in _cost_lines(r) if line]
    table = _frame(pd.DataFrame(c["per_config"])) if c.get("available") and c.get("per_config") else None
    return {"lines": lines, "table": table}


def _cost_lines(r: Report) -> list[str]:
    from safedreamer_sweep.report.render.document import cost_lines

    return [line for line in cost_lines(r) if not line.startswith("|") and not line.startswith("_(")]


def _config_decisions(r: Report) -> list[dict]:
    from safedreamer_sweep.report.render.document import fmt_seeds

    return [{"config": v.config, "verdict": v.decision, "n": v.n, "reasons": v.reasons,
             "cls": {"recommended": "ok", "not recommended": "bad"}.get(v.decision, "run"),
             "seeds_needed": fmt_seeds(v.seeds_needed) if v.decision == INCONCLUSIVE else "—"}
            for v in r.decision.per_config]


def _as_of(states: Any) -> str | None:
    """The newest attempt start or end the store records: the page's "as of" (not the time it was
    written, so the same store gives the same bytes)."""
    times = [t for st in states for a in (st or {}).get("attempts") or []
             for t in (a.get("started_at"), a.get("ended_at")) if isinstance(t, (int, float))]
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(max(times))) if times else None


def report_html(r: Report, figures: dict[str, bytes] | None = None) -> str:
    """The page of a computed report; `figures` maps FIGURES' file names to their PNG bytes (None
    or missing: the page says the figure is off or not drawn)."""
    figures = figures or {}
    s, d, cov = r.settings, r.decision, r.coverage
    n_done = int((cov["status"] == "done").sum()) if len(cov) else 0
    flips = d.flips.assign(value=d.flips["value"].map(text.num), threshold=d.flips["threshold"].map(lambda x: f"{x:g}"),
                           margin=d.flips["margin"].map(lambda x: text.num(x, signed=True))) if len(d.flips) else d.flips
    ctx = {
        "title": f"Decision report: {r.frames.store_root}",
        "store": str(r.frames.store_root),
        "as_of": _as_of(r.frames.states.values()),
        "decision": {"headline": d.headline, "summary": d.summary, "correction": d.correction,
                     "cls": "ok" if d.headline.startswith("recommended") else
                            ("bad" if d.headline.startswith("not") else "run")},
        "verdicts": _config_decisions(r),
        "no_interval_note": stats.NO_INTERVAL_NOTE if any(
            "no interval" in reason for v in r.decision.per_config for reason in v.reasons) else "",
        "baseline": s.baseline, "cost_limit": d.cost_limit, "min_seeds": s.min_seeds,
        "confidence": round(s.confidence * 100),
        "coverage": {"done": n_done, "total": len(cov), **_coverage(r)},
        "holes": _holes(r),
        "warnings": [{"kind": w.kind, "text": w.text} for w in r.warnings],
        "main": _text_tables(text.main_tables(r.main, s.confidence)),
        "ablation": _text_tables(text.ablation_tables(r.ablation, s.baseline, s.confidence)),
        "figures": [{"file": f, "title": t, "caption": cap, "src": _data_uri(figures[f]) if f in figures else None}
                    for f, t, cap in FIGURES],
        "figures_on": s.figures,
        "flips": _frame(flips) if len(flips) else None,
        "cost": _cost(r),
        "cells": _drilldown(r),
        "app": None,
        "studies": study_blocks(r.studies, figures),
    }
    return _env().get_template(_TEMPLATE).render(**ctx)


_STUDY_FIGURES = (
    ("history", "Optimization history",
     "The objective per trial number: a dot per feasible complete trial, a red x per trial that breaks the cost "
     "limit, the best feasible value so far as a step line; pruned (grey triangles) and failed (red bars) trials "
     "on the bottom edge."),
    ("front", "Return against cost",
     "Every complete trial: feasible dots, red x for trials that break the cost limit (dashed line), the feasible "
     "Pareto front ringed and joined, the best feasible trial starred; labels are trial numbers."),
    ("importances", "Parameter importances", "Optuna's parameter importances over the complete trials."),
)
_STATE_CLASS = {"complete": "ok", "pruned": "wait", "failed": "bad", "running": "run", "waiting": "run"}


def study_blocks(views: list, figures: dict[str, bytes] | None = None) -> list[dict]:
    """The study sections of the page (report/study.py StudyViews; render/studies.py the text)."""
    from safedreamer_sweep.report.render import studies as st

    figures = figures or {}
    out = []
    for v in views:
        table = st.trials_table(v)
        files = st.figure_files(v)
        shown = {"history": len(v.trials) > 0, "front": len(v.front()) > 0, "importances": bool(v.importances)}
        out.append({
            "name": v.name, "id": "study-" + st.slug(v.name), "summary": st.summary_line(v), "error": v.error,
            "cls": "ok" if v.best_row is not None else ("bad" if v.error else "run"),
            "best": st.best_point_line(v), "journal": str(v.path / "journal.log"),
            "table": _frame(table) if len(table) else None,
            "state_classes": [_STATE_CLASS.get(s, "wait") for s in table.get("state", [])],
            "test": _frame(st.test_table(v)) if len(v.test) else None,
            "importances": st.importances_line(v) if len(v.trials) else None,
            "savings": st.savings_line(v) if len(v.trials) else None,
            "figures": [{"file": files[k], "title": t, "caption": cap,
                         "src": _data_uri(figures[files[k]]) if files[k] in figures else None}
                        for k, t, cap in _STUDY_FIGURES if shown[k]]})
    return out


def app_html(df: pd.DataFrame, store_root: Path, figure: bytes | None, studies: list | None = None,
             figures: dict[str, bytes] | None = None) -> str:
    """The page of an app's sweep: how many cells are done, the failed ones with their cause, the
    results table (results.csv) and a figure of the returned values."""
    done = int((df["phase"] == "done").sum()) if len(df) else 0
    failed = [{"label": str(x.label), "seed": "" if pd.isna(x.seed) else str(x.seed), "phase": x.phase,
               "cls": _STATUS_CLASS.get(str(x.phase), "bad"), "cause": x.cause if isinstance(x.cause, str) else "",
               "evidence": x.evidence if isinstance(x.evidence, str) else ""}
              for x in df.itertuples() if x.phase != "done"]
    shown = df.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                   else (text.num(v) if isinstance(v, float) else str(v)))
    ctx = {
        "title": f"Results: {store_root}", "store": str(store_root),
        "as_of": None,
        "app": {"done": done, "total": len(df), "failed": failed, "table": _frame(shown),
                "figure": _data_uri(figure) if figure else None},
        "studies": study_blocks(studies or [], figures),
        "figures_on": True,
    }
    return _env().get_template(_TEMPLATE).render(**ctx)
