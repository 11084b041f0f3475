"""The sweep stages, in data-flow order: launch (the stages the launcher calls), plan (dedupe),
claim, submit (backends/: local, slurm), supervise (failures, observe, progress), watch (reattach), hooks."""
