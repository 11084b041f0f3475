"""The reduced chaos campaign CI runs (the full one is `bench/chaos.py`): a real sweep launched twice
at once while a driver SIGKILLs a training process, SIGSTOPs one, truncates a killed cell's newest
checkpoint, pushes one over a memory limit and fills the disk under a scratch store; then the store
is audited. Same code as the bench (bench/chaos.py), smaller budgets: each part takes 1-2 minutes.

Asserted: every cell completed, no duplicated completion (no attempt `done` twice, no training run
from step 0 twice, no overlapping attempts), no eval row lost, curves without gaps or duplicates,
every JSON file readable, lost work per fault within its bound, and each fault classified with the
cause the design table promises (SIGKILL -> lost, SIGSTOP -> stalled, memory -> oom). Disk full:
the cell ends done after space is freed, with its attempt classified and the launcher alive.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(spec)
sys.modules["chaos"] = chaos
spec.loader.exec_module(chaos)

BUDGET = chaos.Budget(total_steps=4096, checkpoint_every_steps=1024, eval_every_steps=2048)
EXPECT = {"kill": "lost", "stop": "stalled", "oom": "oom", "corrupt": "lost"}


def check(res: dict) -> None:
    lines: list[str] = []
    ok = chaos.report(res, log=lines.append)
    text = "\n".join(lines)
    print(text)
    a = res["audit"]
    assert len(a["completed"]) == res["cells"], text
    assert not (a["dup_done"] or a["scratch_twice"] or a["overlaps"]), text
    assert not a["eval_lost"] and not a["curve_problems"] and not res["corrupt_json"], text
    injected = [f for f in res["faults"] if f["cell"] != "-"]
    assert {f["kind"] for f in injected} >= {"kill", "stop", "corrupt"}, text
    for f in injected:
        assert f["cause"] == EXPECT[f["kind"]], text
        if f["env_step"] is not None:
            assert f["lost_steps"] is not None and f["lost_steps"] <= f["bound"], text
    assert ok, text  # the disk-full fault included


@pytest.mark.slow
def test_reduced_chaos_campaign_local(tmp_path: Path):
    res = chaos.run_campaign("local", cells=4, kills=1, budget=BUDGET, work=tmp_path, seed=1, stall_after=60,
                             timeout_s=420)
    check(res)


@pytest.mark.slow
@pytest.mark.slurm
def test_reduced_chaos_campaign_slurm(tmp_path: Path):
    res = chaos.run_campaign("slurm", cells=3, kills=1, budget=BUDGET, work=tmp_path, seed=2, stall_after=60,
                             enospc=False, timeout_s=420)
    check(res)
