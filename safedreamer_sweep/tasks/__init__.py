"""What a cell can run, one module per job:

- run.py: the package's own task: one cell trained (resuming from its newest checkpoint) and
  evaluated, each attempt and its timeline recorded in the run directory.
- app.py: any Hydra app's task function run as a cell, its attempt, outcome and return value recorded.
- external/: any training script as a cell (`task=external`): templates, config, validation, the
  planner's config-axis check, the subprocess runner, train and evaluate (its __init__ maps them).
- probes.py: turn an external script's own files into env steps, checkpoints, episodes and curves.
- jit_cache_launch.py: a standalone launcher that runs a JAX script with the persistent
  compilation cache on (standard library + JAX only, for the script's own interpreter).
"""

__all__ = ["app", "external", "jit_cache_launch", "probes", "run"]
