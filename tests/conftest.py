"""Shared test fixtures. Tests marked `slurm` need the local cluster (scripts/start-slurm.sh): they
are skipped when it is not reachable, except in CI (SDS_REQUIRE_SLURM=1) where they must run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Overrides that make a real cell train and evaluate in seconds (the real trainer, tiny budgets).
TINY = [
    "trainer.total_steps=1024",
    "trainer.num_envs=1",
    "trainer.rollout_steps=512",
    "trainer.checkpoint_every_steps=512",
    "trainer.log_every_steps=512",
    "trainer.eval_every_steps=1024",
    "eval.episodes=1",
]


def slurm_available() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        ok = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False).returncode == 0
        return ok and subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SDS_REQUIRE_SLURM") == "1" or slurm_available():
        return
    skip = pytest.mark.skip(reason="Slurm not reachable (start it with: sudo bash scripts/start-slurm.sh)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def sds(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
        check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m safedreamer_sweep ARGS` with the venv's interpreter; returns the process."""
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "safedreamer_sweep", *args], cwd=cwd or ROOT, env=e,
                       capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}")
    return p


# One real finished cell (v2_baseline seed 0, 1024 env steps), trained once per test session and
# shared by every module that reads a finished store; tests that change it take `store_copy`.
FINISHED_CELL = ["config=v2_baseline", "seed=0", "hydra/launcher=basic", "trainer.total_steps=1024",
                 "trainer.num_envs=1", "trainer.rollout_steps=512", "eval.episodes=1"]


@pytest.fixture(scope="session")
def finished_store(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "sds_finished_store"
    sds(f"store.root={base}", *FINISHED_CELL, check=True)
    return base


@pytest.fixture
def store_copy(finished_store, tmp_path) -> Path:
    """A private copy of the finished store a test may add to."""
    dst = tmp_path / "store"
    shutil.copytree(finished_store, dst)
    return dst


def dead_pid() -> int:
    """The pid of a process that has already exited (for liveness checks)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid



@pytest.fixture(autouse=True)
def _hydra_version_base_as_in_a_fresh_process():
    """Hydra keeps its version_base process-wide: a test (or a module imported at collection) that
    initializes Hydra with one (initialize_config_dir(version_base="1.3")) would hand it to every
    later in-process Hydra run of the session, and Hydra's launcher suites, which assume a fresh
    process's default, then see hydra.job.chdir=False (their jobs' logs land in the cwd). Every test
    starts and ends with the version base unset, as in a new process."""

    def reset() -> None:
        vb = sys.modules.get("hydra.version")
        if vb is not None:
            vb.VersionBase.instance().version_base = vb._UNSPECIFIED_

    reset()
    yield
    reset()
