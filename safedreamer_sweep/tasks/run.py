"""The task of one cell: train (resuming from the newest checkpoint), evaluate ID and OOD, and
record every step of it in the cell's run directory. Writes nowhere else."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from omegaconf import DictConfig

from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.core.store import EVAL_KINDS, RunDir, Store


def cell_run_dir(cfg: DictConfig, spec: RunSpec | None = None) -> tuple[RunSpec, RunDir]:
    spec = spec or RunSpec.from_cfg(cfg)
    return spec, Store(cfg.store.root).run_dir(spec.config, spec.seed, spec.hash)


def run_cell(cfg: DictConfig, spec: RunSpec | None = None) -> dict[str, Any]:
    """Bring one cell to `done`: train what is missing, evaluate what is missing. Idempotent."""
    spec, rd = cell_run_dir(cfg, spec)
    rd.ensure_spec(spec.spec_document())
    if cfg.get("task", {}).get("kind", "builtin") == "external":
        from safedreamer_sweep.tasks.external import (  # any training script as a cell
            evaluate,
            train,
        )
    else:
        platform = cfg.get("trainer", {}).get("platform")
        if platform and "jax" not in sys.modules:  # must be set before JAX initialises its backends
            os.environ.setdefault("JAX_PLATFORMS", str(platform))
        from safedreamer_sweep.trainer.evaluate import evaluate
        from safedreamer_sweep.trainer.ppo_lag import train
    # start_step / end_step let the cost split tell resumed work from work redone after a loss.
    ckpts = rd.checkpoints()
    attempt = rd.begin_attempt(start_step=ckpts[-1][0] if ckpts else 0)
    try:
        _inject_fault(attempt)
        if not rd.trained:
            final_step = train(cfg, rd)
            rd.update_state(lambda s: s.update(trained=True, trained_steps=int(final_step)))
        for kind in EVAL_KINDS:
            if rd.read_eval(kind) is None:
                rd.set_phase(f"eval-{kind}")
                rd.write_eval(kind, evaluate(cfg, rd, kind))
    except (KeyboardInterrupt, SystemExit) as e:
        # The launcher's requeue handler (submit.CellTask.checkpoint) says why it stops the cell.
        cause = os.environ.get("SDS_INTERRUPT_CAUSE", "interrupted")
        evidence = os.environ.get("SDS_INTERRUPT_EVIDENCE", f"{type(e).__name__} / SIGINT")
        rd.end_attempt("interrupted", cause=cause, evidence=evidence, end_step=_env_step(rd))
        rd.set_phase("interrupted")
        raise
    except BaseException as e:
        tail = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
        rd.end_attempt("failed", cause="error", evidence=f"{type(e).__name__}: {e}", traceback_tail=tail,
                       end_step=_env_step(rd))
        rd.set_phase("failed")
        raise
    rd.end_attempt("done", end_step=_env_step(rd))
    rd.set_phase("done")
    return cell_result(spec, rd)


def _env_step(rd: RunDir) -> int | None:
    progress = rd.read_progress() or {}
    return progress.get("env_step")


def _inject_fault(attempt: int) -> None:
    """Test hook (documented in tests/test_launcher_slurm.py): SDS_INJECT_FAULT=node_fault:N makes
    attempt N fail the way a faulty GPU node does, so node-fault handling can be exercised."""
    spec = os.environ.get("SDS_INJECT_FAULT", "")
    if spec.startswith("node_fault:") and str(attempt) in spec.split(":", 1)[1].split(","):
        raise RuntimeError("CUDA error: busy (injected by SDS_INJECT_FAULT for a test)")


def cell_result(spec: RunSpec, rd: RunDir) -> dict[str, Any]:
    """What a finished cell returns to Hydra (and what a skipped cell returns from the store)."""
    out: dict[str, Any] = {"config": spec.config, "seed": spec.seed, "hash": spec.hash, "run_dir": str(rd.path)}
    for kind in EVAL_KINDS:
        ev = rd.read_eval(kind)
        out[kind] = ev.get("summary") if ev else None
    return out
