"""Compose the report: read the store, compute tables, decision and figures in memory, render the
templates, then write every artifact (each atomically). A template error stops before any write.

Figures cost most of a report's time (matplotlib/seaborn imports and drawing: ~3 of ~5 CPU-s for
a small matrix), so `build_report(on_summary=...)` writes the text artifacts first, hands the
caller the summary to print, then draws the figures."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from safedreamer_sweep.core.files import atomic_write_bytes
from safedreamer_sweep.report.analysis import tables
from safedreamer_sweep.report.analysis.aggregate import (
    METRICS,
    Frames,
    load_frames,
    parquet_ready,
)
from safedreamer_sweep.report.analysis.decision import decide
from safedreamer_sweep.report.caveats import caveats
from safedreamer_sweep.report.render import text
from safedreamer_sweep.report.render.document import decision_markdown
from safedreamer_sweep.report.render.templates import (
    Difference,
    Namespace,
    Number,
    render_all,
)
from safedreamer_sweep.report.result import Report
from safedreamer_sweep.report.settings import ReportSettings
from safedreamer_sweep.report.study import read_studies

# Every artifact a report writes (templates add their own outputs).
ARTIFACTS = (
    "report.html", "decision.md", "report.json",
    "cells.parquet", "evals.parquet", "seeds.parquet", "curves.parquet",
    "train_status.tsv", "eval_status.tsv", "coverage.md", "coverage.png",
    "main.csv", "main.md", "main.tex", "ablation.csv", "ablation.md", "ablation.tex",
    "learning_curves.png", "id_ood.png", "per_seed.png",
)
FIGURES = ("coverage.png", "learning_curves.png", "id_ood.png", "per_seed.png")


def _cost_summary(frames: Frames, settings: ReportSettings) -> dict:
    """Device-hours per config and in total, and money when cost.per_gpu_hour is set, from
    safedreamer_sweep.report.cost (GPU-hours are priced, CPU-core-hours only reported)."""
    try:
        from safedreamer_sweep.report import cost as cost_mod
    except ImportError:
        return {"available": False, "why": "safedreamer_sweep.report.cost is not installed"}
    if not frames.cost_available:
        return {"available": False, "why": "the cost module could not price every cell"}
    states = {k: v for k, v in frames.states.items() if v.get("phase") != "missing"}
    sc = cost_mod.sweep_cost(states, per_gpu_hour=settings.per_gpu_hour, currency=settings.currency)
    rows = []
    for config, by_dev in sorted(sc["configs"].items()):
        for dev, h in sorted(by_dev.items()):
            rows.append({"config": config, "device": dev, **{k: round(float(h.get(k, 0.0)), 3) for k in
                                                              ("useful_h", "wasted_h", "pending_h", "pruned_h", "total_h")}})
    total = sc["total"]
    main_dev = "gpu" if "gpu" in total else ("cpu" if "cpu" in total else "gpu")
    t = total.get(main_dev, {})
    money = sc.get("money")
    return {"available": True, "device": main_dev, "device_hours": float(t.get("total_h", 0.0)),
            "useful_h": float(t.get("useful_h", 0.0)), "wasted_h": float(t.get("wasted_h", 0.0)),
            "pending_h": float(t.get("pending_h", 0.0)), "pruned_h": float(t.get("pruned_h", 0.0)),
            "by_device": {d: {k: float(v) for k, v in h.items()} for d, h in total.items()},
            "money": float(money["total"]) if money else None, "per_gpu_hour": settings.per_gpu_hour,
            "currency": settings.currency, "per_config": rows, "queue": cost_mod.queue_wait(states)}


def compute_report(store_root: str | Path, cfg: Any = None) -> Report:
    """Read the store and compute every table and the decision (no figures, no writes)."""
    settings = ReportSettings.from_cfg(cfg)
    unknown = [m for m in (settings.rule.cost_metric, settings.rule.return_metric) if m not in METRICS]
    if unknown:
        raise ValueError(f"report.rule: unknown metric(s) {unknown}; choose from {sorted(METRICS)}.")
    frames = load_frames(store_root)
    cov = tables.coverage_long(frames.cells, frames.eval_status)
    main = tables.main_table(frames.seeds, settings)
    ablation = tables.ablation_table(frames.seeds, settings)
    warns = caveats(frames, cov, settings)
    decision = decide(frames, cov, main, ablation, settings)
    cost = {**_cost_summary(frames, settings), "bad_nodes": _node_fault_cost(frames)}
    return Report(settings=settings, frames=frames, coverage=cov, main=main, ablation=ablation, warnings=warns,
                  decision=decision, cost=cost, studies=read_studies(frames.store_root))


def _node_fault_cost(frames: Frames) -> list[dict]:
    """The nodes that ended attempts with a node fault (sweep/failures.bad_nodes: node, first
    evidence, cells), each with the device-hours of those attempts."""
    from safedreamer_sweep.report.cost import attempt_hours
    from safedreamer_sweep.sweep.failures import bad_nodes

    states = {f"{c} seed {s}": st for (c, s), st in frames.states.items() if st.get("phase") != "missing"}
    out = bad_nodes(states.items())
    for n in out:
        n["hours"] = round(sum(attempt_hours(a)["hours"] for st in states.values() for a in st.get("attempts") or []
                               if a.get("cause") == "node_fault" and str(a.get("node")) == n["node"]), 4)
    return out


def template_context(r: Report) -> dict[str, Any]:
    """What templates can use: main, ablation, decision, coverage, cost, warnings, configs, ..."""
    main: dict[str, Namespace] = {}
    for config, g in r.main.groupby("config", sort=True):
        main[config] = Namespace(f"main[{config!r}]", {
            row.metric: Number(row.mean, row.std, row.iqm, row.ci_low, row.ci_high, int(row.n))
            for row in g.itertuples()})
    ablation: dict[str, Namespace] = {}
    for config, g in r.ablation.groupby("config", sort=True):
        ablation[config] = Namespace(f"ablation[{config!r}]", {
            row.metric: Difference(row.diff, row.ci_low, row.ci_high, row.prob_improvement, int(row.n),
                                   int(row.n_baseline)) for row in g.itertuples()})
    cov = r.coverage
    hole_rows = tables.holes(cov)
    return {
        "main": main,
        "ablation": ablation,
        "configs": sorted(main),
        "baseline": r.settings.baseline,
        "cost_limit": r.cost_limit,
        "min_seeds": r.settings.min_seeds,
        "decision": Namespace("decision", {
            "headline": r.decision.headline, "summary": r.decision.summary,
            "verdicts": {d.config: d.decision for d in r.decision.per_config}}),
        "coverage": Namespace("coverage", {
            "done": int((cov["status"] == "done").sum()) if len(cov) else 0, "total": len(cov),
            "holes": [f"{x.config} seed {x.seed} {x.part} ({x.status})" for x in hole_rows.itertuples()],
            "matrix": text.to_markdown(tables.coverage_matrix(cov))}),
        "cost": Namespace("cost", {k: v for k, v in r.cost.items() if k != "per_config"}),
        "warnings": [f"{w.kind}: {w.text}" for w in r.warnings],
        "ood_proxy": "; ".join(r.frames.ood_proxy) or "not declared",
        "tables": Namespace("tables", {"main": text.tables_markdown(_main_text_tables(r)),
                                       "ablation": text.tables_markdown(_ablation_text_tables(r))}),
    }


def _main_text_tables(r: Report) -> list[text.TextTable]:
    return text.main_tables(r.main, r.settings.confidence)


def _ablation_text_tables(r: Report) -> list[text.TextTable]:
    return text.ablation_tables(r.ablation, r.settings.baseline, r.settings.confidence)


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    parquet_ready(df).to_parquet(buf, index=False)
    return buf.getvalue()


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item"):
        return _json_safe(x.item())
    return x


def render_artifacts(r: Report, with_figures: bool = True) -> dict[str, bytes]:
    """Every output file's bytes, in memory (the figures only `with_figures`; report.json lists them
    whenever report.figures is on). Templates are rendered first: an unknown placeholder raises
    TemplateRenderError before anything else is computed or written."""
    docs = render_all(r.settings.templates, template_context(r))
    r.documents = docs
    s = r.settings
    cov = r.coverage
    train_tsv = r.frames.cells.drop(columns=["run_dir"]).assign(run_dir=r.frames.cells["run_dir"])
    files: dict[str, bytes] = {
        "cells.parquet": _parquet(r.frames.cells),
        "evals.parquet": _parquet(r.frames.evals),
        "seeds.parquet": _parquet(r.frames.seeds),
        "curves.parquet": _parquet(r.frames.curves),
        "train_status.tsv": train_tsv.to_csv(sep="\t", index=False).encode(),
        "eval_status.tsv": r.frames.eval_status.to_csv(sep="\t", index=False).encode(),
        "coverage.md": ("# Coverage (train / ID eval / OOD eval)\n\n✓ done, … running, – missing or pending, "
                        "✗ failed, ✂ pruned by a study (not failed)\n\n" + text.to_markdown(tables.coverage_matrix(cov))).encode(),
        "main.csv": r.main.to_csv(index=False).encode(),
        "main.md": ("# Main results per config\n\n" + text.tables_markdown(_main_text_tables(r))).encode(),
        "main.tex": text.tables_latex(_main_text_tables(r), "tab:main").encode(),
        "ablation.csv": r.ablation.to_csv(index=False).encode(),
        "ablation.md": (f"# Each config against {s.baseline}\n\n"
                        + text.tables_markdown(_ablation_text_tables(r))).encode(),
        "ablation.tex": text.tables_latex(_ablation_text_tables(r), "tab:ablation").encode(),
        "decision.md": decision_markdown(r).encode(),
        **_study_tables(r),
    }
    figs = _render_figures(r) if s.figures and with_figures else {}
    files.update(figs)
    files["report.html"] = _report_page(r, figs)
    for name, body in docs.items():
        if name in files or name == "report.json":
            raise ValueError(f"report.templates: a template renders to {name!r}, which the report itself writes; "
                             f"rename the template.")
        files[name] = body.encode()
    summary = {
        "store": str(r.frames.store_root),
        "decision": {"headline": r.decision.headline, "summary": r.decision.summary,
                     "verdicts": [{"config": d.config, "verdict": d.decision, "reasons": d.reasons,
                                   "seeds_needed": d.seeds_needed} for d in r.decision.per_config]},
        "coverage": {"done": int((cov["status"] == "done").sum()) if len(cov) else 0, "total": len(cov)},
        "warnings": [{"kind": w.kind, "text": w.text} for w in r.warnings],
        "main": r.main.to_dict(orient="records"),
        "ablation": r.ablation.to_dict(orient="records"),
        "cost": r.cost,
        "artifacts": sorted({*files, "report.json", *(FIGURES if s.figures else ()),
                             *(_study_figure_names(r) if s.figures else ())}),
    }
    if r.studies:  # only then: a store without studies keeps its report.json as it was
        summary["studies"] = [v.to_dict() for v in r.studies]
    files["report.json"] = (json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n").encode()
    return files


def _report_page(r: Report, figures: dict[str, bytes]) -> bytes:
    """report.html's bytes: the page with `figures` (PNG bytes by file name) embedded."""
    from safedreamer_sweep.report.render.html import report_html

    return report_html(r, figures).encode()


def _render_figures(r: Report) -> dict[str, bytes]:
    """The figures' PNG bytes, in memory (matplotlib and seaborn are imported here, not before)."""
    from safedreamer_sweep.report.render import figures

    s, cov = r.settings, r.coverage
    out: dict[str, bytes] = {}
    out["coverage.png"] = figures.figure_png(figures.coverage_heatmap(cov))
    out["learning_curves.png"] = figures.figure_png(figures.learning_curves(
        r.frames.curves, r.cost_limit, confidence=s.confidence))
    out["id_ood.png"] = figures.figure_png(figures.id_ood_bars(r.frames.seeds, r.cost_limit))
    out["per_seed.png"] = figures.figure_png(figures.per_seed(r.frames.curves, gap_ratio=s.bimodal_gap_ratio))
    return {**out, **study_figures(r.studies)}


def study_figures(studies: list) -> dict[str, bytes]:
    """Each study's figures (render/studies.figure_files names): its optimization history, the
    return-vs-cost front (when trials have costs) and the importances (when computed)."""
    from safedreamer_sweep.report.render import figures
    from safedreamer_sweep.report.render.studies import figure_files

    out: dict[str, bytes] = {}
    for v in studies:
        if not len(v.trials):
            continue
        files = figure_files(v)
        out[files["history"]] = figures.figure_png(figures.study_history(v))
        for kind, fig in (("front", figures.study_front(v)), ("importances", figures.study_importances(v))):
            if fig is not None:
                out[files[kind]] = figures.figure_png(fig)
    return out


def _study_markdown(studies: list) -> str:
    """The study sections of an app's results.md ("" without studies)."""
    from safedreamer_sweep.report.render.studies import markdown_section

    return "".join("\n" + "\n".join(markdown_section(v)) for v in studies)


def _study_figure_names(r: Report) -> list[str]:
    """The study figures a build with figures writes (report.json lists them either way)."""
    from safedreamer_sweep.report.render.studies import figure_files

    names = []
    for v in r.studies:
        if len(v.trials):
            files = figure_files(v)
            names += [files["history"], *([files["front"]] if len(v.front()) else []),
                      *([files["importances"]] if v.importances else [])]
    return names


def _study_tables(r: Report) -> dict[str, bytes]:
    """study-<name>.csv per study: one row per trial (report/study.py TRIAL_COLUMNS)."""
    from safedreamer_sweep.report.render.studies import slug

    return {f"study-{slug(v.name)}.csv": v.trials.to_csv(index=False).encode() for v in r.studies if len(v.trials)}


def build_report(store_root: str | Path, out: str | Path | None = None, cfg: Any = None,
                 on_summary: Callable[[Path, Report], None] | None = None) -> Path:
    """Write the report of the store at `store_root` into `out` (default: report.out, else
    <store>/report) and return that directory.

    With `on_summary`, the text artifacts (decision.md, tables, report.json, report.html without
    figures) are written first and `on_summary(report dir, report)` is called, so the caller can
    show the decision, then the figures are drawn and written with report.html again, now with them
    embedded (a figure error then leaves the text artifacts written).

    Idempotent: the same store gives byte-identical text artifacts (no statistic is random).
    Holes never raise: they are the first thing the report says. A path that is not a store
    raises NotAStoreError; an unknown template placeholder raises TemplateRenderError before any
    file is written. Each file is replaced atomically; files the report does not write are left
    alone.
    """
    r = compute_report(store_root, cfg)
    if on_summary is None:
        return write_artifacts(r, render_artifacts(r), out)
    out_dir = write_artifacts(r, render_artifacts(r, with_figures=False), out)
    on_summary(out_dir, r)
    if r.settings.figures:
        figs = _render_figures(r)
        write_artifacts(r, {**figs, "report.html": _report_page(r, figs)}, out_dir)
    return out_dir


def write_artifacts(r: Any, files: dict[str, bytes], out: str | Path | None = None) -> Path:
    """Write rendered artifacts atomically into `out` (default: report.out, else <store>/report)."""
    out_dir = Path(out or r.settings.out or (r.frames.store_root / "report")).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: report output path is a file; give a directory (--out DIR).")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return out_dir.resolve()


def cell_kinds(store_root: str | Path) -> set[str]:
    """What the store's cells report: "eval" (the package's own tasks: ID/OOD evaluations) and/or
    "return" (any other app: the task function's return value)."""
    from safedreamer_sweep.core.store import Store

    return {(rd.read_spec() or {}).get("done_when", "eval") for rd in Store(store_root).iter_runs()}


def _pruned_note(df: Any) -> str:
    """`, 3 pruned (stopped by a study's pruner, not failed)` when an app's cells were pruned."""
    n = int((df["phase"] == "pruned").sum()) if "phase" in df else 0
    return f", {n} pruned (stopped by a study's pruner, not failed)" if n else ""


def build_app_report(store_root: str | Path, out: str | Path | None = None, page: bool = True) -> Path | None:
    """The report of an app's sweep (cells whose task function's return value is its result):
    results.csv, results.md, results.png and, with `page`, report.html (the table and a figure of
    the returned values), each written atomically into `out` (default <store>/report). None when
    the store holds no such cell. A store that also holds the package's own cells gets their
    report.html from build_report: pass page=False then."""
    from safedreamer_sweep.core.store import Store
    from safedreamer_sweep.report.analysis.returns import results_frame
    from safedreamer_sweep.report.render import figures
    from safedreamer_sweep.report.render.html import app_html
    from safedreamer_sweep.report.render.studies import slug

    store = Store(store_root)
    df = results_frame(store)
    if df.empty:
        return None
    out_dir = Path(out or store.root / "report").expanduser()
    done = int((df["phase"] == "done").sum())
    fig = figures.returned_values(df)
    png = figures.figure_png(fig) if fig is not None else None
    # The studies are shown once: here when this page is the report, else by build_report's page.
    studies = read_studies(store.root) if page else []
    files = {"results.csv": df.to_csv(index=False).encode(),
             "results.md": (f"# Results: {done}/{len(df)} cells done{_pruned_note(df)}\n\n" + df.to_markdown(index=False)
                            + "\n" + _study_markdown(studies)).encode(),
             }
    if page:
        study_pngs = study_figures(studies)
        files.update({**study_pngs, **{f"study-{slug(v.name)}.csv": v.trials.to_csv(index=False).encode()
                                       for v in studies if len(v.trials)}})
        files["report.html"] = app_html(df, store.root, png, studies, study_pngs).encode()
    if png is not None:
        files["results.png"] = png
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return out_dir.resolve()
