"""The launcher: plan against the store, claim, submit through submitit, supervise, return one
JobReturn per override. The work lives in safedreamer_sweep (plan, claim, submit, supervise,
failures, hooks); heavy imports happen inside methods so plugin discovery stays fast."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SdsLauncher(Launcher):
    _EXECUTOR = "abstract"

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from safedreamer_sweep.sweep.supervise import launch_sweep

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return launch_sweep(backend=self._EXECUTOR, params=self.params, config=self.config,
                            hydra_context=self.hydra_context, task_function=self.task_function,
                            job_overrides=job_overrides, initial_job_idx=initial_job_idx)


class SdsLocalLauncher(SdsLauncher):
    _EXECUTOR = "local"


class SdsSlurmLauncher(SdsLauncher):
    _EXECUTOR = "slurm"
