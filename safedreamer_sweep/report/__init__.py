"""Decision-grade reports from the run store (reads only the store).

    aggregate.py  tidy frames: cells, evaluations, per-seed metrics, curves (Parquet)
    stats.py      t intervals, Holm, IQM and P(improvement) (rliable), seeds needed
    tables.py     coverage, main results, ablation vs the baseline (CSV, Markdown, LaTeX)
    figures.py    learning curves, ID vs OOD, per-seed lines, coverage heatmap (PNG)
    decision.py   warnings and the configurable recommendation rule
    document.py   decision.md: coverage first, warnings before results
    templates.py  the user's Jinja2 Markdown templates filled with the numbers
    build.py      build_report: compute everything in memory, then write atomically

    from safedreamer_sweep.report import build_report
    build_report("experiments")            # -> experiments/report/
"""

from safedreamer_sweep.report.aggregate import NotAStoreError, load_frames
from safedreamer_sweep.report.build import (
           ARTIFACTS,
           Report,
           build_report,
           compute_report,
)
from safedreamer_sweep.report.settings import ReportSettings
from safedreamer_sweep.report.templates import TemplateRenderError

__all__ = ["ARTIFACTS", "NotAStoreError", "Report", "ReportSettings", "TemplateRenderError", "build_report",
           "compute_report", "load_frames"]
