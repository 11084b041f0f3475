"""Whole-sweep efficiency: where a real local sweep's wall time goes, per cell and in total, against
the raw env stepping rate of the same cores measured in the same run (issue 15).

    .venv/bin/python bench/sweep_efficiency.py [--budgets short,demo] [--raw-seconds 10] [--json F]

The machine may be shared, so every ratio is taken within one run: the raw rate is measured
before, between and after the sweeps (interleaved), and each sweep is compared with the mean of
the raw measurements on either side of it. Every figure is printed with the load average.

1. Raw rate: `cores` processes at once, each stepping SafetyPointGoal1-v0 x2 (the training env:
   fast_reset, auto-reset, VectorEnv) with uniform random actions; env steps per second of wall
   time and per CPU-second, per process. No learning, no IO: the ceiling of a core.
2. Each sweep: `python -m safedreamer_sweep -m config=<4 configs> seed=0,1` (the demo matrix, 8
   cells) on the local launcher with max_parallel = cores and the launcher's default poll; a fresh
   store (its JAX compilation cache starts empty). Budgets: `short` = 2,048 training steps and one
   ID + one OOD episode a cell; `demo` = conf/sweep.yaml's demo budget (total_steps, eval.episodes).
3. The split of each cell's wall time (submitted -> attempt ended), from state.json: the attempt's
   timestamps and the `timeline` tasks/run.py records (process start = submitted -> run_cell
   entered, imports, JAX compiles, env construction, training, evaluation, checkpoints, other), and
   of the sweep's: launch (Hydra start-up + planning, to the first submission), slot refill gaps
   (a cell ended -> the next cell submitted on its slot), the tail (last cell ended -> launcher
   exit: supervisor notices, report, hooks) and the report rebuilt alone on the same store.
4. Figures against the goals of issue 15:
   - efficiency = env steps done (training + evaluation) / (wall x cores x raw rate per core):
     >= 0.6 on 2,048-step cells, >= 0.8 on the demo budget;
   - per-cell fixed cost = submitted -> first training env step, plus evaluation time beyond its
     env steps at the raw rate: <= 3 s;
   - CPU-time efficiency of training alone = (trained steps / CPU-s of training proper) / raw env
     steps per CPU-s: >= 0.9 (training proper = the training call minus compiles, env
     construction, periodic evaluation and checkpoints; compile CPU taken as its wall time);
   - a freed slot refilled within 0.5 s; the end-of-sweep report in <= 2 s.
Prints MET / NOT MET against each goal; never asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = "v2_baseline,v2_u_only,v2_cert_only,v2_full"
GOALS = {"fixed_cost_s": 3.0, "refill_s": 0.5, "report_s": 2.0, "eff_short": 0.6, "eff_demo": 0.8, "train_cpu_eff": 0.9}


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- raw rate


def _raw_worker(num_envs: int, seconds: float, seed: int, q: Any) -> None:
    import numpy as np

    from safedreamer_sweep.trainer.envs import make_vector_env

    venv = make_vector_env("SafetyPointGoal1-v0", num_envs, fast_reset=True)
    venv.reset([seed * 100 + i for i in range(num_envs)])
    rng = np.random.default_rng(seed)
    shape = (num_envs, *(venv.single_action_space.shape or ()))
    steps, w0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        venv.step(rng.uniform(-1, 1, size=shape).astype(np.float32))
        steps += num_envs
    q.put((steps, time.perf_counter() - w0, time.process_time() - c0))
    venv.close()


def ood_cost_ratio(seconds: float = 3.0) -> float:
    """CPU per step of the OOD eval env (SafetyPointGoal2-v0) over the raw env's (SafetyPointGoal1-v0),
    both stepped x2 with random actions in this process."""
    import numpy as np

    from safedreamer_sweep.trainer.envs import make_vector_env

    per_step = []
    for env_id in ("SafetyPointGoal1-v0", "SafetyPointGoal2-v0"):
        venv = make_vector_env(env_id, 2, fast_reset=True)
        venv.reset([0, 1])
        rng, steps, w0, c0 = np.random.default_rng(0), 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - w0 < seconds:
            venv.step(rng.uniform(-1, 1, size=(2, 2)).astype(np.float32))
            steps += 2
        per_step.append((time.process_time() - c0) / steps)
        venv.close()
    return per_step[1] / per_step[0]


def raw_rate(cores: int, num_envs: int, seconds: float) -> dict[str, float]:
    """Env steps per second of wall (per core: the mean over `cores` processes run at once) and per
    CPU-second."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_raw_worker, args=(num_envs, seconds, i, q)) for i in range(cores)]
    for p in ps:
        p.start()
    out = [q.get() for _ in ps]
    for p in ps:
        p.join()
    steps = sum(o[0] for o in out)
    return {"per_core": statistics.mean(o[0] / o[1] for o in out), "per_cpu_s": steps / sum(o[2] for o in out),
            "load": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- one sweep


def run_sweep(work: Path, name: str, cores: int, overrides: list[str], axes: list[str] | None = None,
              expected: int = 8) -> dict[str, Any]:
    """One sweep (default: the demo matrix, 8 cells) on a fresh store; `axes` replaces its axes."""
    store = work / f"store_{name}"
    env = dict(os.environ)
    # A fresh cache for this sweep, where tasks/run.py keeps it (in the store): the first cell of each
    # shape compiles, the others may load. Older code read the same variable.
    env["JAX_COMPILATION_CACHE_DIR"] = str(store / "cache" / "jax")
    argv = [sys.executable, "-m", "safedreamer_sweep", "-m", *(axes or [f"config={CONFIGS}", "seed=0,1"]),
            f"store.root={store}",
            "hydra/launcher=sds_local", f"hydra.launcher.max_parallel={cores}",
            f"hydra.sweep.dir={work / ('multirun_' + name)}", *overrides]
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    lines: list[tuple[float, str]] = []  # the launcher's output, time-stamped as it arrives
    with open(work / f"launcher_{name}.err", "w+") as err:
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert p.stdout is not None
        for line in p.stdout:
            lines.append((time.time(), line.rstrip()))
        p.wait()
        t_exit = time.time()
        err.seek(0)
        stderr = err.read()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout = "\n".join(text for _, text in lines)
    if p.returncode != 0:
        print(stdout[-3000:], stderr[-3000:], file=sys.stderr)
    out = read_sweep(store, name, t0, t_exit, exit_code=p.returncode, load=(load_before + os.getloadavg()[0]) / 2)
    out["expected"] = expected
    out["stdout_tail"] = stdout[-1500:]
    said = [t for t, text in lines if "[sds] decision:" in text or "[sds] report:" in text]
    out["summary_said_at"] = said[0] if said else None
    out["cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)  # every reaped descendant
    return out


def read_sweep(store: Path, name: str, t0: float, t_exit: float, *, exit_code: int, load: float) -> dict[str, Any]:
    """A finished sweep's cells (their done attempts, timelines included) and its report timed alone."""
    from safedreamer_sweep.core.store import Store

    report_alone, report_summary, report_cpu, report_summary_cpu = report_in_fresh_process(
        store, store.parent / f"report_{name}")
    cells = []
    for rd in Store(store).iter_runs():
        state = rd.read_state()
        att = [a for a in state.get("attempts", []) if a.get("outcome") == "done"]
        if not att:
            continue
        cells.append({"config": rd.path.parts[-3], "seed": rd.path.parts[-2], "trained": int(state.get("trained_steps") or 0),
                      **att[-1]})
    return {"name": name, "t0": t0, "t_exit": t_exit, "wall": t_exit - t0, "exit": exit_code, "cells": cells,
            "expected": 8, "report_alone_s": report_alone, "report_summary_s": report_summary, "load": load,
            "report_cpu_s": report_cpu, "report_summary_cpu_s": report_summary_cpu}


_REPORT = """
import sys, time
t0 = float(sys.argv[1])
from safedreamer_sweep.report import build_report
marks = {}
def on_summary(*_):
    marks.update(summary=time.time() - t0, cpu=time.process_time())
try:  # the summary first, the figures after (when build_report can)
    build_report(sys.argv[2], out=sys.argv[3], on_summary=on_summary)
except TypeError:
    build_report(sys.argv[2], out=sys.argv[3])
print(marks.get("summary", time.time() - t0), marks.get("cpu", time.process_time()))
"""


def report_in_fresh_process(store: Path, out: Path) -> tuple[float, float, float, float]:
    """Seconds to build the report in a new process (imports included) and to its summary, wall and
    CPU: (wall, wall to summary, CPU, CPU to summary)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", _REPORT, str(t0), str(store), str(out)], cwd=ROOT, check=True,
                       capture_output=True, text=True)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary, summary_cpu = (float(x) for x in p.stdout.strip().splitlines()[-1].split())
    return wall, summary, (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), summary_cpu


def split_cell(c: dict[str, Any], raw_core: float, ood_cost: float = 1.0) -> dict[str, Any]:
    """The wall time of one cell (submitted -> attempt ended) by part, and its env steps."""
    tl = c.get("timeline") or {}
    tr, im = tl.get("train", {}), tl.get("imports", {})
    kinds = [tl[k] for k in ("eval_id", "eval_ood") if k in tl] or [tl.get("final_eval", {})]
    fe = {k: sum(d.get(k, 0.0) for d in kinds) for k in ("wall_s", "cpu_s", "compile_s", "env_construct_s",
                                                          "env_construct_cpu_s", "eval_env_steps")}
    # OOD steps in raw-env (SafetyPointGoal1) step equivalents: the OOD env costs `ood_cost` x as much a step.
    ood_steps = tl["eval_ood"].get("eval_env_steps", 0.0) if "eval_ood" in tl else fe["eval_env_steps"] / 2
    sub, end = float(c["submitted_at"]), float(c["ended_at"])
    parts = {
        "process start": float(tl["task_entered"]) - sub,
        "imports": im.get("wall_s", 0.0),
        "compile": tr.get("compile_s", 0.0) + fe.get("compile_s", 0.0),
        "env construction": tr.get("env_construct_s", 0.0) + fe.get("env_construct_s", 0.0),
        "training": tr.get("wall_s", 0.0) - tr.get("compile_s", 0.0) - tr.get("env_construct_s", 0.0)
        - tr.get("eval_env_s", 0.0) - tr.get("checkpoint_s", 0.0),
        "evaluation": tr.get("eval_env_s", 0.0) + fe.get("wall_s", 0.0) - fe.get("env_construct_s", 0.0)
        - fe.get("compile_s", 0.0),
        "checkpoints": tr.get("checkpoint_s", 0.0),
    }
    wall = end - sub
    parts["other"] = wall - sum(parts.values())
    eval_steps = int(tr.get("eval_env_steps", 0) + fe.get("eval_env_steps", 0))
    first = tl.get("first_env_step")
    start_to_first = (float(first) - sub) if first else float("nan")
    eval_equiv = eval_steps + (ood_cost - 1.0) * ood_steps
    eval_overhead = parts["evaluation"] - eval_equiv / raw_core
    # JAX reports compile durations in wall time only: its CPU is taken at the training call's own
    # CPU/wall ratio (the share of a core the process got while training).
    share = min(1.0, tr.get("cpu_s", 0.0) / tr["wall_s"]) if tr.get("wall_s") else 1.0
    compile_cpu = share * tr.get("compile_s", 0.0)
    cpu = {
        "process start": float(tl.get("process_start_cpu_s", 0.0)),
        "imports": im.get("cpu_s", 0.0),
        "compile": compile_cpu,
        "env construction": tr.get("env_construct_cpu_s", 0.0) + fe.get("env_construct_cpu_s", 0.0),
        "training": tr.get("cpu_s", 0.0) - compile_cpu - tr.get("env_construct_cpu_s", 0.0)
        - tr.get("eval_env_cpu_s", 0.0) - tr.get("checkpoint_cpu_s", 0.0),
        "evaluation": tr.get("eval_env_cpu_s", 0.0) + fe.get("cpu_s", 0.0) - fe.get("env_construct_cpu_s", 0.0),
        "checkpoints": tr.get("checkpoint_cpu_s", 0.0),
    }
    cpu["other"] = float(tl.get("process_cpu_s", 0.0)) - sum(cpu.values())
    raw_cpu = c.get("_raw_cpu", 0.0)
    # The fixed cost in CPU-s: everything before the first env step (compiles come after it) and
    # evaluation beyond its env steps at the raw per-CPU-s rate.
    fixed_cpu = (cpu["process start"] + cpu["imports"] + cpu["env construction"] + cpu["checkpoints"] + cpu["other"]
                 + (cpu["evaluation"] - eval_equiv / raw_cpu if raw_cpu else 0.0))
    return {**parts, "wall": wall, "train_steps": c["trained"], "eval_steps": eval_steps,
            "start_to_first_step": start_to_first, "eval_overhead": eval_overhead,
            "fixed_cost": start_to_first + eval_overhead,
            "overhead_all": wall - (c["trained"] + eval_equiv) / raw_core, "eval_equiv": eval_equiv,
            "train_cpu_s": cpu["training"], "train_proper_s": parts["training"], "cpu": cpu,
            "cpu_total": float(tl.get("process_cpu_s", 0.0)), "fixed_cpu": fixed_cpu, "compile_cpu": compile_cpu,
            "compiles": tr.get("compiles", 0), "cache_hits": tr.get("cache_hits", 0),
            "cache_misses": tr.get("cache_misses", 0)}


def slot_gaps(sweep: dict[str, Any], cores: int) -> tuple[float, list[float]]:
    """(launch: sweep start -> first submission, refill gaps: a slot's cell ended -> its next cell
    submitted). Slots are assigned greedily in submission order, as the launcher fills them."""
    cells = sorted(sweep["cells"], key=lambda c: c["submitted_at"])
    free = [sweep["t0"]] * cores
    gaps = []
    for i, c in enumerate(cells):
        free.sort()
        slot_free = free.pop(0)
        if i >= cores:
            gaps.append(float(c["submitted_at"]) - slot_free)
        free.append(float(c["ended_at"]))
    launch = float(cells[0]["submitted_at"]) - sweep["t0"] if cells else float("nan")
    return launch, gaps


PARTS = ["process start", "imports", "compile", "env construction", "training", "evaluation", "checkpoints", "other"]


def report_sweep(sweep: dict[str, Any], raw: dict[str, float], cores: int) -> dict[str, Any]:
    raw_core, raw_cpu = raw["per_core"], raw["per_cpu_s"]
    ood_cost = raw.get("ood_cost", 1.0)
    rows = [(c, split_cell({**c, "_raw_cpu": raw_cpu}, raw_core, ood_cost))
            for c in sorted(sweep["cells"], key=lambda c: c["submitted_at"])]
    launch, gaps = slot_gaps(sweep, cores)
    last_end = max((float(c["ended_at"]) for c, _ in rows), default=sweep["t0"])
    tail = sweep["t_exit"] - last_end
    said = sweep.get("summary_said_at")
    summary_after = (said - last_end) if said else float("nan")
    steps = sum(s["train_steps"] + s["eval_steps"] for _, s in rows)
    eff = steps / (sweep["wall"] * cores * raw_core)
    train_steps = sum(s["train_steps"] for _, s in rows)
    train_cpu = sum(s["train_cpu_s"] for _, s in rows)
    cpu_eff = (train_steps / train_cpu) / raw_cpu if train_cpu > 0 else float("nan")
    wall_eff = (train_steps / sum(s["train_proper_s"] for _, s in rows)) / raw_core if rows else float("nan")

    print(f"\n== sweep `{sweep['name']}`: {len(rows)}/{sweep['expected']} cells done (exit {sweep['exit']}), "
          f"{sweep['wall']:.1f} s wall, {load()} (mean 1-min load during the sweep {sweep['load']:.2f})")
    print(f"   raw rate for it (mean of the measurements on either side): {raw_core:,.0f} env steps/s per core, "
          f"{raw_cpu:,.0f} per CPU-s")
    head = "   cell               " + "".join(f"{p[:11]:>12}" for p in PARTS) + f"{'cell wall':>11}{'steps':>9}" \
        f"{'fixed':>8}{'compiles':>10}"
    print(head)
    for c, s in rows:
        label = f"{c['config'][3:]}/{c['seed'][5:]}"
        print(f"   {label:<19}" + "".join(f"{s[p]:>12.2f}" for p in PARTS) + f"{s['wall']:>11.2f}"
              f"{s['train_steps'] + s['eval_steps']:>9,}{s['fixed_cost']:>8.2f}"
              f"{s['compiles']:>5.0f} ({s['cache_hits']:.0f} hit)")
    n = max(len(rows), 1)
    print("   mean per cell      " + "".join(f"{sum(s[p] for _, s in rows) / n:>12.2f}" for p in PARTS)
          + f"{sum(s['wall'] for _, s in rows) / n:>11.2f}")
    print("   CPU-seconds of each cell's own process by part (what an idle core would take; the launcher's "
          "submitit controller and exit watcher are not in it)")
    print("   cell               " + "".join(f"{p[:11]:>12}" for p in PARTS) + f"{'cell CPU':>11}{'CPU eff':>9}")
    for c, s in rows:
        label = f"{c['config'][3:]}/{c['seed'][5:]}"
        ce = (s["train_steps"] + s["eval_steps"]) / (s["cpu_total"] * raw_cpu) if s["cpu_total"] else float("nan")
        print(f"   {label:<19}" + "".join(f"{s['cpu'][p]:>12.2f}" for p in PARTS) + f"{s['cpu_total']:>11.2f}{ce:>9.2f}")
    print("   mean per cell      " + "".join(f"{sum(s['cpu'][p] for _, s in rows) / n:>12.2f}" for p in PARTS)
          + f"{sum(s['cpu_total'] for _, s in rows) / n:>11.2f}")
    total_cell = sum(s["wall"] for _, s in rows)
    print(f"   sweep level: launch (Hydra start-up + planning -> first submission) {launch:.2f} s; "
          f"slot refill gaps {', '.join(f'{g:.2f}' for g in gaps)} s (sum {sum(gaps):.1f}); tail (last cell "
          f"ended -> launcher exit: notice, report, exit) {tail:.2f} s, of which to the decision on screen "
          f"{summary_after:.2f} s; the report rebuilt alone (a fresh "
          f"process, imports included) {sweep['report_alone_s']:.2f} s ({sweep['report_cpu_s']:.2f} CPU-s), its summary "
          f"at {sweep['report_summary_s']:.2f} s ({sweep['report_summary_cpu_s']:.2f} CPU-s)")
    print(f"   cell-seconds {total_cell:.1f} of {sweep['wall'] * cores:.1f} slot-seconds ({cores} slots x wall); env steps "
          f"done {steps:,} (training {train_steps:,}, evaluation {steps - train_steps:,})")
    fixed = [s["fixed_cost"] for _, s in rows]
    out = {"name": sweep["name"], "wall_s": sweep["wall"], "cells_done": len(rows), "efficiency": eff,
           "train_cpu_efficiency": cpu_eff, "train_wall_efficiency": wall_eff, "launch_s": launch, "refill_gaps_s": gaps,
           "report_cpu_s": sweep["report_cpu_s"], "report_summary_cpu_s": sweep["report_summary_cpu_s"],
           "tail_s": tail, "summary_on_screen_s": summary_after, "report_alone_s": sweep["report_alone_s"],
           "report_summary_s": sweep["report_summary_s"],
           "fixed_cost_s": fixed,
           "start_to_first_step_s": [s["start_to_first_step"] for _, s in rows],
           "eval_overhead_s": [s["eval_overhead"] for _, s in rows],
           "fixed_cpu_s": [s["fixed_cpu"] for _, s in rows], "compile_cpu_s": [s["compile_cpu"] for _, s in rows],
           "overhead_all_s": [s["overhead_all"] for _, s in rows], "raw": raw, "load": sweep["load"],
           "mean_split_s": {p: sum(s[p] for _, s in rows) / n for p in PARTS},
           "steps": steps, "train_steps": train_steps}
    print(f"   efficiency = {steps:,} / ({sweep['wall']:.1f} s x {cores} x {raw_core:,.0f}) = {eff:.2f}")
    # The most this definition allows: cells doing nothing but their env steps (an OOD step at its CPU
    # cost), packed on the slots without a gap, between this run's own launch and tail.
    equiv = sum(s["train_steps"] + s["eval_equiv"] for _, s in rows)  # env steps, an OOD one at its cost
    ceiling_wall = launch + tail + equiv / raw_core / cores
    out["ceiling_efficiency"] = steps / (ceiling_wall * cores * raw_core)
    print(f"   its ceiling (no per-cell cost beyond env steps, an OOD step at its CPU cost, this launch {launch:.1f} s "
          f"and tail {tail:.1f} s): {steps:,} / ({ceiling_wall:.1f} s x {cores} x {raw_core:,.0f}) = "
          f"{out['ceiling_efficiency']:.2f}")
    if ood_cost != 1.0:
        out["efficiency_goal1_equiv"] = equiv / (sweep["wall"] * cores * raw_core)
        print(f"   counting an OOD step (SafetyPointGoal2: more hazards and vases) as the {ood_cost:.1f} raw steps its CPU "
              f"costs: {out['efficiency_goal1_equiv']:.2f}")
    cells_cpu = sum(s["cpu_total"] for _, s in rows)
    if sweep.get("cpu_s"):
        cpu_eff_all = steps / (sweep["cpu_s"] * raw_cpu)
        out.update(sweep_cpu_s=sweep["cpu_s"], cpu_efficiency=cpu_eff_all)
        print(f"   by CPU time: the sweep used {sweep['cpu_s']:.1f} CPU-s (launcher, submitit controllers, exit watchers "
              f"and cells; the cells' own processes {cells_cpu:.1f}); env steps / (CPU-s x raw per CPU-s) = {cpu_eff_all:.2f}")
    out["mean_cpu_split_s"] = {p: sum(s["cpu"][p] for _, s in rows) / n for p in PARTS}
    out["cell_cpu_efficiency"] = steps / (cells_cpu * raw_cpu) if cells_cpu else float("nan")
    print(f"   cells by CPU time: env steps / (the cells' CPU-s x raw per CPU-s) = {out['cell_cpu_efficiency']:.2f}")
    out["cells_cpu_s"] = cells_cpu
    out["cell_cpu_s"] = [s["cpu_total"] for _, s in rows]  # each cell's own process
    out["cell_env_cpu_s"] = [(s["train_steps"] + s["eval_equiv"]) / raw_cpu for _, s in rows]  # its env steps at the raw rate
    print(f"   training alone: {cpu_eff:.2f} of the raw rate per CPU-s, {wall_eff:.2f} per wall-s")
    print(f"   per-cell fixed cost (submitted -> first env step {statistics.median(out['start_to_first_step_s']):.2f} s "
          f"median, + evaluation beyond its env steps {statistics.median(out['eval_overhead_s']):.2f} s): median "
          f"{statistics.median(fixed):.2f} s, max {max(fixed):.2f} s; all overhead (cell wall - its env steps at the raw "
          f"rate) median {statistics.median(out['overhead_all_s']):.2f} s")
    if rows and rows[0][1]["train_steps"] != demo_budget()[0]:
        out["projected"] = pr = project(rows, *demo_budget(), launch, gaps, tail, cores, raw_core)
        print(f"   projected to conf/sweep.yaml's demo budget ({pr['train_steps']:,} training steps, {pr['eval_steps']:,} "
              f"evaluation steps a cell) from this split (fixed parts as measured, training and evaluation scaled by "
              f"their steps): cell wall {pr['cell_wall_s']:.1f} s, sweep wall {pr['wall_s']:.0f} s, efficiency "
              f"{pr['efficiency']:.2f} (OOD steps at their CPU cost: {pr['efficiency_goal1_equiv']:.2f}); by CPU time a cell "
              f"{pr['cell_cpu_s']:.0f} CPU-s, cell CPU efficiency {pr['cell_cpu_steps'] / (pr['cell_cpu_s'] * raw_cpu):.2f}")
        pr["cell_cpu_efficiency"] = pr["cell_cpu_steps"] / (pr["cell_cpu_s"] * raw_cpu)
    return out


def project(rows: list, train_to: int, episodes_to: int, launch: float, gaps: list[float], tail: float, cores: int,
            raw_core: float) -> dict[str, float]:
    """The sweep's efficiency at `train_to` training steps and `episodes_to` final episodes per kind a
    cell, from a split measured at another budget: the fixed parts (process start, imports,
    compiles, env construction, checkpoints, other) as measured, training proper scaled by training
    steps, evaluation by evaluation steps (1,000-step episodes: ID and OOD, plus one periodic episode
    per eval_every_steps = 16,384 and at the end), launch, refill gaps and tail as measured."""
    n = len(rows)
    mean = {k: sum(s[k] for _, s in rows) / n for k in (*PARTS, "train_steps", "eval_steps", "eval_equiv")}
    periodic = -(-train_to // 16384)
    eval_to = 1000 * (2 * episodes_to + periodic)
    scale = eval_to / mean["eval_steps"]  # the ID/OOD/periodic mix stays about the same
    cell = (sum(mean[p] for p in PARTS if p not in ("training", "evaluation"))
            + mean["training"] * train_to / mean["train_steps"] + mean["evaluation"] * scale)
    wall = launch + (n / cores) * cell + sum(gaps) / cores + tail
    cpu = {p: sum(s["cpu"][p] for _, s in rows) / n for p in PARTS}
    cell_cpu = (sum(cpu[p] for p in PARTS if p not in ("training", "evaluation"))
                + cpu["training"] * train_to / mean["train_steps"] + cpu["evaluation"] * scale)
    return {"cell_wall_s": cell, "wall_s": wall, "efficiency": n * (train_to + eval_to) / (wall * cores * raw_core),
            "cell_cpu_s": cell_cpu, "cell_cpu_steps": train_to + eval_to,
            "efficiency_goal1_equiv": n * (train_to + mean["eval_equiv"] * scale) / (wall * cores * raw_core),
            "train_steps": train_to, "eval_steps": eval_to}


def demo_budget() -> tuple[int, int]:
    """(training steps, final evaluation episodes per kind) of a cell at conf/'s demo budget."""
    from omegaconf import OmegaConf

    return (int(OmegaConf.load(ROOT / "conf" / "sweep.yaml").trainer.total_steps),
            int(OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml").episodes))


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="short,demo", help="comma list of short, demo")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="raw processes and max_parallel")
    ap.add_argument("--raw-seconds", type=float, default=10.0)
    ap.add_argument("--demo-steps", type=int, default=None, help="override the demo budget (default: conf/sweep.yaml)")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the stores (printed) for --analyze")
    ap.add_argument("--ood-cost", type=float, default=None, help="with --analyze: the OOD/raw step cost ratio "
                    "(default: measured now)")
    ap.add_argument("--analyze", nargs=5, metavar=("STORE", "T0", "T_EXIT", "RAW_PER_CORE", "RAW_PER_CPU_S"),
                    help="split a sweep that already ran into STORE (launched at epoch T0, launcher exit at T_EXIT) "
                         "against a raw rate measured beside it, instead of running one")
    args = ap.parse_args()
    if args.analyze:
        store, t0, t_exit, per_core, per_cpu = args.analyze
        sw = read_sweep(Path(store), Path(store).name.removeprefix("store_"), float(t0), float(t_exit), exit_code=0,
                        load=os.getloadavg()[0])
        oc = args.ood_cost if args.ood_cost is not None else ood_cost_ratio()
        raw_given = {"per_core": float(per_core), "per_cpu_s": float(per_cpu), "load": 0.0, "ood_cost": oc}
        res = [report_sweep(sw, raw_given, args.cores)]
        print_goals(res)
        if args.json:
            Path(args.json).write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": args.cores,
                                                   "results": res}, indent=2) + "\n")
        return

    budgets = {"short": ["trainer.total_steps=2048", "eval.episodes=1"],
               "demo": [f"trainer.total_steps={args.demo_steps}"] if args.demo_steps else []}
    names = [b for b in args.budgets.split(",") if b]
    print(f"{time.strftime('%H:%M:%S')} sweep efficiency on {args.cores} cores, {load()}")
    work = Path(tempfile.mkdtemp(prefix="sds_efficiency_"))
    results: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    try:
        ood_cost = ood_cost_ratio()
        print(f"a SafetyPointGoal2-v0 (OOD) step costs {ood_cost:.2f} x the CPU of a SafetyPointGoal1-v0 step ({load()})")
        raws = [raw_rate(args.cores, 2, args.raw_seconds)]
        print(f"raw: {raws[-1]['per_core']:,.0f} env steps/s per core, {raws[-1]['per_cpu_s']:,.0f} per CPU-s ({load()})")
        for name in names:
            sweeps.append(run_sweep(work, name, args.cores, budgets[name]))
            print(f"{time.strftime('%H:%M:%S')} sweep `{name}` took {sweeps[-1]['wall']:.1f} s ({load()})")
            raws.append(raw_rate(args.cores, 2, args.raw_seconds))
            print(f"raw: {raws[-1]['per_core']:,.0f} env steps/s per core, {raws[-1]['per_cpu_s']:,.0f} per CPU-s ({load()})")
            raw = {k: (raws[-2][k] + raws[-1][k]) / 2 for k in ("per_core", "per_cpu_s", "load")}
            raw["ood_cost"] = ood_cost
            results.append(report_sweep(sweeps[-1], raw, args.cores))
    finally:
        if args.keep:
            print(f"stores kept in {work} (t0/t_exit: {[(sw['name'], sw['t0'], sw['t_exit']) for sw in sweeps]})")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_goals(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": args.cores,
                                               "results": results}, indent=2) + "\n")


def print_goals(results: list[dict[str, Any]]) -> None:
    print(f"\n== goals of issue 15 ({load()})")
    for r in results:
        goal = GOALS["eff_short"] if r["name"] == "short" else GOALS["eff_demo"]
        print(f"   [{r['name']}] whole-sweep efficiency {r['efficiency']:.2f} (goal >= {goal}): {verdict(r['efficiency'] >= goal)}")
        if "projected" in r:
            e = r["projected"]["efficiency"]
            print(f"   [demo, projected from `{r['name']}`] efficiency at the demo budget ({r['projected']['train_steps']:,} "
                  f"steps a cell): {e:.2f} (goal >= {GOALS['eff_demo']}): {verdict(e >= GOALS['eff_demo'])}")
        print(f"   [{r['name']}] per-cell fixed cost max {max(r['fixed_cost_s']):.2f} s, median "
              f"{statistics.median(r['fixed_cost_s']):.2f} s (goal <= {GOALS['fixed_cost_s']} s): "
              f"{verdict(max(r['fixed_cost_s']) <= GOALS['fixed_cost_s'])}; by CPU time median "
              f"{statistics.median(r['fixed_cpu_s']):.2f} CPU-s, max {max(r['fixed_cpu_s']):.2f}, plus compiles median "
              f"{statistics.median(r['compile_cpu_s']):.2f} CPU-s (min {min(r['compile_cpu_s']):.2f}, max "
              f"{max(r['compile_cpu_s']):.2f})")
        gap = max(r["refill_gaps_s"], default=float("nan"))
        print(f"   [{r['name']}] slot refill max {gap:.2f} s (goal <= {GOALS['refill_s']} s): {verdict(gap <= GOALS['refill_s'])}")
        rep = r["report_summary_s"]
        print(f"   [{r['name']}] end-of-sweep report: summary written after {rep:.2f} s ({r['report_summary_cpu_s']:.2f} "
              f"CPU-s), figures included {r['report_alone_s']:.2f} s ({r['report_cpu_s']:.2f} CPU-s) (a fresh process, "
              f"imports included; goal <= {GOALS['report_s']} s to the "
              f"summary): {verdict(rep <= GOALS['report_s'])}; in the sweep: last cell ended -> decision on screen "
              f"{r.get('summary_on_screen_s', float('nan')):.2f} s, -> launcher exit {r['tail_s']:.2f} s")
        print(f"   [{r['name']}] training alone, CPU-time efficiency {r['train_cpu_efficiency']:.2f} (goal >= "
              f"{GOALS['train_cpu_eff']}): {verdict(r['train_cpu_efficiency'] >= GOALS['train_cpu_eff'])}")


if __name__ == "__main__":
    main()
