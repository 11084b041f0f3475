"""Hydra's own launcher conformance suites (hydra.test_utils.launcher_common_tests), the ones
hydra-submitit-launcher and hydra-joblib-launcher run against themselves, run against sds_local and
(on the local Slurm, marker `slurm`) sds_slurm. Nothing is skipped: any Hydra app is a cell.

LauncherTestSuite runs in its vanilla form, as hydra-submitit-launcher runs it: one store for the
whole module ($SDS_STORE), so a job one test asks for again after another (the suite repeats sweeps
across tests) is a finished cell handed back from the store, and still gets a real Hydra job directory
(.hydra/config.yaml, hydra.yaml, overrides.yaml, <task>.log naming the run directory it came from)
that its JobReturn points at (issue 19); verify_dir_outputs checks it.

IntegrationTestSuite runs in its vanilla form too, one store for the whole module: its tests write a
task file per test (each in its own folder: another app, core/app_identity.py) and re-invoke
one of them with other contents (an edited main script: its cells run again, the old result moved to
superseded/, because an app that declares no sds.code has its main script as its code).

The sds sweeper runs the suites Hydra runs against its BasicSweeper (hydra's tests/test_basic_launcher.py:
the launcher suite, the batched-sweeper suite with max_batch_size=2, the integration suite), under
Hydra's basic launcher and, batched, under sds_local.
"""

from __future__ import annotations

import os

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.sds_launcher.launcher import SdsLocalLauncher, SdsSlurmLauncher
from hydra_plugins.sds_sweeper.sweeper import SdsSweeper

FAST = ["hydra.launcher.poll_s=0.2", "hydra.launcher.progress=none"]
SLURM = ["hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5"]


@pytest.fixture(scope="module", autouse=True)
def one_store(tmp_path_factory):
    """One store for every test and every app invocation of this module."""
    saved = os.environ.get("SDS_STORE")
    os.environ["SDS_STORE"] = str(tmp_path_factory.mktemp("store"))
    yield
    if saved is None:
        os.environ.pop("SDS_STORE", None)
    else:
        os.environ["SDS_STORE"] = saved


@pytest.mark.parametrize("cls", [SdsLocalLauncher, SdsSlurmLauncher])
def test_discovery(cls):
    assert cls.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


def test_sweeper_discovery():
    assert SdsSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize("launcher_name, overrides", [("basic", ["hydra/sweeper=sds"])])
class TestSdsSweeper(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [
    ("basic", ["hydra/sweeper=sds", "hydra.sweeper.max_batch_size=2"]),
    ("sds_local", ["hydra/sweeper=sds", "hydra.sweeper.max_batch_size=2", *FAST]),
])
class TestSdsSweeperWithBatching(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [(
    {"defaults": [{"override hydra/sweeper": "sds"}, {"override hydra/launcher": "basic"},
                  {"override hydra/job_logging": "disabled"}]},
    ["-m"],
)])
class TestSdsSweeperIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("sds_local", FAST)])
class TestSdsLocalLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [(
    {"defaults": [{"override hydra/launcher": "sds_local"}, {"override hydra/job_logging": "disabled"}],
     "hydra": {"launcher": {"poll_s": 0.2, "progress": "none"}}},
    ["-m"],
)])
class TestSdsLocalLauncherIntegration(IntegrationTestSuite):
    pass


@pytest.mark.slurm
@pytest.mark.parametrize("launcher_name, overrides", [("sds_slurm", [*FAST, *SLURM])])
class TestSdsSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.slurm
@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [(
    {"defaults": [{"override hydra/launcher": "sds_slurm"}, {"override hydra/job_logging": "disabled"}],
     "hydra": {"launcher": {"poll_s": 0.2, "progress": "none", "mem_gb": 1, "timeout_min": 5}}},
    ["-m"],
)])
class TestSdsSlurmLauncherIntegration(IntegrationTestSuite):
    pass
