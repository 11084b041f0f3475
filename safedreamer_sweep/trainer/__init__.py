"""The built-in trainer: PPO-Lagrangian in JAX on Safety-Gymnasium.

    ppo_lag.py    the agent and `train`, the loop (rollout, advantages, multiplier, update, cadences)
    policy.py     the MLP, the numpy copy of the networks for acting, the observation normaliser
    envs.py       Safety-Gymnasium envs with cheap resets (`fast_reset`) and the env-cost clock
    evaluate.py   evaluation of a trained cell, in- and out-of-distribution
    budget.py     the budget checks (jax-free: the planner runs them for every job)
"""

__all__ = ["budget", "envs", "evaluate", "policy", "ppo_lag"]
