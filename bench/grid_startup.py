"""Grid start-up: the time from the command line to the printed plan of a large grid, the point at
which the launcher would submit its first cell, under hydra/sweeper=sds (the default) and, for the
same 1,000 cells in the same run, under Hydra's BasicSweeper. One run, this machine.

    nice .venv/bin/python bench/grid_startup.py [--cells 1000 10000] [--basic-cells 1000] [--no-basic]

Each measurement runs, in a fresh empty store (SDS_STORE), exactly
    python -m safedreamer_sweep -m config=v2_baseline,v2_u_only,v2_cert_only,v2_full \\
        'seed=range(0,N/4)' hydra.launcher.dry_run=true [hydra/sweeper=basic]
and reads its stdout as it comes: the clock starts before the process is spawned and stops when
the plan's first line (`plan: N cells, ...`) arrives, the line printed just before the launcher
would submit (hydra_plugins/sds_launcher/launcher.py). Also printed: the time to the process's end
(the dry run's whole plan listing, one line per cell) and how the sweeper validated the jobs (its
debug line: jobs composed through Hydra, jobs accepted from their shape).
Goals (issue 21): first submission within 5 s of the command for 1,000 cells, 30 s for 10,000.
Printed as MET or VIOLATED, never hidden.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = "v2_baseline,v2_u_only,v2_cert_only,v2_full"
GOALS_S = {1000: 5.0, 10000: 30.0}


def startup(cells: int, sweeper: str | None) -> dict:
    """Seconds to the plan's first line and to the process end of one dry run of `cells` cells."""
    assert cells % 4 == 0, "cells is 4 configs x N seeds"
    cmd = [sys.executable, "-m", "safedreamer_sweep", "-m", f"config={CONFIGS}", f"seed=range(0,{cells // 4})",
           "hydra.launcher.dry_run=true", "hydra.verbose=hydra_plugins.sds_sweeper"]
    if sweeper:
        cmd.append(f"hydra/sweeper={sweeper}")
    with tempfile.TemporaryDirectory(prefix="grid_startup_") as store:
        env = {**os.environ, "SDS_STORE": store}
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        to_plan, head, validated, tail = None, None, None, []
        assert proc.stdout is not None
        for line in proc.stdout:
            if to_plan is None and line.startswith("plan: "):
                to_plan, head = time.perf_counter() - tic, line.strip()
            elif "validated" in line and "accepted from their shape" in line:
                validated = line.split("] ", 1)[-1].strip()
            tail = ([*tail, line.rstrip()])[-5:]
        rc = proc.wait()
        to_end = time.perf_counter() - tic
    if rc != 0 or to_plan is None:
        raise SystemExit(f"the dry run of {cells} cells failed (exit {rc}):\n  " + " ".join(cmd) + "\n" + "\n".join(tail))
    m = re.match(r"plan: (\d+) cells", head or "")
    assert m and int(m.group(1)) == cells, head
    return {"to_plan": to_plan, "to_end": to_end, "validated": validated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--basic-cells", type=int, default=1000, help="cells timed under BasicSweeper (same run)")
    ap.add_argument("--no-basic", action="store_true", help="skip BasicSweeper (about 0.13 s a job)")
    args = ap.parse_args()

    print(f"grid start-up, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    sds = {}
    for n in args.cells:
        sds[n] = r = startup(n, None)
        goal = GOALS_S.get(n)
        verdict = f"goal {goal:.0f} s: {'MET' if r['to_plan'] <= goal else 'VIOLATED'} ({r['to_plan'] / goal:.2f} of it)" \
            if goal else "no goal"
        print(f"  sds sweeper   {n:>6} cells: plan printed {r['to_plan']:6.1f} s after the command, process done "
              f"{r['to_end']:6.1f} s | {verdict}")
        print(f"                {'':>6}        {r['validated'] or 'no validation line'}")
    if not args.no_basic:
        n = args.basic_cells
        b = startup(n, "basic")
        print(f"  BasicSweeper  {n:>6} cells: plan printed {b['to_plan']:6.1f} s after the command, process done "
              f"{b['to_end']:6.1f} s (composes every job)")
        if n in sds:
            print(f"  ratio at {n} cells: BasicSweeper / sds = {b['to_plan'] / sds[n]['to_plan']:.1f}x to the plan")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
