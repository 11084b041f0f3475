"""The safedreamer-sweep Hydra launcher: `hydra/launcher=sds_local` or `hydra/launcher=sds_slurm`.

Hydra imports every hydra_plugins module when it starts, whatever the launcher: that is where the
`${sds_run_dir:}` resolver (a cell's stable run directory, safedreamer_sweep/core/cell.py) is
registered, so any app's config may use it (standard library and OmegaConf only: discovery stays fast).
"""

from safedreamer_sweep.core.cell import register_resolver

register_resolver()
