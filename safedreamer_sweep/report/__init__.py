"""Decision-grade reports from the run store (reads only the store).

    analysis/    the numbers, pure functions over the frames: tidy frames, statistics, tables, the
                 caveats and the decision rule
    render/      the outputs: text tables, decision.md, figures, the user's templates, report.html
    build.py     build_report: compute everything in memory, then write every file atomically
    caveats.py   the caveats: reads what the frames do not hold (resumes) and hands it to the analysis
    callback.py  the Hydra callback that refreshes the report as jobs end (any launcher, any app)
    cost.py      device-hours and money per cell and per sweep (status reads it too)
    settings.py  the report: block of conf/sweep.yaml, as a dataclass
    result.py    Report: everything a report computed, in memory (the notebook reads it)
    study.py     the studies in the store (Optuna journals, read only): one StudyView each
    synthetic.py stores with known numbers, for the tests and bench/report_scale.py
    __main__.py  `python -m safedreamer_sweep.report STORE`

    from safedreamer_sweep.report import build_report
    build_report("experiments")            # -> experiments/report/ (report.html, decision.md, ...)

The names below (build_report, compute_report, Report, ...) are imported on first use, so importing
the package (as Hydra does for the callback) loads no pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safedreamer_sweep.report.analysis.aggregate import NotAStoreError as NotAStoreError
    from safedreamer_sweep.report.analysis.aggregate import load_frames as load_frames
    from safedreamer_sweep.report.build import ARTIFACTS as ARTIFACTS
    from safedreamer_sweep.report.build import build_report as build_report
    from safedreamer_sweep.report.build import compute_report as compute_report
    from safedreamer_sweep.report.render.templates import TemplateRenderError as TemplateRenderError
    from safedreamer_sweep.report.result import Report as Report
    from safedreamer_sweep.report.settings import ReportSettings as ReportSettings

__all__ = ["analysis", "build", "callback", "caveats", "cost", "render", "result", "settings", "study", "synthetic"]

# The package's API: name -> the module that defines it.
_API = {"ARTIFACTS": "build", "build_report": "build", "compute_report": "build", "Report": "result",
        "NotAStoreError": "analysis.aggregate", "load_frames": "analysis.aggregate",
        "TemplateRenderError": "render.templates", "ReportSettings": "settings"}


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
