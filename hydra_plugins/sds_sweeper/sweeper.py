"""Hydra's BasicSweeper with one change: before a batch is launched, each distinct shape of job is
composed once instead of every job (safedreamer_sweep/sweep/shapes.py says what a shape is and why
that is sound). The grammar (choice, range, glob, interval refused), `params`, `max_batch_size`,
the job order, multirun.yaml and the returns are BasicSweeper's own code, inherited unchanged."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)


class SdsSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Raise Hydra's own error for the first job of the batch that would not compose."""
        from safedreamer_sweep.sweep.shapes import validate_jobs

        assert self.hydra_context is not None and self.config is not None
        tic = time.perf_counter()
        check = validate_jobs(self.hydra_context.config_loader, self.config, batch)
        log.debug(f"validated {len(batch)} jobs in {time.perf_counter() - tic:.2f} s: {check.composed} composed "
                  f"({check.shapes} shapes), {check.derived} accepted from their shape")
