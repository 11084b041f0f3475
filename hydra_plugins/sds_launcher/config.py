"""The launchers' structured configs in Hydra's ConfigStore. Every option (type, default, range,
meaning) is declared once in safedreamer_sweep/core/launcher_options.py; set them as
`hydra.launcher.<key>=...` on the command line or in conf/sweep.yaml."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from safedreamer_sweep.core.launcher_options import LocalOptions, SlurmOptions


@dataclass
class SdsLocalConf(LocalOptions):
    _target_: str = "hydra_plugins.sds_launcher.launcher.SdsLocalLauncher"


@dataclass
class SdsSlurmConf(SlurmOptions):
    _target_: str = "hydra_plugins.sds_launcher.launcher.SdsSlurmLauncher"


cs = ConfigStore.instance()
cs.store(group="hydra/launcher", name="sds_local", node=SdsLocalConf, provider="sds_launcher")
cs.store(group="hydra/launcher", name="sds_slurm", node=SdsSlurmConf, provider="sds_launcher")
