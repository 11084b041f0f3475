"""safedreamer-sweep: run RL experiment matrices to completion and report them honestly.

Data flows one way: plan -> launch -> run -> store -> report.

    identity.py   what a cell is (config, seed, hash of the resolved run config)
    store.py      run directories: the single source of truth, atomic writes
    run.py        the task of one cell: train -> checkpoint -> evaluate, recorded in its run dir
    trainer.py    the built-in JAX PPO-Lagrangian trainer on Safety-Gymnasium
    evaluate.py   deterministic ID / OOD evaluation of a trained cell
"""

__version__ = "0.1.0"
