"""Planning + dedupe of a 10,000-cell sweep against a store holding 5,000 finished cells, beside
the time Hydra's own machinery takes just to compose the same 10,000 jobs. One run, this machine.

    nice .venv/bin/python bench/plan_scale.py [--cells 10000] [--done 5000] [--sample 500] [--full]

The sweep: config=v2_baseline,v2_u_only,v2_cert_only,v2_full x seed=0..N/4-1 (10,000 jobs, the
override lists Hydra's BasicSweeper hands a launcher). The store is built synthetically through the
RunDir API with only what the planner reads: spec.json (the identity the real composition yields),
state.json (done, one attempt `done`), eval/id.json and eval/ood.json, for 5,000 of the cells; the
other 5,000 have no run directory.

What is timed (all with the real code, nothing stubbed):
  A. Hydra composing the jobs: `config_loader.load_sweep_config(config, overrides)` per job, exactly
     what BasicSweeper.validate_batch_is_legal does before any launcher runs.
  B. The product's planner: `plan.plan_cells(...)` as the launcher calls it (it composes every job
     through the same Hydra call, then runs the confound check and a verdict per cell).
  C. The dedupe alone: `plan.verdict_for` of all 10,000 RunSpecs against the store (the store reads).
A and B are measured on a random sample of `--sample` jobs and extrapolated linearly to all jobs
unless --full is given (composing 10,000 jobs through Hydra takes minutes on 2 shared cores); the
output says which. C is always measured on every cell.
Goal (issue 7): plan + dedupe of 10,000 cells under 2 s. Printed as MET or VIOLATED, never hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ("v2_baseline", "v2_u_only", "v2_cert_only", "v2_full")
GOAL_S = 2.0


def hydra_loader_and_config(store: Path, sweep_overrides: list[str]):
    """Hydra's config loader and the multirun master config, as `python -m safedreamer_sweep -m ...`
    builds them before calling the sweeper (same search path, same RunMode)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    cfg = loader.load_configuration(config_name="sweep", overrides=[f"store.root={store}", *sweep_overrides],
                                    run_mode=RunMode.MULTIRUN)
    HydraConfig.instance().set_config(cfg)
    return loader, cfg


def job_overrides(n_cells: int) -> list[list[str]]:
    """What BasicSweeper produces for config=A,B,C,D seed=0..k-1: one override list per job."""
    seeds = n_cells // len(CONFIGS)
    return [[f"config={c}", f"seed={s}"] for c in CONFIGS for s in range(seeds)]


def base_specs(loader, cfg) -> dict[str, dict]:
    """The resolved run config of each config at seed 0, composed once through Hydra."""
    from safedreamer_sweep.sweep.compose import job_spec

    return {c: job_spec(loader, cfg, [f"config={c}", "seed=0"])[0].run_config for c in CONFIGS}


def spec_for(config: str, seed: int, base: dict[str, dict]):
    from safedreamer_sweep.core.identity import RunSpec, config_hash

    rc = dict(base[config])
    rc["seed"] = seed
    return RunSpec(config=config, seed=seed, hash=config_hash(rc), run_config=rc,
                   overrides=(f"config={config}", f"seed={seed}"))


def build_store(store_root: Path, jobs: list[list[str]], done: int, base: dict[str, dict]) -> float:
    """Write `done` finished cells through the RunDir API (spread over the configs). Returns seconds."""
    from safedreamer_sweep.core.files import atomic_write_json
    from safedreamer_sweep.core.store import Store

    store = Store(store_root)
    t0 = time.perf_counter()
    from safedreamer_sweep.core.code_fingerprint import code_fingerprint

    code = code_fingerprint({"task": {"kind": "builtin"}})
    rng = random.Random(0)
    chosen = rng.sample(range(len(jobs)), done)
    now = time.time()
    for i in chosen:
        config, seed = jobs[i][0].split("=")[1], int(jobs[i][1].split("=")[1])
        spec = spec_for(config, seed, base)
        rd = store.run_dir(config, seed, spec.hash)
        doc = {"config": config, "seed": seed, "hash": spec.hash, "run_config": spec.run_config,
               "overrides": list(spec.overrides), "code": code}  # done by this code: not a code change
        atomic_write_json(rd.spec_path, doc)
        atomic_write_json(rd.state_path, {"phase": "done", "trained": True, "trained_steps": 1024, "updated_at": now,
                                          "attempts": [{"n": 1, "outcome": "done", "started_at": now - 60,
                                                        "ended_at": now, "host": "bench", "pid": 1}]})
        summary = {"return_mean": 1.0, "cost_mean": 0.0, "episodes": 1}
        rd.write_eval("id", {"kind": "id", "summary": summary})
        rd.write_eval("ood", {"kind": "ood", "summary": summary})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--done", type=int, default=5_000)
    ap.add_argument("--sample", type=int, default=500, help="jobs composed through Hydra for A and B")
    ap.add_argument("--full", action="store_true", help="compose all jobs for A and B (minutes)")
    ap.add_argument("--full-planner", action="store_true",
                    help="B on all jobs (no extrapolation: the planner's fixed costs are not per job); A stays sampled")
    ap.add_argument("--store-dir", default=None,
                    help="where to build the synthetic store (default: a temp dir in /dev/shm if present)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from safedreamer_sweep.core.store import Store
    from safedreamer_sweep.sweep.errors import PlanError
    from safedreamer_sweep.sweep.plan import plan_cells
    from safedreamer_sweep.sweep.verdicts import verdict_for

    parent = args.store_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    tmp = Path(tempfile.mkdtemp(prefix="sds_plan_scale_", dir=parent))
    store_root = tmp / "store"
    try:
        jobs = job_overrides(args.cells)
        loader, cfg = hydra_loader_and_config(store_root, [f"config={','.join(CONFIGS)}",
                                                           f"seed=range(0,{args.cells // len(CONFIGS)})"])
        base = base_specs(loader, cfg)
        build_s = build_store(store_root, jobs, args.done, base)
        print(f"store: {args.done} finished cells written through RunDir in {build_s:.1f} s at {store_root}")
        print(f"sweep: {len(jobs)} jobs ({len(CONFIGS)} configs x {len(jobs) // len(CONFIGS)} seeds)")

        sample = jobs if args.full else random.Random(1).sample(jobs, min(args.sample, len(jobs)))
        scale = len(jobs) / len(sample)
        how = "measured on all jobs" if scale == 1 else f"measured on {len(sample)} random jobs, x{scale:.0f} extrapolated"

        for ov in jobs[:5]:  # warm-up: import and cache costs are not per-job costs
            loader.load_sweep_config(cfg, list(ov))
        # A. Hydra composing each job (BasicSweeper.validate_batch_is_legal does exactly this call).
        t0 = time.perf_counter()
        for ov in sample:
            loader.load_sweep_config(cfg, list(ov))
        hydra_s = (time.perf_counter() - t0) * scale

        # B. The planner as the launcher calls it (composition + confounds + verdicts).
        store = Store(store_root)
        plan_jobs = jobs if args.full_planner else sample
        plan_scale = len(jobs) / len(plan_jobs)
        plan_how = "measured on all jobs" if plan_scale == 1 else how
        t0 = time.perf_counter()
        try:
            cells = plan_cells(plan_jobs, config_loader=loader, config=cfg, store=store, sweep_id="bench",
                               log=lambda m: None)
            plan_err = None
        except PlanError as e:
            cells, plan_err = [], str(e)
        plan_sample_s = time.perf_counter() - t0
        plan_s = plan_sample_s * plan_scale
        verdicts: dict[str, int] = {}
        for c in cells:
            verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1

        # C. Dedupe alone: every one of the 10,000 specs against the store.
        specs = [spec_for(ov[0].split("=")[1], int(ov[1].split("=")[1]), base) for ov in jobs]
        t0 = time.perf_counter()
        dd: dict[str, int] = {}
        for s in specs:
            v, _, _ = verdict_for(store, s, sweep_id="bench")
            dd[v] = dd.get(v, 0) + 1
        dedupe_s = time.perf_counter() - t0

        # D. For the record (not the product's path): spec construction without re-composing per job,
        # i.e. one composition per config and the seed substituted, what a fast planner could do.
        t0 = time.perf_counter()
        fast_base = base_specs(loader, cfg)
        _ = [spec_for(ov[0].split("=")[1], int(ov[1].split("=")[1]), fast_base) for ov in jobs]
        fast_specs_s = time.perf_counter() - t0

        ok = plan_s < GOAL_S
        res = {
            "cells": len(jobs), "done_in_store": args.done, "sample": len(sample), "extrapolated": scale != 1,
            "hydra_compose_s": round(hydra_s, 2), "planner_s": round(plan_s, 2),
            "planner_measured_s": round(plan_sample_s, 3), "planner_extrapolated": plan_scale != 1,
            "planner_over_hydra": round(plan_s / hydra_s, 3),
            "dedupe_only_s": round(dedupe_s, 3), "dedupe_verdicts": dd, "sample_verdicts": verdicts,
            "fast_path_specs_s": round(fast_specs_s, 3), "goal_s": GOAL_S, "goal_met": ok, "plan_error": plan_err,
        }
        print()
        print(f"A. Hydra composing {len(jobs)} jobs (load_sweep_config each, as BasicSweeper does): "
              f"{hydra_s:8.1f} s   ({how})")
        print(f"B. planner plan_cells on {len(jobs)} jobs (compose + confounds + verdicts):       "
              f"{plan_s:8.1f} s   ({plan_how}; verdicts {verdicts})")
        print(f"   planner / Hydra compose = {plan_s / hydra_s:.2f}")
        print(f"C. dedupe alone: verdict_for of all {len(jobs)} cells against the store:           "
              f"{dedupe_s:8.2f} s   (measured on all; verdicts {dd})")
        print(f"D. (not the product's path) {len(jobs)} RunSpecs from one composition per config:  "
              f"{fast_specs_s:8.2f} s")
        if plan_err:
            print(f"   plan_cells raised: {plan_err[:300]}")
        print()
        print(f"GOAL plan + dedupe of {len(jobs)} cells < {GOAL_S:.0f} s: "
              + ("MET" if ok else f"VIOLATED ({plan_s:.1f} s, {plan_s / len(jobs) * 1000:.1f} ms a job"
                                  f"{'' if plan_scale == 1 else ', extrapolated'}; the dedupe itself takes {dedupe_s:.2f} s)"))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
