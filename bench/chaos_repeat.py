"""Run the reduced chaos campaigns (tests/test_chaos.py) N times in a row beside a CPU burner on
every core, and print the failure rate per backend: the load under which a SIGSTOP lands inside a
store write often enough to matter (issue 23).

    python bench/chaos_repeat.py --runs 10                    # local and Slurm, one after another
    python bench/chaos_repeat.py --runs 10 --backends local   # one backend
    python bench/chaos_repeat.py --runs 10 --parallel         # one stream per backend, side by side

Each run is one pytest process on one test (the same assertions CI makes); its output is kept in
--logs. The burners are plain busy loops, one per core, at the campaigns' own niceness.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = {"local": "tests/test_chaos.py::test_reduced_chaos_campaign_local",
         "slurm": "tests/test_chaos.py::test_reduced_chaos_campaign_slurm"}


def burn(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        for _ in range(100_000):
            x += 1


def run_one(backend: str, i: int, logs: Path) -> tuple[bool, float, str]:
    log = logs / f"{backend}-{i:02d}.log"
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", TESTS[backend]],
                           cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    text = log.read_text(errors="replace")
    why = "" if p.returncode == 0 else next((ln.strip() for ln in reversed(text.splitlines())
                                            if ln.startswith(("E ", "FAILED", "ERROR"))), f"exit {p.returncode}")
    return p.returncode == 0, time.time() - t0, why[:200]


def stream(backend: str, runs: int, logs: Path, results: dict[str, list], say) -> None:
    for i in range(1, runs + 1):
        ok, secs, why = run_one(backend, i, logs)
        results[backend].append((ok, secs, why))
        say(f"[chaos-repeat] {backend} run {i}/{runs}: {'passed' if ok else 'FAILED'} in {secs:.0f}s"
            + (f" ({why})" if why else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--backends", default="local,slurm")
    ap.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="busy loops beside the campaigns")
    ap.add_argument("--parallel", action="store_true", help="one stream per backend at the same time")
    ap.add_argument("--logs", default=None, help="where each run's pytest output goes (default: a temp dir)")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    logs = Path(args.logs or tempfile.mkdtemp(prefix="sds_chaos_repeat_"))
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    stop = mp.Event()
    burners = [mp.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    say(f"[chaos-repeat] {args.runs} run(s) of {', '.join(backends)}"
        f" ({'side by side' if args.parallel else 'one after another'}) beside {args.burners} CPU burner(s); logs in {logs}")
    results: dict[str, list] = {b: [] for b in backends}
    t0 = time.time()
    try:
        if args.parallel:
            threads = [threading.Thread(target=stream, args=(b, args.runs, logs, results, say)) for b in backends]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for b in backends:
                stream(b, args.runs, logs, results, say)
    finally:
        stop.set()
        for b in burners:
            b.join(timeout=5)
    say(f"[chaos-repeat] done in {time.time() - t0:.0f}s")
    bad = 0
    for b, rs in results.items():
        failed = [r for r in rs if not r[0]]
        bad += len(failed)
        secs = sorted(r[1] for r in rs)
        say(f"  {b:6s} {len(rs) - len(failed)}/{len(rs)} passed, failure rate {len(failed)}/{len(rs)}"
            + (f"; run time median {secs[len(secs) // 2]:.0f}s, max {secs[-1]:.0f}s" if secs else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
