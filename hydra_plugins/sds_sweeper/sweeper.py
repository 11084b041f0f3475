"""Hydra's BasicSweeper with one change: before a batch is launched, each distinct shape of job is
composed once instead of every job (safedreamer_sweep/sweep/shapes.py says what a shape is and why
that is sound). The grammar (choice, range, glob, interval refused), `params`, `max_batch_size`,
the job order, multirun.yaml and the returns are BasicSweeper's own code, inherited unchanged."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SdsSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from safedreamer_sweep.sweep.shapes import ShapeValidator

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # one validator for every batch of the sweep: a shape composed in one batch is known in the next
        self.shapes: Any = ShapeValidator(hydra_context.config_loader, config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Raise Hydra's own error for the first job of the batch that would not compose."""
        tic = time.perf_counter()
        check = self.shapes.validate(batch)
        log.debug(f"validated {len(batch)} more jobs in {time.perf_counter() - tic:.2f} s; so far "
                  f"{check.composed} composed ({check.shapes} shapes), {check.derived} accepted from their shape")
