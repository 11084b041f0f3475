"""Planning real composed configs (Hydra's own config loader over conf/) against real store states."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode

from safedreamer_sweep.plan import PlanError, format_plan, job_spec, plan_cells
from safedreamer_sweep.store import Store, atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


class Loader:
    """Hydra's real config loader; like the sweeper does, every job's overrides carry store.root."""

    def __init__(self, root):
        self.real = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
        self.root = root

    def load_sweep_config(self, master, overrides):
        return self.real.load_sweep_config(master, [f"store.root={self.root}", *overrides])


@pytest.fixture
def hydra_loader(tmp_path):
    loader = Loader(tmp_path)
    master = loader.real.load_configuration("sweep", overrides=[f"store.root={tmp_path}"], run_mode=RunMode.MULTIRUN)
    return loader, master


def cell(loader, master, *ov):
    spec, cfg = job_spec(loader, master, list(ov))
    assert str(cfg.store.root).startswith(str(loader.root))
    rd = Store(cfg.store.root).run_dir(spec.config, spec.seed, spec.hash)
    rd.ensure_spec(spec.spec_document())
    return spec, rd


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def finish(rd, evals=("id", "ood")):
    rd.update_state(lambda s: s.update(trained=True, trained_steps=16384))
    for k in evals:
        rd.write_eval(k, {"summary": {"return_mean": 1.0}})
    if len(evals) == 2:
        rd.set_phase("done")


def test_every_verdict_from_real_store_states(hydra_loader, tmp_path):
    loader, master = hydra_loader
    _, done = cell(loader, master, "config=v2_full", "seed=0")
    finish(done)
    _, evalonly = cell(loader, master, "config=v2_full", "seed=1")
    finish(evalonly, evals=("id",))
    _, resume = cell(loader, master, "config=v2_full", "seed=2")
    resume.begin_attempt(pid=dead_pid())  # died without an end marker, checkpoint on disk
    resume.save_checkpoint(4096, {"w": 1})
    _, retry = cell(loader, master, "config=v2_full", "seed=3")
    retry.begin_attempt()
    retry.end_attempt("failed", cause="oom", evidence="exceeded memory limit")
    retry.set_phase("failed")
    _, failed = cell(loader, master, "config=v2_full", "seed=4")
    failed.begin_attempt()
    failed.end_attempt("failed", cause="error", evidence="ValueError: boom", traceback_tail="Traceback\nValueError: boom")
    failed.set_phase("failed")
    _, elsewhere = cell(loader, master, "config=v2_full", "seed=5")
    import os

    from safedreamer_sweep.store import host
    atomic_write_json(elsewhere.claim_path, {"sweep_id": "other", "host": host(), "pid": os.getpid(),
                                             "claimed_at": time.time(), "backend": "local"})
    jobs = [["config=v2_full", f"seed={s}"] for s in range(7)] + [["config=v2_full", "seed=6"]]
    cells = plan_cells(jobs, config_loader=loader, config=master, stall_after=60, sweep_id="me", log=lambda m: None)
    assert [c.verdict for c in cells] == ["done", "eval-only", "resume", "retry", "failed", "running-elsewhere",
                                          "new", "running-elsewhere"]
    assert "checkpoint at env_step 4096" in cells[2].reason
    assert "ValueError: boom" in cells[4].reason and "sweep.retry_failed=true" in cells[4].reason
    assert "duplicate of job #6" in cells[7].reason
    text = format_plan(cells)
    assert text.splitlines()[0] == ("plan: 8 cells, 4 to submit | done 1, eval-only 1, resume 1, retry 1, "
                                    "running-elsewhere 2, new 1, failed 1")
    # the store root is absolute and every cell keeps its overrides in order
    assert all(Path(c.cfg.store.root).is_absolute() for c in cells) and cells[3].overrides == jobs[3]
    again = plan_cells([["config=v2_full", "seed=4", "sweep.retry_failed=true"]], config_loader=loader,
                       config=master, log=lambda m: None)
    assert again[0].verdict == "retry"


def test_conflict_names_the_differing_keys_unless_new_variant(hydra_loader):
    loader, master = hydra_loader
    cell(loader, master, "config=v2_u_only", "seed=0")
    with pytest.raises(PlanError) as e:
        plan_cells([["config=v2_u_only", "seed=0", "trainer.total_steps=999"]], config_loader=loader, config=master,
                   log=lambda m: None)
    default = master.trainer.total_steps
    assert f"trainer.total_steps: {default} -> 999" in str(e.value) and "sweep.new_variant=true" in str(e.value)
    cells = plan_cells([["config=v2_u_only", "seed=0", "trainer.total_steps=999", "sweep.new_variant=true"]],
                       config_loader=loader, config=master, log=lambda m: None)
    assert cells[0].verdict == "new" and "new variant" in cells[0].reason
    # keys outside the identity (cadences, sweep settings) never conflict
    cells = plan_cells([["config=v2_u_only", "seed=0", "trainer.log_every_steps=4096"]], config_loader=loader,
                       config=master, log=lambda m: None)
    assert cells[0].verdict == "new" and cells[0].run_dir.spec_path.exists()


def test_confound_stops_the_plan_when_strict(hydra_loader):
    loader, master = hydra_loader
    jobs = [["config=v2_baseline", "seed=0", "agent.lr=0.001"], ["config=v2_full", "seed=0"]]
    with pytest.raises(Exception) as e:
        plan_cells(jobs, config_loader=loader, config=master, log=lambda m: None)
    assert "agent.lr" in str(e.value)
    cells = plan_cells([j + ["sweep.strict_confounds=false"] for j in jobs], config_loader=loader, config=master,
                       log=lambda m: None)
    assert [c.verdict for c in cells] == ["new", "new"]
