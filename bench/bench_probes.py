"""How long one probe tick costs on a long SafeDreamer-sized run (prints figures, asserts nothing).

A 1M-step SafeDreamer run holds ~1000 replay chunks of 1024 steps and a metrics.jsonl of tens of MB;
the cell reads its probes every `probe_every_s` seconds, so a tick must stay in milliseconds.

    python bench/bench_probes.py [n_chunks] [metrics_mb]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from safedreamer_sweep.tasks import probes as P


def main() -> None:
    n_chunks = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    metrics_mb = float(sys.argv[2]) if len(sys.argv) > 2 else 50
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        replay = root / "sd" / "20260101-000000_osrp_x_0" / "replay"
        replay.mkdir(parents=True)
        for i in range(n_chunks):
            (replay / f"20260101T000000F{i:06d}-{uuid.uuid4().hex}-{uuid.uuid4().hex}-1024.npz").write_bytes(b"")
        row = {"step": 0, **{f"train/metric_{k}": 0.123456 for k in range(60)}}
        line_len = len(json.dumps(row)) + 1
        with open(replay.parent / "metrics.jsonl", "w") as f:
            for i in range(int(metrics_mb * 2**20 / line_len)):
                row["step"] = i * 5
                f.write(json.dumps(row) + "\n")
        files = P.FilesProbe("replay", glob="sd/*/replay/*.npz", size_regex=r"-(\d+)\.npz$", scale=5,
                             since_start=False, base_dir=root)
        files.start(0)
        jsonl = P.JsonlProbe("metrics", glob="sd/*/metrics.jsonl", key="step", base_dir=root)
        for probe in (files, jsonl):
            probe.read()  # warm the page cache and the name cache, as every tick after the first
            t = time.perf_counter()
            reps = 20
            for _ in range(reps):
                v = probe.read()
            ms = (time.perf_counter() - t) / reps * 1e3
            print(f"{probe.name:8s} {type(probe).__name__:11s} value={v:>10d}  {ms:7.2f} ms per read")
        print(f"({n_chunks} chunk files, metrics.jsonl {metrics_mb:.0f} MB)")


if __name__ == "__main__":
    main()
