"""Short trials: the old path (a new interpreter per cell) against warm workers (a fork of a slot's
warm worker per cell), measured in one run, each figure printed against its goal (issue 21).

    .venv/bin/python bench/tiny_cells.py [--cores 2] [--raw-seconds 8] [--demo project|measure] [--json F]

For each path (hydra.launcher.warm_workers=false, then =true), on a fresh store each (its JAX
compilation cache starts empty), with max_parallel = cores:
1. a 4-cell tiny sweep, two at a time: the four configs x seed 0, 2,048 training steps and one ID
   and one OOD episode a cell (about 3 s of env work); its wall time from the command to the
   launcher's exit (goal <= 22 s);
2. the tiny cells of both sweeps (1. and 3.), each from its submission to the end of its attempt
   (goal <= 6 s) and that time minus its env steps at the raw rate (OOD steps at their measured CPU
   cost): its fixed cost (goal <= 3 s);
3. the demo matrix (4 configs x 2 seeds) at 2,048 steps a cell: whole-sweep efficiency = env
   steps / (wall x cores x raw rate per core) (goal >= 0.6; bench/sweep_efficiency.py's definition),
   and at conf/sweep.yaml's demo budget (goal >= 0.8): projected from 3.'s split (`project`, the
   default) or measured with one more sweep per path (`measure`, about 5 minutes each here).
The raw env rate is measured before, between and after the sweeps; each sweep is compared with the
mean of the measurements on either side of it. Ratios are measurement / goal (a time goal is met at
<= 1, an efficiency goal at >= 1). Prints MET / NOT MET; never asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import sweep_efficiency as se

GOALS = {"cell_s": 6.0, "fixed_s": 3.0, "four_s": 22.0, "eff_short": 0.6, "eff_demo": 0.8}
SHORT = ["trainer.total_steps=2048", "eval.episodes=1"]


def measure_path(work: Path, warm: bool, cores: int, raw_seconds: float, raws: list[dict], ood_cost: float,
                 demo: str) -> dict[str, Any]:
    """The sweeps of one path, each reported against the raw rate measured on either side of it."""
    tag = "warm" if warm else "old"
    flag = [f"hydra.launcher.warm_workers={str(warm).lower()}", "hydra.launcher.progress=none"]
    out: dict[str, Any] = {"path": tag, "cores": cores}

    def sweep(name: str, overrides: list[str], axes: list[str] | None, expected: int) -> dict[str, Any]:
        sw = se.run_sweep(work, f"{tag}_{name}", cores, [*overrides, *flag], axes=axes, expected=expected)
        print(f"{time.strftime('%H:%M:%S')} [{tag}] sweep `{name}`: {len(sw['cells'])}/{expected} cells done, "
              f"{sw['wall']:.1f} s ({se.load()})")
        raws.append(se.raw_rate(cores, 2, raw_seconds))
        raw = {k: (raws[-2][k] + raws[-1][k]) / 2 for k in ("per_core", "per_cpu_s", "load")}
        raw["ood_cost"] = ood_cost
        rep = se.report_sweep({**sw, "name": f"{tag}_{name}"}, raw, cores)
        rep["cell_wall_s"] = [c["ended_at"] - c["submitted_at"] for c in sw["cells"]]
        return rep

    out["four"] = sweep("four", SHORT, [f"config={se.CONFIGS}", "seed=0"], 4)
    out["short"] = sweep("short", SHORT, None, 8)
    if demo == "measure":
        out["demo"] = sweep("demo", [], None, 8)
    return out


def goal_rows(res: dict[str, Any]) -> list[tuple[str, float, float, str, bool]]:
    """(what, measured, goal, unit, met) for one path."""
    four, short = res["four"], res["short"]
    cells = four["cell_wall_s"] + short["cell_wall_s"]
    fixed = four["overhead_all_s"] + short["overhead_all_s"]
    rows = [("tiny cell, submitted -> attempt ended (median)", statistics.median(cells), GOALS["cell_s"], "s", False),
            ("tiny cell, beyond its env work (median)", statistics.median(fixed), GOALS["fixed_s"], "s", False),
            ("4-cell tiny sweep two at a time, command -> exit", four["wall_s"], GOALS["four_s"], "s", False),
            ("demo matrix at 2,048 steps a cell: efficiency", short["efficiency"], GOALS["eff_short"], "", True)]
    if "demo" in res:
        rows.append(("demo matrix at the demo budget: efficiency", res["demo"]["efficiency"], GOALS["eff_demo"], "", True))
    elif "projected" in short:
        rows.append(("demo budget, projected from the 2,048-step split: efficiency", short["projected"]["efficiency"],
                     GOALS["eff_demo"], "", True))
    return [(what, m, g, unit, m >= g if higher else m <= g) for what, m, g, unit, higher in rows]


def print_goals(results: list[dict[str, Any]]) -> None:
    print(f"\n== goals of issue 21, old path (a new interpreter per cell) vs warm workers ({se.load()})")
    by = {r["path"]: goal_rows(r) for r in results}
    paths = [r["path"] for r in results]
    print(f"   {'goal':<62}" + "".join(f"{p + ' path':>24}" for p in paths))
    for i, (what, _, goal, unit, _) in enumerate(by[paths[0]]):
        sign = ">=" if unit == "" else "<="
        cells = []
        for p in paths:
            _, m, g, u, met = by[p][i]
            cells.append(f"{m:.2f}{u} ({m / g:.2f}x) {'MET' if met else 'NOT MET'}")
        print(f"   {what + f' {sign} {goal:g}{unit}':<62}" + "".join(f"{c:>24}" for c in cells))
    print(f"   {'ceiling of the 2,048-step efficiency (env steps alone + launch + tail)':<62}"
          + "".join(f"{r['short']['ceiling_efficiency']:>24.2f}" for r in results))
    print("   the same by CPU time (what an idle core would take; the machine may be shared, so these are the "
          "figures to compare across runs)")
    for label, fn in (("tiny cell: its own process, median CPU-s", lambda r: statistics.median(
                           r["four"]["cell_cpu_s"] + r["short"]["cell_cpu_s"])),
                      ("tiny cell: all processes of the sweep per cell, CPU-s", lambda r: r["short"]["sweep_cpu_s"] / 8),
                      ("tiny cell beyond its env work: all processes per cell, CPU-s", lambda r: (
                           r["short"]["sweep_cpu_s"] - sum(r["short"]["cell_env_cpu_s"])) / 8),
                      ("4-cell tiny sweep: CPU-s of all its processes / cores", lambda r: r["four"]["sweep_cpu_s"] / r["cores"]),
                      ("demo matrix at 2,048 steps: efficiency by CPU time", lambda r: r["short"]["cpu_efficiency"])):
        print(f"   {label:<62}" + "".join(f"{fn(r):>24.2f}" for r in results))
    if len(paths) == 2:
        old, warm = results
        for name in ("four", "short"):
            o, w = old[name]["mean_split_s"], warm[name]["mean_split_s"]
            print(f"   [{name}] mean per cell, old -> warm: process start {o['process start']:.2f} -> "
                  f"{w['process start']:.2f} s, imports {o['imports']:.2f} -> {w['imports']:.2f} s, compile "
                  f"{o['compile']:.2f} -> {w['compile']:.2f} s, evaluation {o['evaluation']:.2f} -> {w['evaluation']:.2f} s;"
                  f" sweep CPU-s {old[name].get('sweep_cpu_s', float('nan')):.1f} -> {warm[name].get('sweep_cpu_s', float('nan')):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="raw processes and max_parallel")
    ap.add_argument("--raw-seconds", type=float, default=8.0)
    ap.add_argument("--demo", choices=("project", "measure"), default="project")
    ap.add_argument("--paths", default="old,warm", help="comma list of old, warm")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args()
    print(f"{time.strftime('%H:%M:%S')} tiny cells on {args.cores} cores, {se.load()}")
    work = Path(tempfile.mkdtemp(prefix="sds_tiny_"))
    results = []
    try:
        ood_cost = se.ood_cost_ratio()
        print(f"a SafetyPointGoal2-v0 (OOD) step costs {ood_cost:.2f} x the CPU of a SafetyPointGoal1-v0 step")
        raws = [se.raw_rate(args.cores, 2, args.raw_seconds)]
        print(f"raw: {raws[-1]['per_core']:,.0f} env steps/s per core ({se.load()})")
        for p in args.paths.split(","):
            results.append(measure_path(work, p == "warm", args.cores, args.raw_seconds, raws, ood_cost, args.demo))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_goals(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": args.cores,
                                               "results": results}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
