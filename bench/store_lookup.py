"""Lookup of a cell by its identity in a 10,000-cell store (issue 19): the store index
(core/index.py, `<store>/index.sqlite`) against walking the tree. One run, this machine.

    nice .venv/bin/python bench/store_lookup.py [--cells 10000] [--labels 200] [--lookups 2000]

The store is built synthetically in a temporary folder: `--labels` labels x (cells / labels) seeds,
each run directory holding the spec.json a planned cell gets (label, seed, hash, run_config; the
hash is config_hash of the run config, as planning computes it). Nothing else is read by a lookup.

What is timed (the real code, nothing stubbed):
  1. building the index from the directories (what happens once, when it is missing or stale);
  2. a fresh Store's first lookup (opens the index and checks it is fresh: one readdir of runs/ and
     one query, never a walk of the tree);
  3. Store.locate of `--lookups` random finished cells asked under another label than the one they
     are stored under (the narrowed command line of the issue), of cells asked under their own
     label, and of identities stored nowhere (a new cell): per-lookup median, 99th percentile, max;
  4. for comparison, one walk of the tree (Store.iter_runs + reading each spec.json) to find one hash,
     which is what finding a cell under another label costs without an index.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(root: Path, n_cells: int, n_labels: int) -> list[tuple[str, int, str, dict]]:
    from safedreamer_sweep.core.identity import config_hash

    seeds = max(1, n_cells // n_labels)
    cells = []
    for i in range(n_labels):
        label = f"app,alg=a{i % 20},env=e{i // 20}"
        for seed in range(seeds):
            rc = {"alg": f"a{i % 20}", "env": f"e{i // 20}", "seed": seed, "lr": 0.001}
            h = config_hash(rc)
            path = root / "runs" / label / f"seed_{seed}" / h
            path.mkdir(parents=True)
            (path / "spec.json").write_text(json.dumps({"config": label, "seed": seed, "hash": h, "run_config": rc,
                                                        "done_when": "return"}))
            cells.append((label, seed, h, rc))
    return cells


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def figures(name: str, seconds: list[float]) -> str:
    s = sorted(seconds)
    p99 = s[min(len(s) - 1, int(0.99 * len(s)))]
    return (f"  {name:<44} n={len(s):<5} median {statistics.median(s) * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us   "
            f"max {s[-1] * 1e6:8.1f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--labels", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=2000)
    args = ap.parse_args()

    from safedreamer_sweep.core.index import RunIndex
    from safedreamer_sweep.core.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="sds-lookup-bench-"))
    try:
        t0 = time.perf_counter()
        cells = build(tmp, args.cells, args.labels)
        print(f"store: {len(cells)} run directories under {args.labels} labels, built in "
              f"{time.perf_counter() - t0:.1f} s ({tmp})")

        idx = RunIndex(tmp)
        rebuild = timed(idx.ensure_fresh)
        assert idx.count() == len(cells), (idx.count(), len(cells))
        idx.close()
        print(f"1. index built from the directories (one glob of runs/): {rebuild:.3f} s")

        fresh = [timed(Store(tmp).locate, *cells[0][:3]) for _ in range(20)]
        print(f"2. a fresh Store's first lookup (freshness check + query), median of 20: "
              f"{statistics.median(fresh) * 1e3:.2f} ms")

        rng = random.Random(0)
        store = Store(tmp)
        store.locate(*cells[0][:3])
        sample = [cells[rng.randrange(len(cells))] for _ in range(args.lookups)]
        other, own, miss = [], [], []
        for label, seed, h, rc in sample:
            t0 = time.perf_counter()
            rd = store.locate("app", seed, h, rc)  # the narrowed command line: no swept keys in the label
            other.append(time.perf_counter() - t0)
            assert rd.path.parent.parent.name == label, rd.path
            t0 = time.perf_counter()
            store.locate(label, seed, h, rc)
            own.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rd = store.locate(label, seed, f"{rng.getrandbits(32):08x}")
            miss.append(time.perf_counter() - t0)
        assert store.index.rebuilt == 0, "the index was rebuilt during the lookups"
        print("3. Store.locate per lookup:")
        print(figures("stored under another label (narrowed sweep)", other))
        print(figures("asked under its own label", own))
        print(figures("stored nowhere (a new cell)", miss))

        target = cells[-1][2]

        def walk() -> None:
            for rd in Store(tmp).iter_runs():
                if (rd.read_spec() or {}).get("hash") == target:
                    return

        print(f"4. for comparison, one walk of the tree to find a hash: {timed(walk) * 1e3:.0f} ms "
              f"({timed(walk) / statistics.median(other):.0f}x a lookup)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
