"""Planning real composed configs (Hydra's own config loader over conf/) against real store states."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode

from safedreamer_sweep.core.files import atomic_write_json
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.compose import job_spec
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.plan import format_plan, plan_cells
from safedreamer_sweep.sweep.settings import check_store_root

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

    from safedreamer_sweep.core.run_dir import host
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
        plan_cells([["config=v2_u_only", "seed=0", "trainer.total_steps=2048"]], config_loader=loader, config=master,
                   log=lambda m: None)
    default = master.trainer.total_steps
    assert f"trainer.total_steps: {default} -> 2048" in str(e.value) and "sweep.new_variant=true" in str(e.value)
    cells = plan_cells([["config=v2_u_only", "seed=0", "trainer.total_steps=2048", "sweep.new_variant=true"]],
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
    cells = plan_cells([[*j, "sweep.strict_confounds=false"] for j in jobs], config_loader=loader, config=master,
                       log=lambda m: None)
    assert [c.verdict for c in cells] == ["new", "new"]


def store_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("seed, shown", [("a", "seed='a'"), ("1.5", "seed=1.5"), ("true", "seed=True"),
                                         ("'3'", "seed='3'")])
def test_a_seed_that_is_not_an_integer_is_refused_by_name(hydra_loader, tmp_path, seed, shown):
    loader, master = hydra_loader
    before = store_files(tmp_path)
    with pytest.raises(PlanError) as e:  # seed=a,b under -m: the sweeper hands over the job seed=a first
        plan_cells([["config=v2_baseline", f"seed={seed}"], ["config=v2_baseline", "seed=0"]], config_loader=loader,
                   config=master, log=lambda m: None)
    msg = str(e.value)
    assert shown in msg and "is not an integer" in msg and "e.g. seed=0,1,2" in msg, msg
    assert store_files(tmp_path) == before


@pytest.mark.parametrize("override, named", [
    ("trainer.total_steps=-5", "trainer.total_steps=-5"),
    ("trainer.total_steps=1000", "trainer.total_steps=1000"),  # not a multiple of rollout_steps
    ("trainer.rollout_steps=1000", "trainer.rollout_steps=1000"),  # does not split into num_envs/minibatches
])
def test_a_budget_the_trainer_refuses_is_a_plan_error_before_anything_is_written(hydra_loader, tmp_path,
                                                                                 override, named):
    loader, master = hydra_loader
    before = store_files(tmp_path)
    with pytest.raises(PlanError) as e:
        plan_cells([["config=v2_baseline", "seed=0"], ["config=v2_baseline", "seed=1", override]],
                   config_loader=loader, config=master, log=lambda m: None)
    assert named in str(e.value) and "Fix:" in str(e.value) and "seed=1" in str(e.value)
    assert store_files(tmp_path) == before


def test_the_budget_check_does_not_import_jax():
    code = ("import sys; from safedreamer_sweep.trainer.budget import check_config; import safedreamer_sweep.sweep.plan; "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_a_bad_external_task_is_a_plan_error(hydra_loader, tmp_path):
    loader, master = hydra_loader
    with pytest.raises(PlanError) as e:
        plan_cells([["config=v2_baseline", "seed=0", "task=external", "task.command='{python} x.py {nosuch}'"]],
                   config_loader=loader, config=master, log=lambda m: None)
    assert "nosuch" in str(e.value)
    assert store_files(tmp_path) == []


def test_truncated_checkpoints_are_not_promised_as_a_resume(hydra_loader):
    loader, master = hydra_loader
    _, rd = cell(loader, master, "config=v2_full", "seed=0")
    rd.begin_attempt(pid=dead_pid())
    old, new = rd.save_checkpoint(1024, {"w": 1}), rd.save_checkpoint(2048, {"w": 2})
    from safedreamer_sweep.core.run_dir import RunDir

    assert RunDir.verify_checkpoint(new) and RunDir.verify_checkpoint(old)
    new.write_bytes(new.read_bytes()[:-7])
    assert not RunDir.verify_checkpoint(new)
    def plan():
        return plan_cells([["config=v2_full", "seed=0"]], config_loader=loader, config=master, log=lambda m: None)[0]

    c = plan()
    assert c.verdict == "resume"
    assert "ckpt_000000002048.pkl (env_step 2048) is unreadable" in c.reason and "resumes from env_step 1024" in c.reason
    old.write_bytes(b"")
    c = plan()
    assert c.verdict == "new" and "ckpt_000000001024.pkl (env_step 1024) is unreadable" in c.reason
    assert "starts from scratch" in c.reason


def test_store_root_that_is_a_file_is_named(hydra_loader, tmp_path):
    loader, master = hydra_loader
    f = tmp_path / "afile"
    f.write_text("x")
    for root in (f, f / "below"):
        with pytest.raises(PlanError) as e:
            check_store_root(root)
        assert f"store.root={root}" in str(e.value) and "not a directory" in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(PlanError) as e:
        plan_cells([["config=v2_full", "seed=0", f"store.root={f}"]], config_loader=loader, config=master,
                   log=lambda m: None)
    assert "not a directory" in str(e.value)
    assert check_store_root(tmp_path / "new" / "store") == tmp_path / "new" / "store"


def full_container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


def test_fast_planning_yields_what_composing_every_job_yields(hydra_loader, tmp_path):
    """Identity, verdict and each job's own composed config (hydra.* included) are the same whether
    the planner composes every job or composes once per config and substitutes the seed."""
    loader, master = hydra_loader
    jobs = [[f"config={c}", f"seed={s}"] for c in ("v2_baseline", "v2_full", "v2_u_only") for s in (0, 7, 123)]
    jobs += [["config=v2_full", "seed=5", "trainer.log_every_steps=4096"],  # a group of its own
             ["config=v2_full", "seed=6", "trainer.log_every_steps=4096"]]
    jobs = [[*j, "sweep.strict_confounds=false"] for j in jobs]
    kw = {"config_loader": loader, "config": master, "log": lambda m: None}
    fast = plan_cells(jobs, **kw)
    slow = plan_cells(jobs, fast=False, **kw)
    # only the first job of each (config, other overrides) group was composed at plan time
    assert sum(c.composed is not None for c in fast) == 4
    assert all(c.composed is not None for c in slow)
    for f, s in zip(fast, slow):
        assert (f.spec.key, f.spec.run_config, f.spec.overrides) == (s.spec.key, s.spec.run_config, s.spec.overrides)
        assert (f.verdict, f.reason, f.run_dir.path) == (s.verdict, s.reason, s.run_dir.path)
        assert full_container(f.cfg) == full_container(s.cfg)  # composed now, on demand, per job
        assert f.cfg.hydra.overrides.task == s.cfg.hydra.overrides.task and f.cfg.seed == s.spec.seed


def test_an_interpolated_seed_falls_back_to_composing_every_job(hydra_loader):
    loader, master = hydra_loader
    jobs = [["config=v2_full", f"seed={s}", "+env.eval_seed_base=${seed}"] for s in (0, 1, 2)]
    fast = plan_cells(jobs, config_loader=loader, config=master, log=lambda m: None)
    slow = plan_cells(jobs, config_loader=loader, config=master, log=lambda m: None, fast=False)
    assert all(c.composed is not None for c in fast)
    assert [c.spec.hash for c in fast] == [c.spec.hash for c in slow]
    assert [c.spec.run_config["env"]["eval_seed_base"] for c in fast] == [0, 1, 2]


def test_launcher_options_out_of_range_are_refused_by_name():
    from safedreamer_sweep.sweep.launch import check_launcher_params

    for bad, named in (({"max_parallel": 0}, "hydra.launcher.max_parallel=0"), ({"poll_s": -1}, "hydra.launcher.poll_s=-1"),
                       ({"max_attempts": 0}, "max_attempts"), ({"stall_after": 0}, "stall_after")):
        with pytest.raises(PlanError) as e:
            check_launcher_params(bad)
        # the range is named (poll_s is exclusive: "> 0"; the counts are ">= 1") and so is the fix
        assert named in str(e.value) and re.search(r"must be .*>=? \d", str(e.value)) and "Fix:" in str(e.value)
    check_launcher_params({"max_parallel": None, "poll_s": 0.5, "max_attempts": 1, "stall_after": 30})


def test_the_retry_exclude_override_is_one_value_not_a_sweep():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from safedreamer_sweep.sweep.watch import exclude_override

    for nodes in (["vm"], ["node1", "node2"], ["gpu[01-03]", "cpu07"]):
        ov = OverridesParser.create().parse_override(exclude_override(nodes))
        assert not ov.is_sweep_override() and ov.value() == ",".join(nodes)
        assert ov.key_or_group == "hydra.launcher.exclude"


def test_local_submitit_folder_creates_no_literal_job_id_template(tmp_path):
    import submitit

    from safedreamer_sweep.sweep.launch import submitit_folder

    assert "%j" in str(submitit_folder("slurm", {}, tmp_path))
    folder = submitit_folder("local", {}, tmp_path)
    assert "%j" not in str(folder)
    job = submitit.LocalExecutor(folder=str(folder)).submit(sum, [1, 2])
    assert job.result() == 3
    assert not [p for p in tmp_path.rglob("*") if "%j" in p.name]
    assert list(folder.glob(f"{job.job_id}_*log.out"))
