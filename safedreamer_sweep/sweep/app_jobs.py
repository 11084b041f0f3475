"""An app's job run by another launcher (basic, hydra-submitit-launcher), recorded in the store as
a cell: its spec and an attempt when the job starts, its outcome when it ends (the return value and
phase done, or failed with the exception's cause and traceback tail). The report's Hydra callback
(report/callback.py) calls it; the package's own tasks record themselves, and inside an sds cell the
launcher does."""

from __future__ import annotations

from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.launcher_options import BaseOptions
from safedreamer_sweep.core.migrations import migrate
from safedreamer_sweep.core.run_dir import RunDir, error_fields
from safedreamer_sweep.core.store import Store, label_base
from safedreamer_sweep.sweep.claim import live_holder
from safedreamer_sweep.sweep.compose import cell_spec


def begin_app_job(store_root: Path, config: DictConfig, swept: set[str]) -> RunDir | None:
    """The run directory of the job's cell (`config`: the job's composed config; `swept`: the keys
    the sweep varies), its spec ensured and an attempt begun; None for a job of the package's own
    tasks, which record themselves."""
    overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    spec = cell_spec(config, overrides, swept)
    if spec.done_when != "return":
        return None
    migrate(store_root, held=lambda rd: live_holder(rd, stall_after=BaseOptions.stall_after), app=spec.app,
            app_label=label_base(spec.config), say=print)  # a store of an older format: forward
    rd = Store(store_root).locate(spec.config, spec.seed, spec.hash, spec.run_config)
    rd.ensure_spec(spec.spec_document())
    rd.begin_attempt(launcher=str(OmegaConf.select(config, "hydra.launcher._target_", default="?")))
    return rd


def record_outcome(rd: RunDir, job_return: JobReturn) -> None:
    """Close the job's attempt: the return value stored and phase done, or failed with the
    exception as evidence and its traceback tail."""
    value = job_return._return_value
    if job_return.status == JobStatus.COMPLETED:
        rd.write_result(value)
        rd.end_attempt("done")
        rd.set_phase("done")
        return
    fields = (error_fields(value) if isinstance(value, BaseException)
              else {"cause": "error", "evidence": f"job status {job_return.status.name}", "traceback_tail": ""})
    rd.end_attempt("failed", **fields)
    rd.set_phase("failed")
