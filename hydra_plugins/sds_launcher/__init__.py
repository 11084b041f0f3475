"""The safedreamer-sweep Hydra launcher: `hydra/launcher=sds_local` or `hydra/launcher=sds_slurm`."""
