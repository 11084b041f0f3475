"""How right the foreground ETA is: replay a finished local sweep from its store and compare, every
5 seconds of the sweep, the ETA each rule would have printed with the time the sweep really had left.

    .venv/bin/python bench/eta_accuracy.py experiments      # e.g. after scripts/demo.sh

The rules (sweep/progress.py):
- `summed rate` (the rule before 2026-11-30): env steps left / the running cells' summed env steps/s
  over the last 10 s. A cell that is starting or compiling adds almost nothing, so this swings.
- `sweep throughput` (the rule now): env steps left / (env steps trained so far / wall time since
  the sweep began). Start-ups, compiles and evaluations are in the denominator, as they will be for
  the cells still to run.

A cell's env step at time t is read from its metrics.jsonl (`wall_time_s` after the training's own
start in the attempt's timeline), linearly between rows; the replay reads only the store. Errors
are |ETA - truth| / truth over the first 90% of the sweep (near the end both are a few seconds of a
few seconds). One attempt per cell is assumed (a retried cell is read from its last attempt).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safedreamer_sweep.core.store import Store


def cell_curves(root: Path) -> list[dict]:
    """Per finished cell: submitted/started/ended times, (time, env step) points and its budget."""
    out = []
    for rd in Store(root).iter_runs():
        state = rd.read_state()
        attempts = state.get("attempts") or []
        if not state.get("trained") or not attempts or "train" not in (attempts[-1].get("timeline") or {}):
            continue
        a = attempts[-1]
        t0 = a["timeline"]["train"]["started"]
        rows = [r for r in rd.read_metrics() if r.get("wall_time_s") is not None]
        out.append({"submitted": a["submitted_at"], "started": a["started_at"], "ended": a["ended_at"],
                    "t": np.array([t0, *(t0 + r["wall_time_s"] for r in rows)]),
                    "step": np.array([a.get("start_step") or 0, *(r["env_step"] for r in rows)], dtype=float),
                    "total": float(state["trained_steps"])})
    return out


def replay(cells: list[dict], every_s: float = 5.0) -> dict[str, list[float]]:
    begin, finish = min(c["submitted"] for c in cells), max(c["ended"] for c in cells)

    def step(c: dict, t: float) -> float:
        return 0.0 if t < c["t"][0] else float(np.interp(t, c["t"], c["step"]))

    errors: dict[str, list[float]] = {"summed rate": [], "sweep throughput": []}
    for t in np.arange(begin + every_s, finish - 0.1 * (finish - begin), every_s):
        left = trained = rate = 0.0
        for c in cells:
            if t >= c["ended"]:
                trained += c["total"]
                continue
            s = step(c, t)
            trained += s
            left += c["total"] - s
            if c["started"] <= t:
                rate += (s - step(c, t - 10.0)) / 10.0
        truth = finish - t
        if rate > 0:
            errors["summed rate"].append(abs(left / rate - truth) / truth)
        if trained > 0:
            errors["sweep throughput"].append(abs(left / (trained / (t - begin)) - truth) / truth)
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="the store root of a finished local sweep (e.g. experiments)")
    args = ap.parse_args()
    cells = cell_curves(args.store)
    if not cells:
        sys.exit(f"{args.store}: no finished cell with a training timeline; run a sweep first (bash scripts/demo.sh)")
    print(f"{len(cells)} cells; |ETA - time really left| / time really left, every 5 s of the first 90% of the sweep")
    print(f"{'rule':<18} {'ticks':>5} {'median':>7} {'90th pct':>9} {'max':>6}")
    for rule, errs in replay(cells).items():
        print(f"{rule:<18} {len(errs):>5} {statistics.median(errs):>7.2f} {np.percentile(errs, 90):>9.2f} {max(errs):>6.2f}")


if __name__ == "__main__":
    main()
