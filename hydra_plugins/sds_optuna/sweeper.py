"""hydra/sweeper=sds_optuna: Optuna 5 owns the ask/tell loop and the sds launchers run each trial's
cells (safedreamer_sweep/search/launch.py). Only the sds launchers can: the loop drives their
supervisor directly, with no barrier between trials."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class SdsOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in conf.items()}
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from safedreamer_sweep.search.launch import run_search
        from safedreamer_sweep.search.settings import SearchError

        assert self.config is not None and self.hydra_context is not None
        if getattr(self.launcher, "_EXECUTOR", None) not in ("local", "slurm"):  # SdsLocalLauncher, SdsSlurmLauncher
            raise SearchError(f"hydra/sweeper=sds_optuna runs its trials' cells through the sds launchers, not "
                              f"{type(self.launcher).__name__}. Fix: hydra/launcher=sds_local (or sds_slurm)")
        run_search(self.conf, arguments, launcher=self.launcher, config=self.config,
                   hydra_context=self.hydra_context, backend=self.launcher._EXECUTOR, report=_report)


def _report(sweep: Any) -> None:
    """The store's report when the study ends (idempotent; never raises), as the launcher writes it."""
    from safedreamer_sweep.report.callback import refresh
    from safedreamer_sweep.sweep.launch import say

    for line in refresh(sweep.store.root, sweep.report_settings(), say=say):
        say(f"[sds] report: {line}")
