"""Synthetic stores with known numbers, written through the store API (RunDir), for the report's
tests and its scale benchmark. Not a stand-in for a real sweep: the statistics tests need inputs
whose answers are known in advance, which a real training run cannot give."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from safedreamer_sweep.core.store import Store

_COST_LIMIT = 25.0
_OOD_PROXY = "SafetyPointGoal2-v0 as an OOD proxy (synthetic test store)."


def run_config(config: str, seed: int, u: bool, cert: bool) -> dict:
    """A minimal resolved run config in the shape identity.run_config produces."""
    return {"seed": seed, "agent": {"u": {"enabled": u}, "cert": {"enabled": cert},
                                    "lagrangian": {"cost_limit": _COST_LIMIT}},
            "env": {"id": "SafetyPointGoal1-v0"}, "trainer": {"total_steps": 16384}}


def _hash8_of(config: str, seed: int) -> str:
    """A stable stand-in identity hash for a synthetic cell."""
    return hashlib.sha256(f"{config}/{seed}".encode()).hexdigest()[:8]


KNOBS = {"v2_baseline": (False, False), "v2_u_only": (True, False), "v2_cert_only": (False, True),
         "v2_full": (True, True)}


def write_cell(store: Store, config: str, seed: int, *, id_returns: list[float], id_costs: list[float],
               ood_returns: list[float], ood_costs: list[float], risk_penalty: float = 0.0,
               curve_points: int = 8, steps_per_point: int = 2048, final_return: float | None = None,
               evals: tuple[str, ...] = ("id", "ood"), trained: bool = True, phase: str = "done",
               run_cfg: dict | None = None, hash8: str | None = None, attempt_hours: float = 0.5) -> None:
    """One cell: spec, state (one closed attempt), metrics curve, eval curve and eval JSONs."""
    u, cert = KNOBS.get(config, (False, False))
    rc = run_cfg or run_config(config, seed, u, cert)
    hash8 = hash8 or _hash8_of(config, seed)
    rd = store.run_dir(config, seed, hash8)
    rd.ensure_spec({"config": config, "seed": seed, "hash": hash8, "run_config": rc, "overrides": []})
    t0 = 1_700_000_000.0
    outcome = "done" if phase == "done" else ("failed" if phase == "failed" else "running")
    attempt = {"n": 1, "outcome": outcome, "started_at": t0, "host": "synthetic", "pid": 1,
               "resources": {"gpus": 1, "cpus": 2, "mem_gb": 8}}
    if outcome != "running":
        attempt["ended_at"] = t0 + attempt_hours * 3600
    if outcome == "failed":
        attempt.update(cause="error", evidence="RuntimeError: synthetic failure")
    rd.update_state(lambda s: s.update(phase=phase, trained=trained,
                                       trained_steps=curve_points * steps_per_point if trained else 0,
                                       attempts=[attempt]))
    end = final_return if final_return is not None else float(np.mean(id_returns)) if id_returns else 0.0
    lines = []
    for i in range(1, curve_points + 1):
        frac = i / curve_points
        lines.append({"env_step": i * steps_per_point, "episode_return": end * frac,
                      "episode_cost": 40.0 * (1 - frac) + 10.0, "risk_penalty": risk_penalty,
                      "lagrange_multiplier": 0.1 * frac})
    with open(rd.metrics_path, "a") as f:  # one write for speed at benchmark scale (same format as append_metrics)
        f.write("".join(json.dumps(r) + "\n" for r in lines))
    rd.append_metrics({"env_step": curve_points * steps_per_point, "return_mean": end, "cost_mean": 10.0},
                      rd.eval_curve_path)
    for kind, rets, costs in (("id", id_returns, id_costs), ("ood", ood_returns, ood_costs)):
        if kind not in evals:
            continue
        eps = [{"return": float(r), "cost": float(c), "length": 1000} for r, c in zip(rets, costs)]
        doc = {"kind": kind, "env_id": "SafetyPointGoal1-v0" if kind == "id" else "SafetyPointGoal2-v0",
               "checkpoint_step": curve_points * steps_per_point, "seed": seed, "cost_limit": _COST_LIMIT,
               "episodes": eps,
               "summary": {"return_mean": float(np.mean(rets)), "cost_mean": float(np.mean(costs)),
                           "episodes": len(eps)}}
        if kind == "ood":
            doc["ood_proxy"] = _OOD_PROXY
        rd.write_eval(kind, doc)


def write_store(root: str | Path, configs: dict[str, Callable[[int], dict]], seeds: list[int],
                manifest_cells: list[tuple[str, int]] | None = None, **cell_kw) -> Store:
    """A store with `configs[name](seed) -> write_cell kwargs` for every (config, seed), and a sweep
    manifest asking for `manifest_cells` (default: all of them). A cell whose kwargs are None
    gets no run dir: a hole that only the manifest knows about."""
    store = Store(root)
    cells = manifest_cells or [(c, s) for c in configs for s in seeds]
    store.write_sweep_manifest("synthetic", {"created_at": 0, "cells": [
        {"config": c, "seed": s, "hash": _hash8_of(c, s), "overrides": []} for c, s in cells]})
    for config, make in configs.items():
        for seed in seeds:
            kw = make(seed)
            if kw is None:
                continue
            write_cell(store, config, seed, **{**cell_kw, **kw})
    return store
