"""The builtin trainer's budget checks, free of jax so the planner can run them for every job
before anything is written to the store (trainer.py re-exports check_config)."""

from __future__ import annotations

from typing import Any


def check_config(cfg: Any) -> None:
    """Refuse budgets the loop cannot meet exactly, naming the override that fixes them.
    `cfg` is a composed config or its resolved container (anything with trainer/agent mappings)."""
    t, a = _node(cfg, "trainer"), _node(cfg, "agent")
    rollout, envs, total, minibatches = (int(t["rollout_steps"]), int(t["num_envs"]), int(t["total_steps"]),
                                         int(a["minibatches"]))
    if envs <= 0 or rollout <= 0 or minibatches <= 0:
        raise ValueError(f"trainer.num_envs={envs}, trainer.rollout_steps={rollout} and agent.minibatches="
                         f"{minibatches} must all be >= 1. Fix: e.g. trainer.num_envs=1 trainer.rollout_steps=512")
    if rollout % envs:
        raise ValueError(f"trainer.rollout_steps={rollout} is not a multiple of trainer.num_envs="
                         f"{envs}. Fix: e.g. trainer.rollout_steps={envs * 512}")
    if total % rollout or total <= 0:
        raise ValueError(f"trainer.total_steps={total} is not a positive multiple of trainer.rollout_steps="
                         f"{rollout} (one PPO update per rollout). Fix: trainer.total_steps="
                         f"{max(1, round(total / rollout)) * rollout}")
    if rollout % minibatches:
        raise ValueError(f"trainer.rollout_steps={rollout} does not split into agent.minibatches="
                         f"{minibatches}. Fix: make rollout_steps a multiple of minibatches")


def _node(cfg: Any, key: str) -> Any:
    try:
        return cfg[key]
    except (KeyError, TypeError) as e:
        raise ValueError(f"the composed config has no `{key}` section; the builtin trainer needs it. "
                         f"Fix: keep `{key}` in conf/sweep.yaml's defaults or set task.kind=external") from e
