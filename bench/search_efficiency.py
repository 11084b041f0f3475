"""Search efficiency: hydra/sweeper=sds_optuna keeps its slots busy (no barrier between trials), and a
pruner pays for itself on a half-bad space (issue 30).

    .venv/bin/python bench/search_efficiency.py [--trials 8] [--barrier-sleeps 0.05,0.2] [--prune-trials 12] [--step-sleep 0.1] [--json F]

Every study runs the real command line (tests/search_app/app.py -m ... hydra/sweeper=sds_optuna on
hydra/launcher=sds_local, max_parallel=2, seeds [0,1]), into a fresh store in a temp dir. A *cell* is
one (point, seed) run of the toy app: `steps` steps, each one heartbeat, a checkpoint every 2 and a
sleep of `step_sleep` seconds. The toy's steps/s is therefore set by that sleep, not by any env: it is
no env rate. Figures are read from the store afterwards (each cell's state.json attempts).

1. No barrier. A study of `--trials` trials x 2 seeds over `steps=int(interval(5,40))`, so slow and
   fast cells mix. Slot busy fraction = sum over cells of attempt wall (ended_at - started_at) / (2 x
   the study's wall from the first attempt's start to the last attempt's end): goal >= 0.9. Beside it,
   what a batch-barrier scheduler would give for the same cells (batches of 2 trials = 4 cells, run
   two at a time, the batch waiting for its slowest cell; each cell's duration as measured).
2. Pruning pays. The same study twice (same sampler seed, `--prune-trials` trials, 2 seeds) on a space
   half of which diverges (`x=interval(0.05,0.95)`, `diverge_above=0.5`, constraint {metric: cost,
   limit: 15}): once without a pruner, once with `hydra.sweeper.pruner=asha` (SuccessiveHalving on the
   `ret` curve). Side by side: best feasible value (optimization_results.yaml), the seeds' noise
   (the toy's gauss sd 0.2 / sqrt(2)), device-hours (sum of attempt wall over all cells) and the
   ratio pruned / unpruned: goal <= 0.6, with the best within the noise of the unpruned one.
Prints MET / NOT MET against each goal; never asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = ROOT / "tests" / "search_app" / "app.py"
BASE = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.2", "hydra.launcher.progress=none",
        "hydra.launcher.max_parallel=2", "hydra/sweeper=sds_optuna", "hydra.sweeper.study_name=toy",
        "hydra.sweeper.objective=ret", "hydra.sweeper.direction=maximize",
        "hydra.sweeper.constraint={metric:cost,limit:15}", "hydra.sweeper.seeds=[0,1]"]
GOALS = {"busy": 0.9, "device_ratio": 0.6}
NOISE = 0.2 / math.sqrt(2)  # the toy's per-seed gauss sd over the mean of 2 seeds


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def ts(s: float | str) -> float:
    """An attempt's timestamp (epoch seconds; an ISO string in older stores)."""
    return float(s) if isinstance(s, (int, float)) else datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run_study(work: Path, name: str, args: list[str]) -> dict[str, Any]:
    store = work / name
    store.mkdir(parents=True)
    argv = [sys.executable, str(APP), "-m", f"hydra.sweep.dir={store}/multirun/${{now:%H-%M-%S-%f}}", *BASE, *args]
    env = {**os.environ, "SDS_STORE": str(store), "SDS_HEARTBEAT_EVERY_S": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.time()
    p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"study `{name}` failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    cells = []
    for state in sorted(store.glob("runs/**/state.json")):
        st = json.loads(state.read_text())
        atts = st.get("attempts") or []
        spans = [(ts(a.get("submitted_at", a["started_at"])), ts(a["started_at"]), ts(a["ended_at"])) for a in atts
                 if a.get("started_at") is not None and a.get("ended_at") is not None]
        cells.append({"dir": str(state.parent.relative_to(store)), "phase": st.get("phase"), "attempts": len(atts),
                      "spans": spans, "wall": sum(b - a for _, a, b in spans),
                      "outcome": atts[-1].get("outcome") if atts else None})
    results = yaml.safe_load(next(store.glob("multirun/*/optimization_results.yaml")).read_text())
    summary = next((line.strip() for line in p.stdout.splitlines() if "trials (" in line), "")
    return {"name": name, "store": str(store), "launcher_wall": wall, "cells": cells, "results": results,
            "summary": summary, "trials": trial_rows(store)}


def trial_rows(store: Path) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = store / "studies" / "toy" / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    s = optuna.load_study(study_name="toy", storage=storage)
    rows = []
    for t in s.get_trials():
        # the env step at which SuccessiveHalving took the trial's rung-0 value (the reported step it equals)
        r0 = t.system_attrs.get("completed_rung_0")
        r0_step = next((k for k, v in sorted(t.intermediate_values.items()) if r0 is not None and v == r0), None)
        rows.append({"number": t.number, "params": t.params, "state": t.state.name, "value": t.value,
                     "pruned_at": t.user_attrs.get("sds_pruned_at"), "rung0": r0, "rung0_step": r0_step})
    return rows


def slots_of(spans: list[tuple[float, float, float]], slots: int) -> list[float]:
    """Refill gaps: for each cell (submitted, started, ended) in submission order after the first
    `slots`, its submission minus the end of the cell whose slot it took (the latest end before it)."""
    ends: list[float] = []
    gaps = []
    for sub, _, end in sorted(spans):
        if len(ends) < slots:
            ends.append(end)
            continue
        done = [e for e in ends if e <= sub + 1e-6]
        j = ends.index(max(done) if done else min(ends))
        gaps.append(max(0.0, sub - ends[j]))
        ends[j] = end
    return gaps


def no_barrier(study: dict[str, Any], slots: int = 2) -> dict[str, Any]:
    spans = [sp for c in study["cells"] for sp in c["spans"]]
    first, last = min(a for _, a, _ in spans), max(b for _, _, b in spans)
    busy = sum(b - a for _, a, b in spans)
    # submitted -> ended: the slot holds the cell (its process start included), over first submitted -> last end
    held = sum(b - s for s, _, b in spans) / (slots * (last - min(s for s, _, _ in spans)))
    wall = last - first
    gaps = slots_of(spans, slots)
    start_cost = [a - s for s, a, _ in spans]
    # Batch-barrier schedulers on the same cells, each cell costing its slot what it cost here (its
    # attempt wall + its submitted -> started + the median refill gap), batches of 2 trials in trial order,
    # each batch waiting for its slowest cell before the next 2 trials are asked:
    #   "job": a trial's seeds run one after the other in one job (hydra-optuna-sweeper, n_jobs=2): a batch
    #          lasts max over its 2 trials of (seed 0 + seed 1);
    #   "refill": the batch's 4 cells on the 2 slots, a freed slot taking the batch's next cell.
    gap = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    cost = {c["dir"]: sum(b - s for s, _, b in c["spans"]) + gap for c in study["cells"]}
    by_trial: dict[int, list[float]] = {}
    for d, n in cell_trials(Path(study["store"])).items():
        by_trial.setdefault(n, []).append(cost[d])
    order = sorted(by_trial)
    job_wall = refill_wall = 0.0
    for i in range(0, len(order), 2):
        batch = order[i:i + 2]
        job_wall += max(sum(by_trial[n]) for n in batch)
        free = [0.0] * slots
        for x in (x for n in batch for x in by_trial[n]):
            j = free.index(min(free))
            free[j] += x
        refill_wall += max(free)
    return {"busy": busy / (slots * wall), "held": held, "wall": wall, "busy_s": busy,
            "cells": len(spans), "durations": sorted(c["wall"] for c in study["cells"]),
            "refill_gaps": gaps, "start_cost": start_cost,
            "job_wall": job_wall, "job_busy": busy / (slots * job_wall),
            "refill_wall": refill_wall, "refill_busy": busy / (slots * refill_wall)}


def cell_trials(store: Path) -> dict[str, int]:
    """Each cell's run dir (relative to the store) -> its trial number, from the journal's sds_cells."""
    import optuna

    journal = store / "studies" / "toy" / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    out = {}
    for t in optuna.load_study(study_name="toy", storage=storage).get_trials():
        for c in t.user_attrs.get("sds_cells") or []:
            out[str(Path(c["run_dir"]))] = t.number
    return out


def device(study: dict[str, Any]) -> float:
    return sum(c["wall"] for c in study["cells"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="trials of the no-barrier study (x 2 seeds)")
    ap.add_argument("--prune-trials", type=int, default=12, help="trials of each pruning study (x 2 seeds)")
    ap.add_argument("--step-sleep", type=float, default=0.1, help="the toy's sleep per step in the pruning studies, s")
    ap.add_argument("--barrier-sleeps", default="0.05,0.2", help="the toy's sleep per step in the no-barrier "
                    "studies, s: one study each (0.05 is the toy's default)")
    ap.add_argument("--prune-steps", type=int, default=20, help="steps of a cell in the pruning studies")
    ap.add_argument("--sampler-seed", type=int, default=0)
    ap.add_argument("--parts", default="barrier,prune", help="comma list of barrier, prune")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the stores (printed)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} search efficiency on {os.cpu_count()} cores, {load()}")
    print("a cell = one (point, seed) run of tests/search_app/app.py: `steps` steps, each a heartbeat and a "
          "`step_sleep` s sleep; its raw rate (1 / step_sleep toy steps/s) is set by the sleep: not an env rate")
    work = Path(tempfile.mkdtemp(prefix="sds_search_eff_"))
    out: dict[str, Any] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": os.cpu_count(), "args": vars(args)}
    seed = f"hydra.sweeper.sampler.seed={args.sampler_seed}"
    try:
        if "barrier" in parts:
            out["barrier"] = {}
            for sleep in [float(x) for x in args.barrier_sleeps.split(",") if x]:
                s = run_study(work, f"barrier_{sleep}", [f"hydra.sweeper.n_trials={args.trials}", seed,
                                                         "x=interval(0.05,0.95)", "steps=int(interval(5,40))",
                                                         f"step_sleep={sleep}"])
                nb = no_barrier(s)
                out["barrier"][str(sleep)] = nb
                d, g, sc = nb["durations"], sorted(nb["refill_gaps"]), sorted(nb["start_cost"])
                med = lambda v: v[len(v) // 2] if v else float("nan")  # noqa: E731
                print(f"\n== 1. no barrier: {args.trials} trials x 2 seeds, steps=int(interval(5,40)), step_sleep={sleep} "
                      f"({1 / sleep:.0f} toy steps/s), 2 slots (launcher {s['launcher_wall']:.1f} s, {load()})")
                print(f"   {s['summary']}")
                print(f"   cells {nb['cells']}: attempt wall min {d[0]:.2f} s, median {med(d):.2f} s, max {d[-1]:.2f} s; "
                      f"per cell: submitted -> attempt started median {med(sc):.2f} s (max {sc[-1]:.2f}), "
                      f"a cell ended -> the next submitted on its slot median {med(g):.2f} s (max {max(g, default=0):.2f})")
                print(f"   {'scheduler':<58}{'study wall':>12}{'slot busy':>11}")
                print(f"   {'sds_optuna, measured':<58}{nb['wall']:>10.1f} s{nb['busy']:>11.3f}")
                print(f"   {'  same, slot held = submitted -> ended':<58}{'':>12}{nb['held']:>11.3f}")
                print(f"   {'batch barrier, 4 cells refilled within a batch (sim.)':<58}{nb['refill_wall']:>10.1f} s"
                      f"{nb['refill_busy']:>11.3f}")
                print(f"   {'batch barrier, a trial = 1 job running its seeds (sim.)':<58}{nb['job_wall']:>10.1f} s"
                      f"{nb['job_busy']:>11.3f}")
                print(f"   slot busy fraction {nb['busy']:.3f} (goal >= {GOALS['busy']}): {verdict(nb['busy'] >= GOALS['busy'])}")
        if "prune" in parts:
            common = [f"hydra.sweeper.n_trials={args.prune_trials}", seed, "x=interval(0.05,0.95)", "diverge_above=0.5",
                      f"steps={args.prune_steps}", f"step_sleep={args.step_sleep}", "hydra.sweeper.prune.metric=ret"]
            runs = {}
            for name, extra in (("unpruned", []), ("asha", ["hydra.sweeper.pruner=asha"])):
                runs[name] = run_study(work, name, common + extra)
                print(f"{time.strftime('%H:%M:%S')} study `{name}` took {runs[name]['launcher_wall']:.1f} s ({load()}): "
                      f"{runs[name]['summary']}")
            rows = {}
            for name, s in runs.items():
                dev = device(s)
                best = s["results"].get("best_value")
                rows[name] = {"best": best, "best_params": s["results"].get("best_params"), "device_s": dev,
                              "cells": len(s["cells"]), "pruned_cells": sum(c["phase"] == "pruned" for c in s["cells"]),
                              "trials": s["trials"], "wall": s["launcher_wall"]}
            u, a = rows["unpruned"], rows["asha"]
            ratio = a["device_s"] / u["device_s"]
            within = (a["best"] is not None and u["best"] is not None and abs(a["best"] - u["best"]) <= NOISE)
            out["prune"] = {**rows, "ratio": ratio, "noise": NOISE, "within_noise": within}
            print(f"\n== 2. pruning pays: {args.prune_trials} trials x 2 seeds, x=interval(0.05,0.95), diverge_above=0.5, "
                  f"{args.prune_steps} steps a cell ({load()})")
            print(f"   {'':<34}{'no pruner':>14}{'asha':>14}")
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"   {'best feasible value':<34}{fmt(u['best']):>14}{fmt(a['best']):>14}")
            bx = lambda r: "-" if not r["best_params"] else f"{r['best_params'].get('x', float('nan')):.3f}"  # noqa: E731
            print(f"   {'  at x':<34}{bx(u):>14}{bx(a):>14}")
            print(f"   {'seeds noise (0.2/sqrt 2)':<34}{NOISE:>14.3f}{NOISE:>14.3f}")
            print(f"   {'device-seconds (sum attempt wall)':<34}{u['device_s']:>14.1f}{a['device_s']:>14.1f}")
            print(f"   {'device-hours':<34}{u['device_s'] / 3600:>14.4f}{a['device_s'] / 3600:>14.4f}")
            print(f"   {'cells (pruned)':<34}{u['cells']:>9} ({u['pruned_cells']:>2}){a['cells']:>9} ({a['pruned_cells']:>2})")
            print(f"   {'launcher wall':<34}{u['wall']:>12.1f} s{a['wall']:>12.1f} s")
            for name in ("unpruned", "asha"):
                tr = " ".join(f"{t['params'].get('x', 0):.2f}{'P' if t['state'] == 'PRUNED' else ''}"
                              for t in rows[name]["trials"])
                print(f"   [{name}] trials' x (P: pruned): {tr}")
            r0 = [t for t in rows["asha"]["trials"] if t["rung0"] is not None]
            if r0:
                print("   [asha] rung 0 value (ret, mean of 2 seeds) @ the env step it was taken at: " + " ".join(
                    f"{t['number']}:{t['rung0']:.2f}@{t['rung0_step']}" for t in r0))
            print(f"   device-hours ratio asha / unpruned {ratio:.2f} (goal <= {GOALS['device_ratio']}): "
                  f"{verdict(ratio <= GOALS['device_ratio'])}")
            print(f"   best within the seeds' noise ({NOISE:.3f}) of the unpruned best: "
                  f"{verdict(within)} (difference {fmt(None if a['best'] is None or u['best'] is None else a['best'] - u['best'])})")
    finally:
        if args.keep:
            print(f"stores kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
