"""The safedreamer-sweep search: `hydra/sweeper=sds_optuna`, an Optuna 5 study owned by the sweep.
config.py: its structured config (hydra-optuna-sweeper's keys, plus seeds, aggregate, objective,
constraint, pruner); sweeper.py: hands the study to safedreamer_sweep/search/launch.py."""

__all__ = ["config", "sweeper"]
