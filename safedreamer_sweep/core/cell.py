"""What a running cell's own code may ask of the sweep: its stable run directory and a heartbeat.

Any Hydra app launched with `hydra/launcher=sds_local|sds_slurm` runs inside a cell whose run
directory in the store (`<store>/runs/<label>/.../<hash8>/`) survives re-invocations, unlike Hydra's
timestamped output directory. The app gets it three ways: `safedreamer_sweep.run_dir()`, the
environment variable SDS_RUN_DIR, and the OmegaConf resolver `${sds_run_dir:}` (e.g.
`ckpt_dir: ${sds_run_dir:}/ckpt`). Outside a cell (basic launcher, a plain run) all three fall back
to the current directory, so the same app runs unchanged.

`heartbeat(step, total=None, **metrics)` tells the supervisor and `status` how far the cell is:
cheap (a no-op outside a cell, at most one atomic write per SDS_HEARTBEAT_EVERY_S seconds, 2 by
default, plus the final step), atomic (progress.json is replaced, never torn). With it a cell gets
steps/s, ETA and stall detection (the step did not move for hydra.launcher.stall_after); without it
the cell is supervised by process liveness alone, and `status` says so.

Only the standard library is imported here: `from safedreamer_sweep import heartbeat` stays cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "SDS_RUN_DIR"
HEARTBEAT_EVERY_ENV = "SDS_HEARTBEAT_EVERY_S"
_RESOLVER = "sds_run_dir"


def run_dir() -> Path | None:
    """The cell's stable run directory in the store, or None outside a cell."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _resolve_run_dir() -> str:
    """What `${sds_run_dir:}` resolves to: the cell's run directory, or "." outside a cell (and at
    plan time, so a config that uses it has one identity whichever cell it lands in)."""
    return os.environ.get(RUN_DIR_ENV) or "."


def register_resolver() -> None:
    """Register `${sds_run_dir:}` with OmegaConf (idempotent; never cached, the cell sets it late)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(_RESOLVER):
        OmegaConf.register_new_resolver(_RESOLVER, _resolve_run_dir, use_cache=False)


class _Beat:
    """Per-process rate limit and the last written (time, step), for steps/s."""

    path: str | None = None
    written_at: float = 0.0
    step: int | None = None


def heartbeat(step: int, total: int | None = None, **metrics: Any) -> bool:
    """Record that the cell reached `step` (of `total`, if known), with any scalar `metrics`
    (loss=0.3), which also go to the cell's metrics.jsonl as one row of its curve (what a study's
    pruner reads). Returns True when progress.json was written, False when skipped (outside a cell,
    or within SDS_HEARTBEAT_EVERY_S of the previous write and not the final step)."""
    path = os.environ.get(RUN_DIR_ENV)
    if not path:
        return False
    now = time.time()
    every = float(os.environ.get(HEARTBEAT_EVERY_ENV) or 2.0)
    final = total is not None and step >= total
    if path != _Beat.path:
        _Beat.path, _Beat.written_at, _Beat.step = path, 0.0, None
    if not final and now - _Beat.written_at < every:
        return False
    # lazy: only a cell that beats pays for the store's imports
    from safedreamer_sweep.core.run_dir import RunDir, lease_from_env

    rate = None
    if _Beat.step is not None and now > _Beat.written_at and step >= _Beat.step:
        rate = (step - _Beat.step) / (now - _Beat.written_at)
    fields: dict[str, Any] = {"source": "heartbeat", "metrics": metrics}
    if rate is not None:
        fields["steps_per_s"] = rate
    # fenced by the cell's lease ($SDS_LEASE), which each beat renews
    rd = RunDir(Path(path), lease_from_env(Path(path)))
    rd.heartbeat(int(step), None if total is None else int(total), **fields)
    if metrics:  # the curve a study's pruner reads at env-step rungs (search/curves.py), as the built-in's
        rd.append_metrics({"env_step": int(step), **metrics})
    _Beat.written_at, _Beat.step = now, int(step)
    return True
