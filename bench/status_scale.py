"""How long `safedreamer-sweep status` takes on a big store (prints figures, asserts nothing).

Builds a store of N cells through the store API (spec, state with attempts, heartbeat, evals, a
sweep manifest that also lists cells never run), then times `status.collect` and `status.status_view`.
A human at 3 a.m. re-runs status every few seconds: it should stay well under a second.

    python bench/status_scale.py [n_configs] [n_seeds]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from safedreamer_sweep.commands import status
from safedreamer_sweep.core.store import Store


def build(root: Path, n_configs: int, n_seeds: int) -> int:
    store = Store(root)
    cells = []
    t = time.time()
    for c in range(n_configs):
        for s in range(n_seeds):
            config, h = f"cfg_{c:02d}", f"{c:04d}{s:04d}"
            cells.append({"config": config, "seed": s, "hash": h, "overrides": []})
            if s == n_seeds - 1:
                continue  # a hole per config
            rd = store.run_dir(config, s, h)
            rd.ensure_spec({"config": config, "seed": s, "hash": h, "run_config": {"trainer": {"total_steps": 120000}}})
            attempts = [{"n": 1, "outcome": "failed", "cause": "timeout", "started_at": t - 7200, "ended_at": t - 3600,
                         "resources": {"gpus": 1, "cpus": 8}, "host": "elsewhere", "pid": 1},
                        {"n": 2, "outcome": "done", "started_at": t - 3600, "ended_at": t - 60,
                         "resources": {"gpus": 1, "cpus": 8}, "host": "elsewhere", "pid": 2}]
            rd.update_state(lambda st, a=attempts: st.update(phase="done", trained=True, trained_steps=120000,
                                                             attempts=a))
            rd.heartbeat(120000, 120000, steps_per_s=300.0)
            summary = {"return_mean": 1.0, "return_std": 0.1, "cost_mean": 2.0, "cost_std": 0.2,
                       "length_mean": 1000, "violation_rate": 0.0, "episodes": 10}
            for kind in ("id", "ood"):
                rd.write_eval(kind, {"kind": kind, "summary": summary, "episodes": []})
    store.write_sweep_manifest("bench", {"created_at": t, "cells": cells, "launcher": {"backend": "local"}})
    return len(cells)


def main() -> None:
    n_configs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    n_seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as d:
        n = build(Path(d), n_configs, n_seeds)
        t0 = time.perf_counter()
        doc = status.collect(d)
        t1 = time.perf_counter()
        with open("/dev/null", "w") as sink:
            Console(width=200, file=sink).print(status.status_view(doc))
        t2 = time.perf_counter()
        print(f"cells: {n} ({doc['counts']})")
        print(f"verdict: {doc['verdict'][:120]}")
        print(f"status.collect: {(t1 - t0) * 1000:.0f} ms ({(t1 - t0) * 1000 / n:.1f} ms/cell)")
        print(f"status.status_view:  {(t2 - t1) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
