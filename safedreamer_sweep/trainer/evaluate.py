"""Evaluation of a trained cell: the deterministic policy (mean action) of the newest valid
checkpoint, `eval.episodes` episodes in-distribution (eval.id_env, kind "id") or
out-of-distribution (eval.ood_env, kind "ood"). The episode seeds derive from the cell seed but
never coincide with the training env seeds (different SeedSequence entropy), and are recorded in
the result, with the checkpoint step evaluated (older than the trained steps when the newest
checkpoint was unreadable: status and report flag that).

Training enforced the cost limit on the stochastic policy (sampled actions); this evaluates the
deterministic one, whose cost can differ: the report says so.

Evaluation is progress too: after every episode it rewrites progress.json with the episodes done
(`eval_episodes_done`, `eval_moved_at`), so a long evaluation is never taken for a stalled cell."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig

from safedreamer_sweep.core.store import EVAL_KINDS, RunDir, StoreError
from safedreamer_sweep.trainer.envs import make_env
from safedreamer_sweep.trainer.policy import NumpyPolicy, RunningNorm

_KIND_SALT = {"id": 11, "ood": 12}


def run_episodes(env, act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int],
                 on_episode: Callable[[int], None] | None = None) -> list[dict]:
    """One full episode per seed with `act(obs batch) -> action batch`: [{return, cost, length}].
    `on_episode(episodes done)` is called after each episode."""
    out: list[dict] = []
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        ret = cost = 0.0
        length = 0
        done = False
        while not done:
            action = act(np.asarray(obs, np.float32)[None])[0]
            obs, r, c, term, trunc, _ = env.step(action)
            ret, cost, length = ret + float(r), cost + float(c), length + 1
            done = bool(term or trunc)
        out.append({"return": ret, "cost": cost, "length": length})
        if on_episode is not None:
            on_episode(len(out))
    return out


class EvalHeartbeat:
    """Rewrites progress.json with the episodes an evaluation has done, each time one ends.
    `eval_moved_at` is when the episode count last moved (what the stall check reads during an eval
    phase). The env step and the training's evidence (steps/s, peak memory) of the last heartbeat
    are kept; without one, the env step is the evaluated checkpoint's."""

    _OWN = ("env_step", "total_steps", "updated_at", "env_step_moved_at", "host", "pid", "job_id")

    def __init__(self, run: RunDir, kind: str, step: int, total_steps: int, episodes: int):
        try:
            prev = run.read_progress() or {}
        except StoreError:  # a corrupt progress.json is replaced by the first beat
            prev = {}
        self.keep = {k: v for k, v in prev.items() if k not in self._OWN}
        self.run, self.kind, self.episodes = run, kind, episodes
        self.step, self.total = int(prev.get("env_step", step)), int(prev.get("total_steps") or total_steps)

    def __call__(self, done: int) -> None:
        try:
            self.run.heartbeat(self.step, self.total, **{**self.keep, "phase": f"eval-{self.kind}",
                               "eval_kind": self.kind, "eval_episodes_done": int(done),
                               "eval_episodes": self.episodes, "eval_moved_at": time.time()})
        except OSError as e:  # a full disk must not fail the evaluation; status shows a stale heartbeat
            print(f"[eval] heartbeat to {self.run.progress_path} failed: {e}", file=sys.stderr, flush=True)


def eval_seed(cell_seed: int, kind: str) -> int:
    """First episode seed of the final evaluation of `kind` (episode i uses seed + i)."""
    return int(np.random.SeedSequence([int(cell_seed), 3, _KIND_SALT[kind]]).generate_state(1)[0] % 2**31)


def summarize(episodes: list[dict], cost_limit: float) -> dict:
    ret = np.array([e["return"] for e in episodes], float)
    cost = np.array([e["cost"] for e in episodes], float)
    length = np.array([e["length"] for e in episodes], float)
    return {"return_mean": float(ret.mean()), "return_std": float(ret.std()), "cost_mean": float(cost.mean()),
            "cost_std": float(cost.std()), "length_mean": float(length.mean()),
            "violation_rate": float((cost > cost_limit).mean()), "episodes": len(episodes)}


def evaluate(cfg: DictConfig, run: RunDir, kind: str) -> dict:
    """Evaluate the newest valid checkpoint of `run` on the `kind` env ("id" or "ood"); the result
    document of docs/CONTRACTS.md (the caller writes it to eval/<kind>.json)."""
    if kind not in EVAL_KINDS:
        raise ValueError(f"eval kind must be one of {EVAL_KINDS}, got {kind!r}")
    found = run.latest_checkpoint(log=lambda m: print(f"[eval] {m}", flush=True))
    if found is None:
        raise StoreError(f"{run.checkpoints_dir}: no readable checkpoint to evaluate. Fix: train the cell "
                         f"first (run it again; it resumes or starts training).")
    step, ck = found
    env_id = str(cfg.eval.id_env if kind == "id" else cfg.eval.ood_env)
    norm = RunningNorm.from_state(ck["normalizer"]) if cfg.agent.obs_norm else None
    policy = NumpyPolicy(ck["params"], norm)
    seed0 = eval_seed(int(cfg.seed), kind)
    n = int(cfg.eval.episodes)
    if n < 1:
        raise ValueError(f"eval.episodes must be >= 1, got {n}. Fix: eval.episodes=2")
    env = make_env(env_id, fast_reset=bool(cfg.env.fast_reset))
    if env.observation_space.shape != (ck["obs_dim"],):
        raise ValueError(f"{env_id}: observation shape {env.observation_space.shape} differs from the trained "
                         f"policy's ({ck['obs_dim']},). Fix: choose an eval.{kind}_env with the same "
                         f"observation space as {cfg.env.id}.")
    total = int(cfg.trainer.total_steps) if "trainer" in cfg else int(step)
    beat = EvalHeartbeat(run, kind, int(step), total, n)
    beat(0)  # the phase's first beat: its clock starts now, not at the last training step
    try:
        episodes = run_episodes(env, policy.act, [seed0 + i for i in range(n)], on_episode=beat)
    finally:
        env.close()
    cost_limit = float(cfg.agent.lagrangian.cost_limit)
    trained = run.read_state().get("trained_steps")
    result: dict[str, Any] = {
        "kind": kind, "env_id": env_id, "checkpoint_step": int(step),
        "trained_steps": None if trained is None else int(trained), "seed": seed0, "policy": "deterministic",
        "cost_limit": cost_limit, "episodes": episodes, "summary": summarize(episodes, cost_limit)}
    if kind == "ood":
        result["ood_proxy"] = str(cfg.eval.ood_proxy)
    s = result["summary"]
    stale = f"; OLDER than the {trained} trained steps" if trained is not None and int(step) < int(trained) else ""
    print(f"[eval] {kind} {env_id}: return {s['return_mean']:.2f} cost {s['cost_mean']:.2f} over {n} episodes "
          f"(checkpoint step {step}{stale})", flush=True)
    return result
