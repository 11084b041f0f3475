"""Benchmark: the report of 1,000 synthetic runs x 100 curve points (goal: under 10 s here).

    .venv/bin/python bench/report_scale.py [--runs 1000] [--points 100] [--configs 4]

The synthetic store is written through the store API into a temporary directory (deleted at the
end); only `build_report` is timed, split into reading the store, computing, and writing.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from safedreamer_sweep.core.files import atomic_write_bytes
from safedreamer_sweep.report.build import compute_report, render_artifacts
from safedreamer_sweep.report.synthetic import write_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--configs", type=int, default=4)
    args = ap.parse_args()
    names = ["v2_baseline", "v2_u_only", "v2_cert_only", "v2_full"][: args.configs]
    names += [f"variant_{i}" for i in range(args.configs - len(names))]
    seeds = list(range(args.runs // len(names)))
    rng = np.random.default_rng(0)

    def cell(i: int):
        def make(seed: int) -> dict:
            r = rng.normal(10 + 2 * i, 3, size=2)
            c = rng.normal(20, 5, size=2)
            return {"id_returns": list(r), "id_costs": list(c), "ood_returns": list(r - 4), "ood_costs": list(c + 3),
                        "risk_penalty": float(rng.random()), "curve_points": args.points}
        return make

    with tempfile.TemporaryDirectory(prefix="sds-report-bench-") as tmp:
        t0 = time.perf_counter()
        write_store(tmp, {n: cell(i) for i, n in enumerate(names)}, seeds)
        t1 = time.perf_counter()
        r = compute_report(tmp)
        t2 = time.perf_counter()
        files = render_artifacts(r)
        t3 = time.perf_counter()
        out = r.frames.store_root / "report"
        out.mkdir(exist_ok=True)
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
        t4 = time.perf_counter()
        n_runs, n_points = len(r.frames.cells), len(r.frames.curves)
        print(f"synthetic store: {n_runs} runs, {n_points} curve points ({t1 - t0:.1f} s to write, not timed)")
        print(f"read + statistics + decision: {t2 - t1:.2f} s")
        print(f"tables, figures, templates:   {t3 - t2:.2f} s")
        print(f"write {len(files)} artifacts:       {t4 - t3:.2f} s")
        total = t4 - t1
        print(f"report wall time: {total:.2f} s (goal < 10 s) -> {'OK' if total < 10 else 'OVER GOAL'}")


if __name__ == "__main__":
    main()
