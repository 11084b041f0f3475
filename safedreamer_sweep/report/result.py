"""`Report`: everything a report computed, in memory. `build` makes it; `document`, the templates
and the notebook read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from safedreamer_sweep.report.analysis.aggregate import Frames
from safedreamer_sweep.report.analysis.caveats import Caveat
from safedreamer_sweep.report.analysis.decision import Decision
from safedreamer_sweep.report.settings import ReportSettings


@dataclass
class Report:
    """Everything the report computed; the notebook and the templates read it too."""

    settings: ReportSettings
    frames: Frames
    coverage: pd.DataFrame
    main: pd.DataFrame
    ablation: pd.DataFrame
    warnings: list[Caveat]  # the caveats, in the order the report shows them
    decision: Decision
    cost: dict
    documents: dict[str, str] = field(default_factory=dict)
    studies: list[Any] = field(default_factory=list)  # report/study.py StudyView per study in the store

    @property
    def cost_limit(self) -> float:
        return self.decision.cost_limit
