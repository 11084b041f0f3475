"""The sweep: what the launcher does between Hydra's job list and the report, in data-flow order.

    plan        settings (what steers a sweep, where its store is), compose (each job's config and
                identity), checks (plan-time checks), verdicts (one cell against the store), plan
                (the PlannedCells and the plan line), errors (PlanError), shapes (the sds sweeper's check)
    launch      launch (the stages the launcher calls, in order), claim (leases with a generation)
    submit      submit (executors), cell_task (what a submitit job runs), slots (local slots and GPUs),
                backends/ (local, slurm, slurm_pack, warm_pool + warm_worker, behind one Backend)
    supervise   supervise (the loop), attempt_end (an ended attempt's evidence and record), failures
                (cause and retry policy), observe (a cell's phase from its run dir), exitwatch and
                exit_records (how a local cell ended), progress (the live view)
    afterwards  watch (reattach to a detached sweep), hooks (sweep.on_complete), app_jobs (an app's job
                run by another launcher, recorded as a cell)
"""

__all__ = [
    "app_jobs", "attempt_end", "backends", "cell_task", "checks", "claim", "compose", "errors", "exit_records",
    "exitwatch", "failures", "hooks", "launch", "observe", "plan", "progress", "settings", "shapes", "slots",
    "submit", "supervise", "verdicts", "watch",
]
