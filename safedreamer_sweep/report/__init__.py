"""Decision-grade reports from the run store (reads only the store).

    analysis/   the numbers: tidy frames, statistics, tables, warnings and the decision rule
    render/     the outputs: text tables, decision.md, figures, the user's templates, report.html
    build.py    build_report: compute everything in memory, then write every file atomically
    callback.py the Hydra callback that refreshes the report as jobs end (any launcher, any app)
    cost.py     device-hours and money per cell and per sweep (status reads it too)
    settings.py the report: block of conf/sweep.yaml, as a dataclass
    result.py   Report: everything a report computed, in memory (the notebook reads it)
    synthetic.py stores with known numbers, for the tests and bench/report_scale.py

    from safedreamer_sweep.report import build_report
    build_report("experiments")            # -> experiments/report/ (report.html, decision.md, ...)
"""

from safedreamer_sweep.report.analysis.aggregate import NotAStoreError, load_frames
from safedreamer_sweep.report.build import (
           ARTIFACTS,
           Report,
           build_report,
           compute_report,
)
from safedreamer_sweep.report.render.templates import TemplateRenderError
from safedreamer_sweep.report.settings import ReportSettings

__all__ = ["ARTIFACTS", "NotAStoreError", "Report", "ReportSettings", "TemplateRenderError", "build_report",
           "compute_report", "load_frames"]
