"""Trainer throughput, in one run on this machine:

1. env steps/s of training (the real `train()` loop: rollout, GAE, jitted PPO update, logging,
   checkpoints), steady state (the first logging window, which holds the JAX compile, excluded);
2. env steps/s of stepping the same vector env with random actions (no learning at all);
3. their ratio (goal >= 0.85);
4. the cost of a reset with Safety-Gymnasium's stock reset and with `fast_reset`, and the env
   rate with episode resets included, stock vs fast.

    nice .venv/bin/python bench/trainer_throughput.py [--steps 32768] [--num-envs 2]

Prints the figures (and writes them as JSON with --json PATH). No assertions: it measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
OMNISAFE_REFERENCE = ("OmniSafe 0.5 PPOLag, same CPU, stock resets: 210-330 env steps/s with 1-2 envs "
                      "(measured on this machine; issue 2 of this repository)")


def compose(steps: int, num_envs: int, rollout: int, config: str) -> OmegaConf:
    """The defaults of conf/ for one cell (the same groups Hydra composes), with bench budgets."""
    base = OmegaConf.load(ROOT / "conf" / "sweep.yaml")
    cfg = OmegaConf.create({
        "seed": 0,
        "trainer": OmegaConf.to_container(base.trainer),
        "agent": OmegaConf.load(ROOT / "conf" / "agent" / "ppo_lag.yaml"),
        "env": OmegaConf.load(ROOT / "conf" / "env" / "safety_gym.yaml"),
        "eval": OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml"),
    })
    cfg.merge_with(OmegaConf.load(ROOT / "conf" / "config" / f"{config}.yaml"))
    cfg.trainer.update(total_steps=steps, num_envs=num_envs, rollout_steps=rollout, log_every_steps=rollout,
                       checkpoint_every_steps=steps, eval_every_steps=0, heartbeat_every_s=2.0)
    return cfg


def train_rate(cfg) -> dict:
    """Steady-state training rate, by wall clock and by this process's CPU time. The CPU-time rate
    barely moves when other processes share the cores, the wall-clock one does."""
    from safedreamer_sweep.core.run_dir import RunDir
    from safedreamer_sweep.trainer.ppo_lag import train

    marks: list[tuple[int, float, float]] = []  # (env_step, wall, cpu) at every metrics row
    append = RunDir.append_metrics

    def timed_append(self, row, path=None):
        if path is None:
            marks.append((row["env_step"], time.perf_counter(), time.process_time()))
        return append(self, row, path)

    RunDir.append_metrics = timed_append
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train(cfg, RunDir(Path(tmp) / "run"))
            wall = time.perf_counter() - t0
    finally:
        RunDir.append_metrics = append
    (s0, w0, c0), (s1, w1, c1) = marks[0], marks[-1]  # the first window holds the JAX compile
    return {"train_steps_per_s": (s1 - s0) / (w1 - w0), "train_steps_per_cpu_s": (s1 - s0) / (c1 - c0),
            "train_wall_s": wall, "first_window_s": marks[0][1] - t0}


def raw_env_rate(env_id: str, num_envs: int, steps: int, fast_reset: bool = True) -> tuple[float, float]:
    """The same vector env stepped with uniform random actions: the ceiling for training.
    Returns (env steps per wall second, per CPU second of this process)."""
    from safedreamer_sweep.trainer.envs import make_vector_env

    venv = make_vector_env(env_id, num_envs, fast_reset=fast_reset)
    venv.reset(list(range(num_envs)))
    rng = np.random.default_rng(0)
    shape = (num_envs, *venv.single_action_space.shape)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps // num_envs):
        venv.step(rng.uniform(-1, 1, size=shape).astype(np.float32))
    rates = steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)
    venv.close()
    return rates


def reset_seconds(env_id: str, fast_reset: bool, n: int) -> float:
    from safedreamer_sweep.trainer.envs import make_env

    env = make_env(env_id, fast_reset=fast_reset)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(n):
        env.reset()
    dt = (time.perf_counter() - t0) / n
    env.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=32768, help="env steps of training (and of the raw env run)")
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--rollout", type=int, default=1024)
    ap.add_argument("--config", default="v2_full", help="conf/config/<name> (v2_full exercises u and cert)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    cfg = compose(args.steps, args.num_envs, args.rollout, args.config)
    env_id = str(cfg.env.id)
    print(f"[bench] {env_id}, {args.num_envs} envs, {args.steps} env steps, config {args.config}", flush=True)
    # The box is shared: measure the raw env before and after training and use the mean, so a
    # load change during the run shows up as a spread between the two instead of a skewed ratio;
    # the CPU-time figures are the load-independent check.
    raw_before, raw_cpu_before = raw_env_rate(env_id, args.num_envs, args.steps // 2)
    tr = train_rate(cfg)
    raw_after, raw_cpu_after = raw_env_rate(env_id, args.num_envs, args.steps // 2)
    raw, raw_cpu = (raw_before + raw_after) / 2, (raw_cpu_before + raw_cpu_after) / 2
    ratio, ratio_cpu = tr["train_steps_per_s"] / raw, tr["train_steps_per_cpu_s"] / raw_cpu
    print(f"[bench] raw vector env (random actions, fast_reset): {raw:8.0f} env steps/s "
          f"(before training {raw_before:.0f}, after {raw_after:.0f}); {raw_cpu:.0f} per CPU second", flush=True)
    print(f"[bench] training, steady state:                     {tr['train_steps_per_s']:8.0f} env steps/s "
          f"(whole run {args.steps / tr['train_wall_s']:.0f} incl. {tr['first_window_s']:.1f} s first window with "
          f"JAX compile, final eval); {tr['train_steps_per_cpu_s']:.0f} per CPU second", flush=True)
    print(f"[bench] ratio training / raw env:                   {ratio:8.2f}   by CPU time {ratio_cpu:.2f}   "
          f"(goal >= 0.85)", flush=True)
    stock_reset, fast_reset = reset_seconds(env_id, False, 3), reset_seconds(env_id, True, 20)
    stock_rate = raw_env_rate(env_id, 1, 2000, fast_reset=False)[0]  # two 1,000-step episodes, stock resets
    fast_rate = raw_env_rate(env_id, 1, 2000, fast_reset=True)[0]
    print(f"[bench] reset: stock {stock_reset * 1000:7.1f} ms, fast_reset {fast_reset * 1000:6.1f} ms "
          f"({stock_reset / fast_reset:.0f}x)", flush=True)
    print(f"[bench] 1 env incl. episode resets: stock {stock_rate:6.0f} env steps/s, fast_reset {fast_rate:6.0f}",
          flush=True)
    print(f"[bench] reference: {OMNISAFE_REFERENCE}; training here is {tr['train_steps_per_s'] / 330:.1f}x its "
          f"best figure by wall clock, {tr['train_steps_per_cpu_s'] / 330:.1f}x by CPU time (goal >= 3x)", flush=True)
    figures = {"env_id": env_id, "num_envs": args.num_envs, "steps": args.steps, "config": args.config,
               "raw_env_steps_per_s": raw, "raw_before": raw_before, "raw_after": raw_after,
               "raw_env_steps_per_cpu_s": raw_cpu, "ratio_cpu": ratio_cpu, **tr, "ratio": ratio, "reset_stock_s": stock_reset,
               "reset_fast_s": fast_reset, "env_steps_per_s_with_resets_stock": stock_rate,
               "env_steps_per_s_with_resets_fast": fast_rate, "reference": OMNISAFE_REFERENCE}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
