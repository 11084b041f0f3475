"""search/: a study (Optuna 5) owned by the sweep: its search space and settings, its identity and its
journal in the store, trial values over seeds, and the ask/tell loop that runs trials' cells through the
sweep's own supervisor (hydra/sweeper=sds_optuna, hydra_plugins/sds_optuna). Imports sweep and earlier
stages; report reads what it writes."""

__all__ = ["driver", "launch", "settings", "space", "study", "trials", "values"]
