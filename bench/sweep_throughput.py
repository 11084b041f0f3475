"""End-to-end sweep throughput on this machine, against the raw env stepping capacity of the same
cores, both measured in the same run.

    nice .venv/bin/python bench/sweep_throughput.py [--cells 8] [--steps 8192] [--raw-seconds 20]

1. Raw capacity: N processes (N = cores, default 2), each stepping the training env
   (SafetyPointGoal1-v0, fast_reset, vector of `--num-envs` envs, auto-reset) with uniform random
   actions for `--raw-seconds`; summed env steps/s. No learning, no IO: the ceiling.
2. The sweep: `python -m safedreamer_sweep -m config=v2_baseline seed=0..7` on the local launcher
   (max_parallel = N), the real cell task: plan, claim, submit, train with checkpoints and
   heartbeats, evaluate ID and OOD, report. Throughput = training env steps of all cells / wall
   time from launch to the launcher's exit (JAX compiles, evaluation and the report included, so
   this is what a user gets), and also per second of training only (sum over cells of trained
   steps / the cell's training wall time, from metrics.jsonl's wall_time_s).
Prints both and the ratio. The machine is shared: other load lowers both figures alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _raw_worker(env_id: str, num_envs: int, seconds: float, seed: int, q) -> None:
    import numpy as np

    from safedreamer_sweep.trainer.envs import make_vector_env

    venv = make_vector_env(env_id, num_envs, fast_reset=True)
    venv.reset([seed * 100 + i for i in range(num_envs)])
    rng = np.random.default_rng(seed)
    shape = (num_envs, *venv.single_action_space.shape)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(rng.uniform(-1, 1, size=shape).astype(np.float32))
        steps += num_envs
    q.put(steps / (time.perf_counter() - t0))
    venv.close()


def raw_capacity(procs: int, env_id: str, num_envs: int, seconds: float) -> list[float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_raw_worker, args=(env_id, num_envs, seconds, i, q)) for i in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8192, help="env steps per cell")
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="cores: raw processes and max_parallel")
    ap.add_argument("--raw-seconds", type=float, default=20.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from safedreamer_sweep.core.store import Store

    rates = raw_capacity(args.procs, "SafetyPointGoal1-v0", args.num_envs, args.raw_seconds)
    raw = sum(rates)
    print(f"raw capacity: {args.procs} processes stepping SafetyPointGoal1-v0 x{args.num_envs} (fast_reset, random "
          f"actions) for {args.raw_seconds:.0f} s: {raw:,.0f} env steps/s ({', '.join(f'{r:,.0f}' for r in rates)})")

    work = Path(tempfile.mkdtemp(prefix="sds_throughput_"))
    try:
        store = work / "store"
        rollout = 1024
        argv = [sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline",
                "seed=" + ",".join(map(str, range(args.cells))), f"store.root={store}",
                f"trainer.total_steps={args.steps}", f"trainer.num_envs={args.num_envs}", f"trainer.rollout_steps={rollout}",
                "trainer.checkpoint_every_steps=4096", "trainer.log_every_steps=1024", f"trainer.eval_every_steps={args.steps}",
                "eval.episodes=1", "hydra/launcher=sds_local", f"hydra.launcher.max_parallel={args.procs}",
                "hydra.launcher.poll_s=1"]
        t0 = time.perf_counter()
        p = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs = list(Store(store).iter_runs())
        done = [rd for rd in runs if rd.read_state().get("phase") == "done"]
        trained = sum(int(rd.read_state().get("trained_steps") or 0) for rd in runs)
        train_s = 0.0
        for rd in runs:
            rows = rd.read_metrics()
            if rows:
                train_s += float(rows[-1].get("wall_time_s") or 0)
        e2e = trained / wall
        per_cell_train = trained / train_s if train_s else float("nan")
        print(f"sweep: {len(done)}/{args.cells} cells done (exit {p.returncode}), {trained:,} training env steps in "
              f"{wall:.1f} s wall (launch to exit: plan, JAX compiles, checkpoints, ID+OOD eval, report)")
        print(f"  end-to-end sweep throughput: {e2e:,.0f} env steps/s = {e2e / raw:.2f} x raw capacity")
        print(f"  while training (sum of steps / sum of cell training time, x{args.procs} cells at once): "
              f"{per_cell_train * args.procs:,.0f} env steps/s = {per_cell_train * args.procs / raw:.2f} x raw capacity")
        if p.returncode != 0:
            print(p.stdout[-2000:], p.stderr[-2000:])
        if args.json:
            Path(args.json).write_text(json.dumps({
                "raw_steps_per_s": raw, "raw_per_proc": rates, "cells": args.cells, "cells_done": len(done),
                "steps_per_cell": args.steps, "wall_s": wall, "trained_steps": trained, "e2e_steps_per_s": e2e,
                "e2e_over_raw": e2e / raw, "training_steps_per_s": per_cell_train * args.procs}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
