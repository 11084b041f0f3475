"""The aggregation callback (report/callback.py) under each launcher, with one job failing: Hydra
skips on_multirun_end then, so the tables must already be current from the jobs' ends."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safedreamer_sweep.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "any_app" / "app.py"
LAUNCHERS = {
    "basic": ["hydra/launcher=basic"],
    "submitit_local": ["hydra/launcher=submitit_local"],
    "sds_local": ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.3", "hydra.launcher.progress=none"],
}


def sweep(store: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDS_STORE": str(store)}
    return subprocess.run([sys.executable, str(APP), "-m", f"hydra.sweep.dir={store}/multirun", "steps=30",
                           "step_sleep=0", *args], cwd=store.parent, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_failed_job_still_leaves_current_tables(tmp_path, launcher):
    store = tmp_path / "store"
    p = sweep(store, *LAUNCHERS[launcher], "fail_at=-1,20")
    assert p.returncode != 0, "a failed job fails the sweep"
    with open(store / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    by_fail = {r["label"].rsplit("=", 1)[1]: r for r in rows}
    assert set(by_fail) == {"-1", "20"}, rows
    ok, bad = by_fail["-1"], by_fail["20"]
    assert ok["phase"] == "done" and 0 < float(ok["value"]) < 10
    assert bad["phase"] == "failed" and bad["cause"] == "error" and "planted failure at step 20" in bad["evidence"]
    page = (store / "report" / "report.html").read_text()  # the app's page: its table and a figure
    assert "1 of 2 cells done" in page and "planted failure at step 20" in page and "data:image/png;base64," in page
    # the store agrees with the table: the run directory holds the return value and the traceback
    cells = {(rd.read_spec() or {})["config"]: rd for rd in Store(store).iter_runs()}
    done = next(rd for label, rd in cells.items() if label.endswith("=-1"))
    assert done.read_result() == pytest.approx(float(ok["value"]))
    failed = next(rd for label, rd in cells.items() if label.endswith("=20"))
    assert "RuntimeError" in failed.read_state()["attempts"][-1]["traceback_tail"]
    # the app checkpointed into its cell's stable run directory, whatever the launcher
    assert max(p.name for p in (done.path / "checkpoints").iterdir()) == "step_00000030.json"
