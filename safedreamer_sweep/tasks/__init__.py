"""What a cell can run: the built-in trainer's task, any external training script, progress probes."""
