"""A Hydra Callback that keeps the store's tables current under any launcher (basic,
hydra-submitit-launcher, sds_local/sds_slurm):

    hydra:
      callbacks:
        sds_report:
          _target_: safedreamer_sweep.report.callback.ReportCallback

Hydra skips `on_multirun_end` when a job failed, so the tables are refreshed as each job ends too:
a sweep with a failed job still leaves current tables. Refreshing = build_report (tables, figures,
decision report, report.html) when the store holds cells of the package's own tasks, and
results.csv/.md/.png with report.html for cells of any other app (build.build_app_report).

Under a launcher that does not record cells itself (basic, submitit), the callback has each job of
an app recorded in the store (sweep/app_jobs.py: spec, attempt, outcome with cause and traceback,
the return value) and hands the app its run directory for the job (SDS_RUN_DIR, so
safedreamer_sweep.heartbeat and ${sds_run_dir:} work there too). The package's own tasks record
themselves, and inside an sds cell the launcher does, so nothing is recorded then.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.cell import RUN_DIR_ENV, register_resolver
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store

log = logging.getLogger(__name__)
register_resolver()  # ${sds_run_dir:} under any launcher: Hydra imports this before it composes a job

# What report settings build_report reads from an app's config (when it has them).
_SETTING_KEYS = ("report", "cost", "sweep", "store")


def report_settings(cfg: DictConfig | None) -> dict | None:
    """The report/cost/sweep/store nodes of a config as plain containers (None: none of them)."""
    if cfg is None:
        return None
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in _SETTING_KEYS if k in cfg}
    return out or None


def refresh(store_root: str | Path, settings: dict | None = None, say: Any = log.info) -> list[Path]:
    """Rebuild the store's tables: build_report when it holds cells of the package's own tasks,
    build_app_report (results.csv/.md, report.html) for any other app's cells (`settings`:
    report_settings). Returns the directories written. Never raises: a report that cannot be built
    is logged with the command that builds it later."""
    from safedreamer_sweep.report.build import build_app_report, cell_kinds

    store = Store(store_root)
    written: list[Path] = []
    try:
        kinds = cell_kinds(store.root)
        if "eval" in kinds:
            from safedreamer_sweep.report import build_report

            # The decision is on screen as soon as the tables are written; the figures follow.
            written.append(build_report(store.root, cfg=settings, on_summary=lambda out, r: say(
                f"[sds] decision: {r.decision.headline} ({out / 'report.html'}; drawing the figures)")))
        out = build_app_report(store.root, page="eval" not in kinds)
        if out is not None:
            written.append(out)
    except Exception as e:  # noqa: BLE001 (a sweep's outcome must never hinge on its report)
        say(f"[sds] report not refreshed ({type(e).__name__}: {e}); build it later with: "
            f"safedreamer-sweep report {store.root}")
    return written


class ReportCallback(Callback):
    """See the module docstring. `store_root` overrides where the store is (default: the app's
    store.root, else hydra.launcher.store_root, else $SDS_STORE, else ./sds_store)."""

    def __init__(self, store_root: str | None = None, refresh_on_job_end: bool = True) -> None:
        self.store_root = store_root
        self.refresh_on_job_end = refresh_on_job_end
        self.swept: set[str] | None = None
        # the job being recorded, and the block that hands it its run directory (SDS_RUN_DIR)
        self._recording: tuple[RunDir, contextlib.ExitStack] | None = None

    def _root(self, config: DictConfig) -> Path:
        from safedreamer_sweep.sweep.settings import absolute_store_root

        if self.store_root:
            return absolute_store_root(OmegaConf.create({"store": {"root": self.store_root}}))
        return absolute_store_root(config)

    # --- the launching process
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from safedreamer_sweep.sweep.compose import swept_keys

        self.swept = swept_keys(config)  # carried to the jobs: launchers pickle the callbacks with them

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        refresh(self._root(config), report_settings(config))

    # --- the job (in-process for basic, in the worker for submitit and sds)
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get(RUN_DIR_ENV):
            return  # inside an sds cell: the launcher records it
        from safedreamer_sweep.sweep.app_jobs import begin_app_job
        from safedreamer_sweep.sweep.submit import temporary_environ

        rd = begin_app_job(self._root(config), config, self.swept or set())
        if rd is None:
            return  # the package's own tasks record themselves
        env = contextlib.ExitStack()
        env.enter_context(temporary_environ({RUN_DIR_ENV: str(rd.path)}))
        self._recording = (rd, env)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self._recording is not None:
            from safedreamer_sweep.sweep.app_jobs import record_outcome

            rd, env = self._recording
            self._recording = None
            env.close()
            record_outcome(rd, job_return)
        if self.refresh_on_job_end and not os.environ.get("SDS_HANDED_BACK"):  # a value handed back changes no table
            refresh(self._root(config), report_settings(config))
