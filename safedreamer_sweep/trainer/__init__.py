"""The built-in trainer: PPO-Lagrangian in JAX on Safety-Gymnasium (envs, evaluation, budget checks)."""
