"""One cell of any Hydra app: the app's own task function, with the cell's attempt, outcome and
return value recorded in its run directory, whatever the app does itself.

The sds launchers run every cell through `RecordedTask` (sweep/cell_task.py, inside Hydra's run_job):
the attempt is opened before the task function runs and closed after it (done, failed with the
exception and its traceback tail, or interrupted with the requeue handler's cause), the return
value is stored (result.pkl: a re-run hands it back without running anything), and Hydra's own
output directory and job id are noted in the attempt, so the launcher's JobReturn carries them.
The package's own task (tasks/run.py) records its attempts too; it continues the same attempt
(RunDir.begin_attempt, same process) and closes it first, with its evidence.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.cell import RUN_DIR_ENV
from safedreamer_sweep.core.run_dir import RunDir, error_fields, lease_from_env


def _close_open_attempt(rd: RunDir, outcome: str, **fields: Any) -> bool:
    """Close the newest attempt if this process still holds it open; False when the task closed it."""
    closed = False

    def change(s: dict) -> None:
        nonlocal closed
        a = s.get("attempts") or []
        if a and a[-1].get("outcome") == "running" and a[-1].get("pid") == os.getpid():
            a[-1].update(outcome=outcome, ended_at=time.time(), **fields)
            closed = True

    rd.update_state(change)
    return closed


def _hydra_note() -> dict[str, Any]:
    """Where Hydra put this job (its output dir, job id and number), for the launcher's JobReturn."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:  # not under Hydra
        return {}
    return {"output_dir": hc.runtime.output_dir, "job_id": str(hc.job.id), "job_num": hc.job.num}


class RecordedTask:
    """`task_function` run as the cell at `run_dir` (see the module docstring)."""

    def __init__(self, task_function: Callable[[Any], Any], run_dir: str | os.PathLike) -> None:
        self.task_function = task_function
        path = Path(run_dir)
        self.rd = RunDir(path, lease_from_env(path))

    def __call__(self, cfg: Any) -> Any:
        rd = self.rd
        os.environ[RUN_DIR_ENV] = str(rd.path)
        rd.begin_attempt(hydra=_hydra_note())
        try:
            value = self.task_function(cfg)
            try:
                rd.write_result(value)
            except (TypeError, AttributeError, ValueError) as e:  # pickle refused it
                raise TypeError(f"{rd.path}: the task function returned a {type(value).__name__} that cannot be "
                                f"stored ({e}). Fix: return plain data (numbers, strings, lists, dicts)") from e
        except (KeyboardInterrupt, SystemExit) as e:
            if _close_open_attempt(rd, "interrupted", cause=os.environ.get("SDS_INTERRUPT_CAUSE", "interrupted"),
                                   evidence=os.environ.get("SDS_INTERRUPT_EVIDENCE", f"{type(e).__name__}")):
                rd.set_phase("interrupted")
            raise
        except BaseException as e:
            if _close_open_attempt(rd, "failed", **error_fields(e)):
                rd.set_phase("failed")
            raise
        if _close_open_attempt(rd, "done"):
            rd.set_phase("done")
        return value
