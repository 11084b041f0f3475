"""The launcher: plan against the store, claim, submit through submitit, supervise, report, and
return one JobReturn per override. `launch()` is that pipeline in order; each stage lives in
safedreamer_sweep (sweep/launch.py and the modules it names); heavy imports happen inside methods
so plugin discovery stays fast."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


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
        if OmegaConf.select(config, "task.kind", default=None) == "builtin":  # the planner checks env ids
            from safedreamer_sweep.core.schema import prefetch_safety_gymnasium_ids

            prefetch_safety_gymnasium_ids()  # while Hydra's sweeper validates the jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from safedreamer_sweep.sweep.launch import plan_sweep, say
        from safedreamer_sweep.sweep.plan import format_plan
        from safedreamer_sweep.sweep.progress import Progress

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep = plan_sweep(self._EXECUTOR, self.params, self.config, self.hydra_context, job_overrides, initial_job_idx)
        say(format_plan(sweep.cells))
        if sweep.dry_run:
            return sweep.dry_run_returns()
        sweep.record()
        backend = sweep.make_backend(self.hydra_context, self.task_function, initial_job_idx)
        sup = sweep.supervisor(backend, sweep.claim())
        if not sweep.wait:
            return sweep.detach(sup)
        _warm_report_imports()  # pandas, scipy, rliable ...: loaded while cells run, so the report follows the last cell at once
        with Progress(sweep.progress, *sweep.settled()) as progress:
            if sweep.progress != "none":
                sup.on_tick = progress.tick
            finished = sweep.supervise(sup)
        returns, summary = sweep.job_returns(finished)
        # imported here, not before the plan: its imports cost ~1 s, and _warm_report_imports loaded them meanwhile
        from safedreamer_sweep.report.callback import refresh

        # the report is idempotent, runs even when cells failed, and never raises
        for out in refresh(sweep.store.root, sweep.report_settings(), say=say):
            say(f"[sds] report: {out}")
        sweep.run_hooks(sup)
        say(f"[sds] {summary}")
        return returns


def _warm_report_imports() -> None:
    """Import the report's heavy modules in a background thread while the supervisor waits: the
    launcher is idle then, and the end-of-sweep report no longer pays ~2 CPU-s of imports."""

    def load() -> None:
        try:
            import safedreamer_sweep.report.build
            import safedreamer_sweep.report.cost  # noqa: F401
        except Exception as e:  # noqa: BLE001 (the end-of-sweep report says it again, with the fix)
            logging.getLogger(__name__).debug("warming the report's imports failed: %s", e)

    threading.Thread(target=load, name="sds-warm-report", daemon=True).start()


class SdsLocalLauncher(SdsLauncher):
    _EXECUTOR = "local"


class SdsSlurmLauncher(SdsLauncher):
    _EXECUTOR = "slurm"
