"""safedreamer-sweep: run RL experiment matrices to completion and report them honestly.

Data flows one way: plan -> launch -> run -> store -> report. The sub-packages are the stages:

    core/       what a cell is (identity), where it lives (store): the single source of truth
    sweep/      the launcher's stages: plan (dedupe), claim, submit (local/slurm backends), supervise
    tasks/      what a cell runs: the built-in task, any external training script, progress probes
    trainer/    the built-in JAX PPO-Lagrangian trainer on Safety-Gymnasium (envs, policy, evaluation)
    report/     tables, statistics, figures and the decision report, read only from the store
    commands/   the `safedreamer-sweep` command: status, watch, doctor, report

docs/architecture.md is the contract a contributor must keep.

For the code of any app a cell runs: `safedreamer_sweep.heartbeat(step, total=None, **metrics)` and
`safedreamer_sweep.run_dir()` (core/cell.py; standard library only, cheap to import).
"""

from safedreamer_sweep.core.cell import heartbeat, run_dir

__all__ = ["heartbeat", "run_dir"]
__version__ = "0.1.0"
