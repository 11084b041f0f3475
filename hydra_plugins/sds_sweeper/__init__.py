"""The safedreamer-sweep Hydra sweeper: `hydra/sweeper=sds`, the default of this package's conf and
usable by any Hydra app. config.py: its structured config in Hydra's ConfigStore; sweeper.py:
BasicSweeper's grammar and jobs, each shape composed once (safedreamer_sweep/sweep/shapes.py)."""

__all__ = ["config", "sweeper"]
