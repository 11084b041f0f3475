"""The sweeper's structured config in Hydra's ConfigStore: BasicSweeper's two options, nothing else."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class SdsSweeperConf:
    _target_: str = "hydra_plugins.sds_sweeper.sweeper.SdsSweeper"
    # jobs handed to the launcher at a time (None: all at once), as hydra/sweeper=basic
    max_batch_size: int | None = None
    # sweep axes in the config, `key: a,b,c` (command-line axes are appended), as hydra/sweeper=basic
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="sds", node=SdsSweeperConf, provider="sds_sweeper")
