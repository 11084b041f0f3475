"""The safedreamer-sweep Hydra launcher: `hydra/launcher=sds_local` or `hydra/launcher=sds_slurm`.
config.py: the launchers' structured configs in Hydra's ConfigStore; launcher.py: the Launcher
classes, whose launch() calls the stages of safedreamer_sweep/sweep/launch.py in order.

Hydra imports every hydra_plugins module when it starts, whatever the launcher: that is where the
`${sds_run_dir:}` resolver (a cell's stable run directory, safedreamer_sweep/core/cell.py) is
registered, so any app's config may use it (standard library and OmegaConf only: discovery stays fast).
"""

from safedreamer_sweep.core.cell import register_resolver

__all__ = ["config", "launcher"]

register_resolver()
