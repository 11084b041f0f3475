"""The safedreamer-sweep Hydra sweeper: `hydra/sweeper=sds`, the default of this package's conf and
usable by any Hydra app. BasicSweeper's grammar and jobs, each shape composed once (sweeper.py)."""
