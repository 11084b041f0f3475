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


# ----------------------------------------------------------------------------- studies (issue 30)

# The default study of study_store: 12 trials of (agent.lr, agent.horizon) on seeds 0 and 1, a cost
# limit of 25. Trial 4 has the highest return but breaks the limit (cost 42); trial 7 is the best
# feasible one (12.5). 9 complete (0.1 device-h each), 2 pruned (0.02 + 0.03), 1 failed (0.01).
STUDY_TRIALS: list[dict] = [
    {"state": "complete", "params": {"agent.lr": 0.0001, "agent.horizon": 8}, "values": [5.0, 7.0], "costs": [10.0, 12.0]},
    {"state": "complete", "params": {"agent.lr": 0.0003, "agent.horizon": 16}, "values": [8.0, 10.0], "costs": [14.0, 16.0]},
    {"state": "pruned", "params": {"agent.lr": 0.01, "agent.horizon": 8}, "device_hours": 0.02, "pruned_at": 4096},
    {"state": "complete", "params": {"agent.lr": 0.001, "agent.horizon": 16}, "values": [11.0, 13.0], "costs": [20.0, 22.0]},
    {"state": "complete", "params": {"agent.lr": 0.005, "agent.horizon": 8}, "values": [20.0, 22.0], "costs": [40.0, 44.0]},
    {"state": "failed", "params": {"agent.lr": 0.008, "agent.horizon": 16}, "device_hours": 0.01},
    {"state": "complete", "params": {"agent.lr": 0.002, "agent.horizon": 8}, "values": [9.0, 11.0], "costs": [18.0, 19.0]},
    {"state": "complete", "params": {"agent.lr": 0.003, "agent.horizon": 16}, "values": [12.0, 13.0], "costs": [22.0, 24.0],
     "test": {"seeds": [100, 101], "values": [11.0, 12.0]}},
    {"state": "pruned", "params": {"agent.lr": 0.009, "agent.horizon": 16}, "device_hours": 0.03, "pruned_at": 8192},
    {"state": "complete", "params": {"agent.lr": 0.0005, "agent.horizon": 8}, "values": [7.0, 8.0], "costs": [12.0, 12.0]},
    {"state": "complete", "params": {"agent.lr": 0.004, "agent.horizon": 8}, "values": [14.0, 16.0], "costs": [30.0, 28.0]},
    {"state": "complete", "params": {"agent.lr": 0.0007, "agent.horizon": 16}, "values": [6.0, 9.0], "costs": [11.0, 13.0]},
]


def seed_spread(values: list[float]) -> dict:
    """The spread of one objective over seeds as the driver records it (sds_spread): n, mean, std,
    IQM, min, max and the Student t 95% interval of the mean (None below 2 seeds)."""
    from scipy import stats as st

    v = np.asarray([x for x in values if x is not None], dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else None
    std = float(v.std(ddof=1)) if n > 1 else None
    half = float(st.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 and std is not None else None
    q = np.sort(v)[int(np.floor(n * 0.25)):int(np.ceil(n * 0.75))] if n else v
    return {"n": n, "mean": mean, "std": std, "iqm": float(q.mean()) if len(q) else mean,
            "min": float(v.min()) if n else None, "max": float(v.max()) if n else None,
            "ci_low": mean - half if half is not None and mean is not None else None,
            "ci_high": mean + half if half is not None and mean is not None else None}


def _study_cells(label_base: str, params: dict, seeds: list[int]) -> list[dict]:
    """sds_cells of a trial: one per tuning seed, with the run dir it would have in the store."""
    label = ",".join([label_base, *(f"{k}={v}" for k, v in params.items())])
    return [{"seed": s, "label": label, "hash": _hash8_of(label, s), "run_dir": f"runs/{label}/seed_{s}/{_hash8_of(label, s)}",
             "overrides": [*(f"{k}={v}" for k, v in params.items()), f"seed={s}"]} for s in seeds]


def _tell_trial(study, spec: dict, seeds: list[int], limit: float | None, metrics: tuple[str, str]) -> None:
    """Ask one trial with `spec`'s params, attach the sds_* attributes and tell its state."""
    import optuna

    study.enqueue_trial(spec["params"])
    trial = study.ask()
    for k, v in spec["params"].items():
        if isinstance(v, int):
            trial.suggest_int(k, 1, 64)
        else:
            trial.suggest_float(k, 1e-5, 1e-1, log=True)
    state = spec["state"]
    trial.set_user_attr("sds_cells", _study_cells("v2_baseline", spec["params"], seeds))
    trial.set_user_attr("sds_device_hours", spec.get("device_hours", 0.05 * len(seeds)))
    values, costs = spec.get("values"), spec.get("costs")
    if values is not None:
        trial.set_user_attr("sds_seed_values", [values])
        trial.set_user_attr("sds_spread", [seed_spread(values)])
    if costs is not None and limit is not None:
        mean_cost = float(np.mean(costs))
        trial.set_user_attr("sds_cost", {"mean": mean_cost, "values": costs, "limit": limit, "metric": metrics[1]})
        trial.set_constraint("cost", mean_cost - limit)
    if spec.get("test"):
        t = spec["test"]
        trial.set_user_attr("sds_test", {"seeds": t["seeds"], "values": [t["values"]],
                                         "spread": [seed_spread(t["values"])],
                                         "cells": _study_cells("v2_baseline", spec["params"], t["seeds"])})
    if state == "complete":
        study.tell(trial, float(np.mean(values or [])))
    elif state == "pruned":
        for i, v in enumerate(spec.get("intermediate", [1.0])):
            trial.report(v, 4096 * (i + 1))
        trial.set_user_attr("sds_pruned_at", spec.get("pruned_at", 4096))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif state == "failed":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    # "running": left as asked (in flight, or its invocation died)


def study_store(root: str | Path, name: str = "lr-search", trials: list[dict] | None = None, *,
                seeds: tuple[int, ...] = (0, 1), limit: float | None = 25.0, n_trials: int | None = None,
                metrics: tuple[str, str] = ("id.return_mean", "id.cost_mean"), cells: bool = True) -> Path:
    """A store holding one study at <root>/studies/<name>/ (study.json + Optuna journal) with
    `trials` (default STUDY_TRIALS): each a dict of `state` (complete / pruned / failed / running),
    `params`, per-seed `values` and `costs` (complete trials), `device_hours`, `pruned_at`, and
    `test` ({"seeds", "values"}: a re-run on test seeds). The constraint is cost mean - `limit`
    (none when `limit` is None). With `cells`, a done run dir per seed of every complete trial
    (report/synthetic.write_cell). Returns the study's directory."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    trials = STUDY_TRIALS if trials is None else trials
    store = Store(root)
    d = store.root / "studies" / name
    d.mkdir(parents=True, exist_ok=True)
    constraint = {"metric": metrics[1], "limit": limit} if limit is not None else None
    meta = {"format": 1, "name": name, "identity": hashlib.sha256(name.encode()).hexdigest()[:12],
            "keys": {"space": {}, "sampler": {"name": "tpe", "seed": 0}, "objective": {"metrics": [metrics[0]]},
                     "constraint": constraint, "fixed": {}, "app": None, "seeds": list(seeds), "aggregate": "mean"},
            "n_trials": n_trials or len(trials), "directions": ["maximize"], "objective": [metrics[0]],
            "constraint": constraint, "seeds": list(seeds), "aggregate": "mean", "pruner": {"name": "asha"},
            "prune": {"metric": "episode_return", "warmup_steps": 0, "cost_warmup_steps": 8192},
            "test": {"seeds": [100, 101], "top_k": 1}, "created_at": 1_700_000_000.0, "created_by": "synthetic"}
    (d / "study.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(d / "journal.log")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for spec in trials:
        _tell_trial(study, spec, list(seeds), limit, metrics)
    if cells:
        _study_run_dirs(store, trials, list(seeds))
    return d


def _study_run_dirs(store: Store, trials: list[dict], seeds: list[int]) -> None:
    """A done run dir per tuning seed of every complete trial, its ID return the seed's value."""
    for spec in trials:
        if spec["state"] != "complete":
            continue
        for c, v, cost in zip(_study_cells("v2_baseline", spec["params"], seeds), spec["values"], spec["costs"]):
            write_cell(store, c["label"], c["seed"], id_returns=[v, v], id_costs=[cost, cost],
                       ood_returns=[v - 1, v - 1], ood_costs=[cost + 1, cost + 1], hash8=c["hash"],
                       attempt_hours=0.05)
