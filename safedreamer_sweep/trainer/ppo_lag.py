"""PPO-Lagrangian in JAX on Safety-Gymnasium, read top to bottom: networks, observation
normaliser, GAE, Lagrange multiplier, loss and update, then `train` (the loop). `env_step` is
the only clock; every cadence (log, checkpoint, eval) is in env steps.

Where time goes: a jitted JAX call costs ~0.2 ms whatever its size, stepping the env ~0.5 ms. So
rollouts act with a numpy copy of the networks (refreshed after each update) and compute values
for GAE in numpy too; JAX runs once per update: all epochs and minibatches in one jitted call.

The two ablation knobs (conf/agent/ppo_lag.yaml documents them as implemented here):
- `u`: the cost critic has K heads, each trained on its own bootstrap mask of the batch to the
  GAE returns bootstrapped from its own values (so pessimism never compounds through the targets);
  only the cost advantage uses the pessimistic value mean + kappa * std over the heads
  (`risk_penalty` logs the batch mean of kappa * std).
- `cert`: after each update, the episode cost of the new policy is estimated from the cost
  surrogate on the centred cost advantage (as in the PPO loss); if it would exceed the limit while
  increasing, the actor step is backtracked.

A metrics row holds the mean over the updates of its logging window (losses, approx_kl,
risk_penalty, cert_step_frac; `updates` says how many), the multiplier as it stands at the row.
"""

from __future__ import annotations

import itertools
import math
import resource
import sys
import threading
import time
from collections import deque
from functools import partial
from typing import Any

# The PPO update takes seconds to compile; a cell keeps its compiled programs in the store
# (tasks/run.py: use_store_jax_cache, set before jax is imported). Not set here: an import must not
# change the environment that every later child process of the importer inherits.
import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import DictConfig

from safedreamer_sweep.core.store import RunDir
from safedreamer_sweep.trainer.budget import (
    check_config,  # jax-free: the planner runs it too
)
from safedreamer_sweep.trainer.envs import make_env, make_vector_env
from safedreamer_sweep.trainer.evaluate import run_episodes
from safedreamer_sweep.trainer.policy import (
    NumpyPolicy,
    RunningNorm,
    mlp,
    to_jax,
    to_numpy,
)

CHECKPOINT_VERSION = 1
LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- networks
# params: {"actor": {"net": [(W, b), ...], "log_std": [act_dim]}, "vf": [(W, b), ...], "cf": [(W, b), ...]}
# cf's last layer has K outputs (the cost-value heads; K = 1 without `u`).


def init_mlp(rng: np.random.Generator, sizes: list[int], out_scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Orthogonal init (gain sqrt 2 on hidden layers, `out_scale` on the last), zero biases. In
    numpy: it runs once, and jitting QR costs seconds of compile for nothing."""
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        gain = out_scale if i == len(sizes) - 2 else math.sqrt(2.0)
        q, r = np.linalg.qr(rng.standard_normal((max(n_in, n_out), min(n_in, n_out))))
        q = q * np.sign(np.diag(r))  # a uniformly distributed orthogonal matrix
        W = q if n_in >= n_out else q.T
        layers.append(((gain * W).astype(np.float32), np.zeros(n_out, np.float32)))
    return layers


def init_params(seed: int, obs_dim: int, act_dim: int, hidden: list[int], heads: int, init_log_std: float) -> dict:
    """Initial parameters (numpy arrays) of the actor, the reward critic and the K-head cost critic."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4]))
    return {
        "actor": {"net": init_mlp(rng, [obs_dim, *hidden, act_dim], 0.01),
                  "log_std": np.full(act_dim, init_log_std, np.float32)},
        "vf": init_mlp(rng, [obs_dim, *hidden, 1], 1.0),
        "cf": init_mlp(rng, [obs_dim, *hidden, heads], 1.0),
    }


def gaussian_logp(mean, log_std, actions):
    """Log-density of `actions` under a diagonal Gaussian (summed over action dimensions)."""
    return jnp.sum(-0.5 * ((actions - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * LOG_2PI, axis=-1)


# ----------------------------------------------------------------------------- GAE


def gae(rewards: np.ndarray, values: np.ndarray, last_values: np.ndarray, dones: np.ndarray,
        gamma: float | np.ndarray, lam: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation over a [T, N, ...] rollout (trailing axes broadcast against
    `gamma` and `lam`, so reward and cost can go through together). `dones[t]` means the episode ended
    after step t (no bootstrap across it; a truncated step's reward already holds gamma * V(final
    obs)). `last_values` [N] bootstraps the step after the rollout. Returns (advantages, returns)."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards, dtype=np.float64)
    next_adv = np.zeros(rewards.shape[1:])
    next_value = last_values
    for t in reversed(range(T)):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + values


# ----------------------------------------------------------------------------- Lagrange multiplier


def lagrange_update(multiplier: float, episode_cost: float, cost_limit: float, lr: float) -> float:
    """Projected gradient ascent on the dual: grows while the measured episode cost is above the
    limit, shrinks below it, never negative."""
    return max(0.0, multiplier + lr * (episode_cost - cost_limit))


# ----------------------------------------------------------------------------- loss and update


def make_optimizer(lr: float, max_grad_norm: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))


NETS = ("actor", "vf", "cf")


def ppo_loss(params: dict, mb: dict, clip: float, ent_coef: float):
    mean = mlp(params["actor"]["net"], mb["obs"])
    log_std = params["actor"]["log_std"]
    logp = gaussian_logp(mean, log_std, mb["actions"])
    log_ratio = logp - mb["logp"]
    ratio = jnp.exp(log_ratio)
    adv = mb["adv"]
    policy_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv))
    entropy = jnp.sum(log_std + 0.5 * (LOG_2PI + 1.0))
    value_loss = 0.5 * jnp.mean((mlp(params["vf"], mb["obs"])[:, 0] - mb["ret"]) ** 2)
    heads = mlp(params["cf"], mb["obs"])  # [B, K], each head on its bootstrap mask, to its own returns [B, K]
    cost_value_loss = 0.5 * jnp.sum(mb["mask"] * (heads - mb["cret"]) ** 2) / jnp.maximum(mb["mask"].sum(), 1.0)
    total = policy_loss - ent_coef * entropy + value_loss + cost_value_loss
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)
    return total, {"policy_loss": policy_loss, "value_loss": value_loss, "cost_value_loss": cost_value_loss,
                   "entropy": entropy, "approx_kl": approx_kl}


@partial(jax.jit, static_argnames=("tx", "epochs", "minibatches", "clip", "ent_coef"))
def ppo_update(params, opt_state, batch, key, *, tx, epochs, minibatches, clip, ent_coef):
    """All epochs x minibatches of one PPO update in one compiled call. Each network has its own
    gradient clipping and Adam state, so the large cost-value gradients cannot crowd out the actor's."""
    n = batch["obs"].shape[0]
    heads = params["cf"][-1][1].shape[0]
    key, k_mask = jax.random.split(key)
    mask = jax.random.bernoulli(k_mask, 0.5, (n, heads)).astype(jnp.float32) if heads > 1 else jnp.ones((n, 1))
    batch = {**batch, "mask": mask}

    def minibatch_step(carry, idx):
        params, opt_state = carry
        mb = jax.tree_util.tree_map(lambda x: x[idx], batch)
        grads, stats = jax.grad(ppo_loss, has_aux=True)(params, mb, clip, ent_coef)
        new_params, new_state = {}, {}
        for name in NETS:
            updates, new_state[name] = tx.update(grads[name], opt_state[name], params[name])
            new_params[name] = optax.apply_updates(params[name], updates)
        return (new_params, new_state), stats

    def epoch(carry, k):
        perm = jax.random.permutation(k, n).reshape(minibatches, -1)
        return jax.lax.scan(minibatch_step, carry, perm)

    (params, opt_state), stats = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params, opt_state, jax.tree_util.tree_map(jnp.mean, stats)


@jax.jit
def actor_logp(actor, obs, actions):
    return gaussian_logp(mlp(actor["net"], obs), actor["log_std"], actions)


def cost_surrogate(actor, obs, actions, logp_old, cost_adv):
    """E_old[(ratio - 1) * (A_c - mean A_c)]: the first-order change in per-step cost advantage of
    moving from the rollout policy to `actor` (zero at the rollout policy itself). Centred, as the
    PPO loss uses A_c: with the raw advantage, mean(A_c) * mean(ratio - 1) would add a term that
    has nothing to do with the step."""
    centred = cost_adv - jnp.mean(cost_adv)
    return jnp.mean((jnp.exp(actor_logp(actor, obs, actions) - logp_old) - 1.0) * centred)


@jax.jit
def interpolate(old_actor, new_actor, frac):
    """The actor `frac` of the way from `old_actor` to `new_actor`."""
    return jax.tree_util.tree_map(lambda o, n: o + frac * (n - o), old_actor, new_actor)


@jax.jit
def step_fraction_costs(old_actor, new_actor, fracs, obs, actions, logp_old, cost_adv):
    """The cost surrogate of every candidate step fraction in one call (the line search's trials)."""
    return jax.vmap(lambda f: cost_surrogate(interpolate(old_actor, new_actor, f), obs, actions, logp_old,
                                             cost_adv))(fracs)


def certify_step(old_actor, new_actor, batch, cost_adv, episode_cost, episode_length, cost_limit,
                 backtrack_steps, decay) -> tuple[dict, float]:
    """CPO-style line search on the actor step. Estimated episode cost of a candidate:
    J_c(old) + L * E_old[(ratio - 1) * A_c] (measured mean episode cost and length). The first of
    the fractions 1, decay, decay^2, ... (`backtrack_steps` shrinks) whose estimate is within the
    limit or does not increase is taken, else the step is reverted. Returns (actor, fraction)."""
    fracs = np.float32(decay) ** np.arange(backtrack_steps + 1, dtype=np.float32)
    deltas = episode_length * np.asarray(step_fraction_costs(old_actor, new_actor, jnp.asarray(fracs), batch["obs"],
                                                             batch["actions"], batch["logp"], cost_adv))
    for frac, delta in zip(fracs, deltas):
        if episode_cost + delta <= cost_limit or delta <= 0.0:
            return (new_actor if frac == 1.0 else interpolate(old_actor, new_actor, jnp.float32(frac))), float(frac)
    return old_actor, 0.0


# ----------------------------------------------------------------------------- critics on a rollout


def critic_values(p: dict, obs_n: np.ndarray, kappa: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For normalised observations [B, obs] and numpy parameters `p`: the reward value [B], the cost
    signals [B, K + 1] (the K cost heads, then the pessimistic cost value mean + kappa * std over
    the heads, which is the mean when K = 1), and kappa * std [B] (the risk penalty)."""
    v = mlp(p["vf"], obs_n)[..., 0]
    heads = mlp(p["cf"], obs_n)
    risk = kappa * heads.std(axis=-1) if heads.shape[-1] > 1 else np.zeros_like(v)
    return v, np.concatenate([heads, (heads.mean(axis=-1) + risk)[..., None]], axis=-1), risk


def rollout_targets(p: dict, obs_n: np.ndarray, last_obs_n: np.ndarray, rew: np.ndarray, cost: np.ndarray,
                    done: np.ndarray, final_at: list[tuple[int, int]], final_obs_n: np.ndarray, acfg: Any,
                    kappa: float) -> tuple[np.ndarray, ...]:
    """GAE advantages and returns of a [T, N] rollout, in one pass over [reward, cost head 1..K,
    pessimistic cost]: each cost head's returns bootstrap from that head's own values (its
    regression target, so pessimism never compounds through the targets); only the cost advantage
    uses the pessimistic value. A truncated step (t, i) in `final_at` adds gamma * V(its final obs,
    row of `final_obs_n`) to its reward and cost. Returns (adv_r [T, N], ret_r [T, N], adv_c [T, N],
    ret_c [T, N, K], risk [T * N])."""
    T, N = rew.shape
    v, c, risk = critic_values(p, obs_n.reshape(T * N, -1), kappa)
    k1 = c.shape[-1]  # K + 1
    v, c = v.reshape(T, N), c.reshape(T, N, k1)
    last_v, last_c, _ = critic_values(p, last_obs_n, kappa)
    rew_b, cost_b = rew.astype(np.float64), np.repeat(cost[..., None], k1, axis=-1).astype(np.float64)
    if final_at:
        fv, fc, _ = critic_values(p, final_obs_n, kappa)
        for j, (t, i) in enumerate(final_at):
            rew_b[t, i] += float(acfg.gamma) * fv[j]
            cost_b[t, i] += float(acfg.cost_gamma) * fc[j]
    adv, ret = gae(np.concatenate([rew_b[..., None], cost_b], -1), np.concatenate([v[..., None], c], -1),
                   np.concatenate([last_v[..., None], last_c], -1), done[..., None],
                   np.array([acfg.gamma] + [acfg.cost_gamma] * k1, float),
                   np.array([acfg.lam] + [acfg.cost_lam] * k1, float))
    return adv[..., 0], ret[..., 0], adv[..., -1], ret[..., 1:-1], risk


class Window:
    """The per-update statistics of one logging window; a metrics row holds their mean."""

    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = list(rows or [])

    def add(self, stats: dict) -> None:
        self.rows.append(dict(stats))

    def means(self) -> dict:
        keys = self.rows[0].keys() if self.rows else ()
        return {k: float(np.mean([r[k] for r in self.rows])) for k in keys} | {"updates": len(self.rows)}


# ----------------------------------------------------------------------------- the loop


def crossed(prev_step: int, step: int, every: int) -> bool:
    """True when an every-`every`-env-steps cadence falls in (prev_step, step]."""
    return every > 0 and step // every > prev_step // every


def env_seeds(seed: int, env_step: int, n: int) -> list[int]:
    """Training env seeds: a function of (cell seed, env step at which the envs were (re)started)."""
    return [int(s) for s in np.random.SeedSequence([seed, 0, env_step]).generate_state(n)]


class Heartbeat:
    """Rewrites progress.json every `period` s from a thread, so it keeps beating through long
    updates; it reports the loop's env_step, so a hung loop shows as an env_step that stops moving."""

    def __init__(self, run: RunDir, total_steps: int, period: float):
        self.run, self.total, self.period = run, total_steps, period
        self.env_step, self.steps_per_s = 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sds-heartbeat", daemon=True)

    def beat(self) -> None:
        try:
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            self.run.heartbeat(self.env_step, self.total, steps_per_s=round(self.steps_per_s, 1),
                               peak_rss_mb=round(rss_mb, 1))
        except OSError as e:  # a full disk must not kill training; status will show a stale heartbeat
            print(f"[train] heartbeat to {self.run.progress_path} failed: {e}", file=sys.stderr, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.beat()

    def __enter__(self) -> Heartbeat:  # noqa: PYI034
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.beat()


def train(cfg: DictConfig, run: RunDir) -> int:
    """Train to `cfg.trainer.total_steps` env steps, resuming from the newest valid checkpoint.
    Returns the final env step."""
    check_config(cfg)
    tcfg, acfg = cfg.trainer, cfg.agent
    total, n_envs = int(tcfg.total_steps), int(tcfg.num_envs)
    T = int(tcfg.rollout_steps) // n_envs
    heads = int(acfg.u.ensemble) if acfg.u.enabled else 1
    kappa = float(acfg.u.kappa) if acfg.u.enabled else 0.0
    cost_limit = float(acfg.lagrangian.cost_limit)
    log = partial(print, flush=True)

    envs = make_vector_env(cfg.env.id, n_envs, fast_reset=bool(cfg.env.fast_reset))
    obs_dim = int(np.prod(envs.single_observation_space.shape or ()))
    act_dim = int(np.prod(envs.single_action_space.shape or ()))
    tx = make_optimizer(float(acfg.lr), float(acfg.max_grad_norm))

    resumed = run.latest_checkpoint(log=lambda m: log(f"[train] {m}"))
    if resumed is None:
        env_step = 0
        key = jax.random.PRNGKey(int(cfg.seed))
        params = to_jax(init_params(int(cfg.seed), obs_dim, act_dim, list(acfg.hidden), heads, float(acfg.init_log_std)))
        opt_state = {name: tx.init(params[name]) for name in NETS}
        norm = RunningNorm(obs_dim)
        multiplier = float(acfg.lagrangian.init)
        recent: deque[tuple[float, float, int]] = deque(maxlen=10)  # last finished episodes: (return, cost, length)
        episodes = 0
        np_rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 1]))
        wall_before = 0.0
        window, window_eps = Window(), []
    else:
        env_step, ck = resumed
        if (ck.get("obs_dim"), ck.get("act_dim"), ck.get("heads")) != (obs_dim, act_dim, heads):
            raise ValueError(
                f"{run.checkpoints_dir}: checkpoint step {env_step} has obs/act dims and cost heads "
                f"{(ck.get('obs_dim'), ck.get('act_dim'), ck.get('heads'))}, this config needs "
                f"{(obs_dim, act_dim, heads)}. Fix: run this config in a fresh run directory.")
        key = jnp.asarray(ck["rng"]["jax_key"])
        params, opt_state = to_jax(ck["params"]), to_jax(ck["opt_state"])
        norm = RunningNorm.from_state(ck["normalizer"])
        multiplier = float(ck["lagrange"]["multiplier"])
        recent = deque(ck["recent_episodes"], maxlen=10)
        episodes = int(ck["episodes"])
        np_rng = np.random.default_rng()
        np_rng.bit_generator.state = ck["rng"]["numpy"]
        wall_before = float(ck.get("wall_time_s", 0.0))
        # a checkpoint inside a logging window keeps the window's updates and episodes
        window, window_eps = Window(ck.get("window_updates")), list(ck.get("window_episodes", []))
        log(f"[train] resuming {run.path} from checkpoint step {env_step}")
    run.truncate_curves_after(env_step)  # rows past the checkpoint are re-logged: no gap, no duplicate

    def checkpoint(step: int) -> None:
        run.save_checkpoint(step, {
            "version": CHECKPOINT_VERSION, "env_step": step, "obs_dim": obs_dim, "act_dim": act_dim,
            "heads": heads, "params": to_numpy(params), "opt_state": to_numpy(opt_state),
            "normalizer": norm.state_dict(), "lagrange": {"multiplier": multiplier, "cost_limit": cost_limit},
            "recent_episodes": list(recent), "episodes": episodes,
            "rng": {"jax_key": np.asarray(key), "numpy": np_rng.bit_generator.state},
            "window_updates": window.rows, "window_episodes": window_eps,
            "wall_time_s": wall_before + time.time() - t_start,
        }, keep=int(tcfg.keep_checkpoints))

    if env_step >= total:
        envs.close()
        return env_step

    eval_env = make_env(cfg.eval.id_env, fast_reset=bool(cfg.env.fast_reset))
    obs = envs.reset(env_seeds(int(cfg.seed), env_step, n_envs))
    buf_obs = np.zeros((T, n_envs, obs_dim), np.float32)
    buf_raw = np.zeros((T, n_envs, obs_dim), np.float32)
    buf_act = np.zeros((T, n_envs, act_dim), np.float32)
    buf_rew, buf_cost, buf_done = (np.zeros((T, n_envs)) for _ in range(3))
    t_start = time.time()
    start_step = env_step
    window_step, window_t = env_step, t_start  # the current logging window
    hb = Heartbeat(run, total, float(tcfg.heartbeat_every_s))
    hb.env_step = env_step
    log(f"[train] {cfg.env.id} x{n_envs}, {total} env steps, rollout {T * n_envs}, heads {heads}, "
        f"cert {bool(acfg.cert.enabled)}, starting at step {env_step}")
    with hb:
        while env_step < total:
            # --- collect a rollout with the numpy copy of the policy (normaliser frozen within it)
            policy = NumpyPolicy(params, norm if acfg.obs_norm else None, kappa)
            std = np.exp(policy.p["actor"]["log_std"])
            finals: list[tuple[int, int, np.ndarray]] = []  # (t, env, final obs) of truncated episodes
            for t in range(T):
                obs_n = policy.normalize(obs)
                action = policy.mean_action(obs_n) + std * np_rng.standard_normal((n_envs, act_dim), np.float32)
                next_obs, rew, cost, term, trunc, info = envs.step(np.clip(action, -1.0, 1.0))
                buf_obs[t], buf_raw[t], buf_act[t] = obs_n, obs, action
                buf_rew[t], buf_cost[t], buf_done[t] = rew, cost, term | trunc
                for i, fo in info["final_obs"].items():
                    if trunc[i] and not term[i]:
                        finals.append((t, i, fo))
                obs = next_obs
                env_step += n_envs
                hb.env_step = env_step
            finished = envs.pop_episodes()
            episodes += len(finished)
            recent.extend(finished)
            window_eps.extend(finished)

            # --- advantages and returns (truncated episodes bootstrap from their final obs)
            flat = buf_obs.reshape(T * n_envs, obs_dim)
            final_obs = policy.normalize(np.stack([f[2] for f in finals])) if finals else np.zeros((0, obs_dim))
            adv_r, ret_r, adv_c, ret_c, risk = rollout_targets(
                policy.p, buf_obs, policy.normalize(obs), buf_rew, buf_cost, buf_done,
                [(t, i) for t, i, _ in finals], final_obs, acfg, kappa)

            # --- Lagrange multiplier from the episode costs measured in this rollout
            if finished:
                multiplier = lagrange_update(multiplier, float(np.mean([e[1] for e in finished])), cost_limit,
                                             float(acfg.lagrangian.lr))
            a_r = (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8)
            a_c = adv_c - adv_c.mean()
            batch = {
                "obs": flat, "actions": buf_act.reshape(T * n_envs, act_dim),
                "adv": ((a_r - multiplier * a_c) / (1.0 + multiplier)).reshape(-1).astype(np.float32),
                "ret": ret_r.reshape(-1).astype(np.float32), "cret": ret_c.reshape(-1, heads).astype(np.float32),
            }
            batch = to_jax(batch)
            old_actor = params["actor"]
            batch["logp"] = actor_logp(old_actor, batch["obs"], batch["actions"])

            # --- PPO update (one jitted call), then the certified step if enabled
            key, k_upd = jax.random.split(key)
            params, opt_state, stats = ppo_update(params, opt_state, batch, k_upd, tx=tx,
                                                  epochs=int(acfg.update_epochs), minibatches=int(acfg.minibatches),
                                                  clip=float(acfg.clip), ent_coef=float(acfg.ent_coef))
            step_frac = 1.0
            if acfg.cert.enabled and recent:
                actor, step_frac = certify_step(  # on the centred cost advantage, as the PPO loss uses it
                    old_actor, params["actor"], batch, jnp.asarray(a_c.reshape(-1), jnp.float32),
                    float(np.mean([e[1] for e in recent])), float(np.mean([e[2] for e in recent])), cost_limit,
                    int(acfg.cert.backtrack_steps), float(acfg.cert.decay))
                params = {**params, "actor": actor}
            if acfg.obs_norm:
                norm.update(buf_raw.reshape(-1, obs_dim))
            stats = {k: float(x) for k, x in jax.device_get(stats).items()}
            if not all(math.isfinite(x) for x in stats.values()):
                raise FloatingPointError(f"non-finite loss at env step {env_step}: {stats}. Fix: lower agent.lr "
                                         f"or check the env's observations for NaN")
            window.add({**stats, "risk_penalty": float(np.mean(risk)), "cert_step_frac": step_frac})

            # --- cadences in env steps: log, periodic eval, checkpoint
            now = time.time()
            hb.steps_per_s = (env_step - start_step) / max(now - t_start, 1e-9)
            prev = env_step - T * n_envs
            if crossed(prev, env_step, int(tcfg.log_every_steps)) or env_step >= total:
                ep = np.array(window_eps, float).reshape(-1, 3)  # (return, cost, length) rows
                mean = [float(x) for x in ep.mean(0)] if len(ep) else [None] * 3
                row = {"env_step": env_step, "episode_return": mean[0], "episode_cost": mean[1],
                       "episode_length": mean[2], "episodes": episodes, "lagrange_multiplier": multiplier,
                       **window.means(),  # means over the window's updates
                       "steps_per_s": (env_step - window_step) / max(now - window_t, 1e-9),
                       "wall_time_s": wall_before + now - t_start}
                run.append_metrics(row)
                fmt = (lambda x: "-" if x is None else f"{x:.2f}")
                log(f"[train] step {env_step}/{total} return {fmt(row['episode_return'])} cost "
                    f"{fmt(row['episode_cost'])} lagrange {multiplier:.3f} kl {row['approx_kl']:.4f} "
                    f"risk {row['risk_penalty']:.3f} cert {row['cert_step_frac']:.2f} {row['steps_per_s']:.0f} steps/s")
                window_step, window_t, window_eps, window = env_step, now, [], Window()
            if crossed(prev, env_step, int(tcfg.eval_every_steps)) or env_step >= total:
                eval_policy = NumpyPolicy(params, norm if acfg.obs_norm else None)
                seeds = [int(s) for s in np.random.SeedSequence([int(cfg.seed), 2, env_step]).generate_state(
                    int(tcfg.eval_curve_episodes))]
                eps = run_episodes(eval_env, eval_policy.act, seeds)
                run.append_metrics({"env_step": env_step, "return_mean": float(np.mean([e["return"] for e in eps])),
                                    "cost_mean": float(np.mean([e["cost"] for e in eps])), "episodes": len(eps)},
                                   run.eval_curve_path)
            if crossed(prev, env_step, int(tcfg.checkpoint_every_steps)) or env_step >= total:
                checkpoint(env_step)
    envs.close()
    eval_env.close()
    log(f"[train] done: {env_step} env steps in {time.time() - t_start:.1f} s")
    return env_step
