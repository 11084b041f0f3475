"""The status document of a store (`collect`): what `status --json` prints (docs/status-json.md),
built from the run directories and the scheduler only (observe.observe_store), never from a log
line's timestamp."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safedreamer_sweep.commands.status.evidence import (
    cost_settings,
    last_outcome,
    live_claim,
    other_identities,
    process_evidence,
    slurm_job_state,
    stall_after_from,
    uses_slurm,
)
from safedreamer_sweep.commands.status.headline import headline
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.report.cost import cell_key, store_cost
from safedreamer_sweep.report.study import read_studies
from safedreamer_sweep.sweep.failures import bad_nodes_of_store
from safedreamer_sweep.sweep.observe import PHASES, observe_store

SCHEMA = "safedreamer-sweep/status/1"
# Fields every cell of the JSON document carries (docs/status-json.md); tests check them.
CELL_FIELDS = ("config", "seed", "hash", "run_dir", "phase", "env_step", "total_steps", "steps_per_s",
               "eta_s", "progress_age_s", "host", "pid", "pid_alive", "job_id", "job_state", "attempts",
               "cause", "evidence", "detail", "last_outcome", "claimed_by", "trained", "eval_id", "eval_ood",
               "proc_status", "cpu_percent", "other_identities", "cost", "stale_eval", "pruned_at", "pruned_by")


class StatusError(Exception):
    """The store cannot be read (missing, not a store). The message names the path and the fix."""


def _open_store(store_root: str | Path) -> Store:
    root = Path(store_root).expanduser()
    if root.exists() and not root.is_dir():
        raise StatusError(f"{root}: is a file, not a store directory. Fix: pass the directory given as "
                          f"store.root when the sweep was launched.")
    if not root.is_dir():
        raise StatusError(f"{root}: no such store directory. Fix: pass the store.root of your sweep "
                          f"(e.g. `safedreamer-sweep status experiments`), or launch a sweep first.")
    store = Store(root)
    if not store.runs_dir.is_dir() and not store.sweeps_dir.is_dir():
        raise StatusError(f"{store.root}: not a safedreamer-sweep store (no runs/ and no sweeps/ inside). "
                          f"Fix: pass the directory given as store.root when the sweep was launched.")
    return store


def _cell(store: Store, v: Any, stall: float, job_state: Callable[[str], str | None] | None,
          cost: dict) -> dict[str, Any]:
    """One cell of the document: its observed view plus the evidence status adds."""
    d = v.to_dict()
    d["last_outcome"] = last_outcome(v.run_dir)
    d["claimed_by"] = live_claim(v.run_dir, stall, job_state) if v.phase == "pending" else None
    d["other_identities"] = other_identities(store, v)
    c = cost["cells"].get(cell_key(v.config, v.seed, Path(v.run_dir).name if v.run_dir else v.hash))
    d["cost"] = None if c is None else {k: c[k] for k in ("device", "useful_h", "wasted_h", "pending_h", "pruned_h", "total_h")}
    return d


def collect(store_root: str | Path, *, stall_after: float | None = None, now: float | None = None,
            job_state: Callable[[str], str | None] | None = None, per_gpu_hour: float | None = None,
            currency: str | None = None, sample_cpu: bool = True) -> dict[str, Any]:
    """The status document of a store (what `--json` prints). Reads only; raises StatusError when
    `store_root` is not a store."""
    store = _open_store(store_root)
    t = time.time() if now is None else now
    stall = float(stall_after) if stall_after is not None else stall_after_from(store)
    if job_state is None and uses_slurm(store):
        job_state = slurm_job_state()
    views = observe_store(store, stall_after=stall, now=t, job_state=job_state)
    cm_rate, cm_cur = cost_settings(store)
    cost = store_cost(store, per_gpu_hour=per_gpu_hour if per_gpu_hour is not None else cm_rate,
                      currency=currency or cm_cur, now=t)
    cells = [_cell(store, v, stall, job_state, cost) for v in views]
    if sample_cpu:
        process_evidence(cells)
    else:
        for d in cells:
            d.setdefault("proc_status", None)
            d.setdefault("cpu_percent", None)
    counts = {p: sum(c["phase"] == p for c in cells) for p in PHASES}
    return {
        "schema": SCHEMA,
        "store": str(store.root),
        "generated_at": t,
        "stall_after_s": stall,
        "verdict": headline(cells),  # the JSON key keeps its name (docs/status-json.md)
        "all_done": bool(cells) and counts["done"] == len(cells),
        # nothing left to run and nothing failed: every cell done, or pruned by its study's pruner
        "finished": bool(cells) and counts["done"] + counts["pruned"] == len(cells),
        "counts": {"cells": len(cells), **counts},
        "cells": cells,
        "cost": {"total": cost["total"], "configs": cost["configs"], "money": cost["money"]},
        # nodes that ended an attempt with a node fault: the node, its first evidence, the cells it cost
        "bad_nodes": bad_nodes_of_store(store),
        # one object per study under <store>/studies/ (report/study.py StudyView.to_dict), [] without
        "studies": [v.to_dict() for v in read_studies(store.root, importances=False)],
    }


def exit_code(doc: dict) -> int:
    """0 when every cell is done or pruned by its study (`finished`: a finished study's store), 1 otherwise."""
    return 0 if doc.get("finished", doc.get("all_done")) else 1
