"""The report's caveats: what the frames do not hold is read here from the run directories (each
resumed cell's `resumes` in state.json), then report/analysis/caveats.py says every caveat."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.report.analysis.aggregate import Frames
from safedreamer_sweep.report.analysis.caveats import Caveat, Resumed, collect_caveats, resume_texts
from safedreamer_sweep.report.settings import ReportSettings


def _read_resumed(cells: pd.DataFrame) -> list[Resumed]:
    """The resumed cells among `cells` (a frame with config, seed, run_dir), with their resumes."""
    out = []
    for r in cells.itertuples():
        if not isinstance(getattr(r, "run_dir", None), str):
            continue
        try:
            resumes = RunDir(Path(r.run_dir)).read_state().get("resumes") or []
        except Exception:  # noqa: BLE001, S112  an unreadable state is reported as corrupt elsewhere
            continue
        if resumes:
            seed = int(r.seed) if isinstance(r.seed, (int, float)) and r.seed == r.seed else r.seed
            out.append(Resumed(config=r.config, seed=seed, resumes=list(resumes)))
    return out


def resume_caveats(cells: pd.DataFrame) -> list[str]:
    """What each resumed cell of `cells` did not restore, and the frames it trained twice."""
    return resume_texts(_read_resumed(cells))


def caveats(frames: Frames, cov: pd.DataFrame, settings: ReportSettings) -> list[Caveat]:
    """Every caveat of the report, in the order it shows them (before any result)."""
    return collect_caveats(frames, cov, settings, _read_resumed(frames.cells))
