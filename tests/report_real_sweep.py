"""A small store produced by a real short sweep (the real launcher, trainer and evaluator), shared
by tests/test_report_real.py and tests/test_notebook.py within one pytest session."""

from __future__ import annotations

from pathlib import Path

import filelock
from conftest import sds

SWEEP = ["-m", "config=v2_baseline,v2_full", "seed=0,1", "trainer.total_steps=1024", "trainer.num_envs=1",
         "trainer.rollout_steps=512", "eval.episodes=1"]


def real_store(tmp_path_factory) -> Path:
    """2 configs x 2 seeds, 1024 env steps each; run once per session (the session's base temp dir)."""
    root = tmp_path_factory.getbasetemp() / "report-real-store"
    with filelock.FileLock(str(root) + ".lock"):
        done = root / ".sweep-done"
        if not done.exists():
            sds(*SWEEP, f"store.root={root}", timeout=1200, check=True)
            done.write_text("ok\n")
    return root
