"""The trainer's pieces with known answers, determinism, and a real kill + resume on
SafetyPointGoal1-v0 through `python -m safedreamer_sweep`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.trainer import ppo_lag as trainer

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- GAE


def test_gae_matches_a_hand_computed_answer():
    # gamma = lam = 0.5; the episode ends after step 1, so step 1 does not bootstrap from step 2.
    rewards = np.array([[1.0], [0.0], [2.0]])
    values = np.array([[0.5], [1.0], [0.0]])
    dones = np.array([[0.0], [1.0], [0.0]])
    adv, ret = trainer.gae(rewards, values, np.array([3.0]), dones, gamma=0.5, lam=0.5)
    # t=2: 2 + 0.5*3 - 0 = 3.5 | t=1: 0 - 1 = -1 (no carry) | t=0: (1 + 0.5*1 - 0.5) + 0.25*(-1) = 0.75
    np.testing.assert_allclose(adv[:, 0], [0.75, -1.0, 3.5])
    np.testing.assert_allclose(ret[:, 0], [1.25, 0.0, 3.5])


def test_gae_envs_are_independent_columns():
    rng = np.random.default_rng(0)
    r, v, d = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), (rng.random((6, 2)) < 0.3).astype(float)
    last = rng.normal(size=2)
    adv, _ = trainer.gae(r, v, last, d, 0.9, 0.8)
    for i in range(2):
        single, _ = trainer.gae(r[:, i:i + 1], v[:, i:i + 1], last[i:i + 1], d[:, i:i + 1], 0.9, 0.8)
        np.testing.assert_allclose(adv[:, i], single[:, 0])


def test_gae_of_stacked_signals_equals_separate_runs():
    rng = np.random.default_rng(2)
    r, c, v, vc = (rng.normal(size=(8, 2)) for _ in range(4))
    d = (rng.random((8, 2)) < 0.2).astype(float)
    last, last_c = rng.normal(size=2), rng.normal(size=2)
    adv, ret = trainer.gae(np.stack([r, c], -1), np.stack([v, vc], -1), np.stack([last, last_c], -1), d[..., None],
                           np.array([0.99, 0.9]), np.array([0.95, 0.8]))
    a_r, _ = trainer.gae(r, v, last, d, 0.99, 0.95)
    a_c, ret_c = trainer.gae(c, vc, last_c, d, 0.9, 0.8)
    np.testing.assert_allclose(adv[..., 0], a_r)
    np.testing.assert_allclose(adv[..., 1], a_c)
    np.testing.assert_allclose(ret[..., 1], ret_c)


# ----------------------------------------------------------------------------- Lagrange multiplier


def test_lagrange_multiplier_direction_and_floor():
    assert trainer.lagrange_update(1.0, episode_cost=40.0, cost_limit=25.0, lr=0.1) == pytest.approx(2.5)
    assert trainer.lagrange_update(1.0, episode_cost=15.0, cost_limit=25.0, lr=0.05) == pytest.approx(0.5)
    assert trainer.lagrange_update(0.2, episode_cost=0.0, cost_limit=25.0, lr=0.1) == 0.0
    assert trainer.lagrange_update(0.0, episode_cost=25.0, cost_limit=25.0, lr=0.1) == 0.0


# ----------------------------------------------------------------------------- normaliser


def test_running_norm_matches_numpy_on_the_concatenated_data():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) * [1, 10, 0.1, 1] for n in (7, 50, 300)]
    norm = trainer.RunningNorm(4)
    for c in chunks:
        norm.update(c)
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var, data.var(0), rtol=1e-5)
    x = data[:5]
    np.testing.assert_allclose(norm.normalize(x), (x - data.mean(0)) / data.std(0), rtol=1e-4, atol=1e-5)
    restored = trainer.RunningNorm.from_state(norm.state_dict())
    np.testing.assert_array_equal(restored.normalize(x), norm.normalize(x))
    policy = trainer.NumpyPolicy(trainer.init_params(0, 4, 2, [8], 1, -0.5), norm)  # the acting copy
    np.testing.assert_allclose(policy.normalize(x), norm.normalize(x), rtol=1e-5, atol=1e-5)


def test_running_norm_clips_outliers():
    norm = trainer.RunningNorm(1)
    norm.update(np.zeros((100, 1)) + np.linspace(-1, 1, 100)[:, None])
    assert norm.normalize(np.array([[1e6]]))[0, 0] == pytest.approx(10.0)


# ----------------------------------------------------------------------------- certified step


def _actor_batch():
    params = trainer.to_jax(trainer.init_params(0, 6, 2, [16], heads=1, init_log_std=-0.5))
    old = params["actor"]
    new = {"net": [(W + 0.3, b + 0.1) for W, b in old["net"]], "log_std": old["log_std"] + 0.2}
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, 6))
    actions = trainer.mlp(old["net"], obs) + jnp.exp(old["log_std"]) * jax.random.normal(jax.random.PRNGKey(2), (256, 2))
    logp_old = trainer.gaussian_logp(trainer.mlp(old["net"], obs), old["log_std"], actions)
    logp_new = trainer.gaussian_logp(trainer.mlp(new["net"], obs), new["log_std"], actions)
    return old, new, {"obs": obs, "actions": actions, "logp": logp_old}, jnp.exp(logp_new - logp_old) - 1.0


def test_certified_step_reverts_a_step_that_raises_cost_over_the_limit():
    old, new, batch, ratio_minus_1 = _actor_batch()
    # Cost advantage correlated with the new policy's ratio: every fraction of the step raises cost.
    actor, frac = trainer.certify_step(old, new, batch, ratio_minus_1, episode_cost=25.0, episode_length=1000,
                                       cost_limit=25.0, backtrack_steps=3, decay=0.5)
    assert frac == 0.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, actor, old)


def test_certified_step_accepts_a_step_that_lowers_cost():
    old, new, batch, ratio_minus_1 = _actor_batch()
    actor, frac = trainer.certify_step(old, new, batch, -ratio_minus_1, episode_cost=60.0, episode_length=1000,
                                       cost_limit=25.0, backtrack_steps=3, decay=0.5)
    assert frac == 1.0
    jax.tree_util.tree_map(np.testing.assert_allclose, actor, new)


def test_certified_step_backtracks_to_a_fraction_within_budget():
    old, new, batch, ratio_minus_1 = _actor_batch()
    full = 1000 * float(trainer.cost_surrogate(new, batch["obs"], batch["actions"], batch["logp"], ratio_minus_1))
    assert full > 0
    # Budget left is a small share of the full step's estimated cost increase: a shorter step fits.
    _, frac = trainer.certify_step(old, new, batch, ratio_minus_1, episode_cost=25.0 - 0.3 * full,
                                       episode_length=1000, cost_limit=25.0, backtrack_steps=6, decay=0.5)
    assert 0.0 < frac < 1.0


def test_certified_step_ignores_the_mean_of_the_cost_advantage():
    """Shifting A_c by a constant changes nothing: the estimate uses the centred advantage, as the PPO
    loss does (the raw one added mean(A_c) * mean(ratio - 1), unrelated to the step)."""
    old, new, batch, ratio_minus_1 = _actor_batch()
    for shift in (5.0, -5.0):
        a = float(trainer.cost_surrogate(new, batch["obs"], batch["actions"], batch["logp"], ratio_minus_1))
        b = float(trainer.cost_surrogate(new, batch["obs"], batch["actions"], batch["logp"], ratio_minus_1 + shift))
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    full = 1000 * float(trainer.cost_surrogate(new, batch["obs"], batch["actions"], batch["logp"], ratio_minus_1))
    fracs = {trainer.certify_step(old, new, batch, ratio_minus_1 + shift, episode_cost=25.0 - 0.3 * full,
                                  episode_length=1000, cost_limit=25.0, backtrack_steps=6, decay=0.5)[1]
             for shift in (0.0, 3.0, -3.0)}
    assert len(fracs) == 1 and 0.0 < fracs.pop() < 1.0


# ----------------------------------------------------------------------------- u: targets and advantage


def _rollout(heads: int, T: int = 16, N: int = 2, obs_dim: int = 5):
    rng = np.random.default_rng(3)
    p = trainer.init_params(1, obs_dim, 2, [8], heads=heads, init_log_std=-0.5)
    p["cf"][-1] = (rng.normal(size=p["cf"][-1][0].shape).astype(np.float32), rng.normal(size=heads).astype(np.float32))
    done = np.zeros((T, N))
    done[7, 0] = 1.0
    acfg = OmegaConf.create({"gamma": 0.9, "lam": 0.8, "cost_gamma": 0.95, "cost_lam": 0.7})
    return (p, rng.normal(size=(T, N, obs_dim)), rng.normal(size=(N, obs_dim)), rng.normal(size=(T, N)),
            rng.uniform(size=(T, N)), done, [(3, 1)], rng.normal(size=(1, obs_dim)), acfg)


def test_cost_heads_regress_on_their_own_returns_and_only_the_advantage_is_pessimistic():
    *args, acfg = _rollout(heads=5)
    calm = trainer.rollout_targets(*args, acfg, kappa=0.0)
    scared = trainer.rollout_targets(*args, acfg, kappa=3.0)
    assert calm[3].shape == (16, 2, 5)
    np.testing.assert_array_equal(calm[3], scared[3])  # each head's target ignores kappa: no compounding
    assert not np.allclose(calm[2], scared[2])  # the cost advantage carries the pessimism
    assert np.all(scared[4] > 0) and np.all(calm[4] == 0)  # risk = kappa * std over the heads
    np.testing.assert_array_equal(calm[0], scared[0])
    # head k's returns are the GAE returns of the cost with head k's own values
    p, obs, last, _rew, cost, done, _final_at, final_obs = args
    heads = trainer.mlp(p["cf"], obs.reshape(-1, 5)).reshape(16, 2, 5)
    last_h, final_h = trainer.mlp(p["cf"], last), trainer.mlp(p["cf"], final_obs)
    for k in range(5):
        cost_b = cost.copy()
        cost_b[3, 1] += 0.95 * final_h[0, k]
        _, ret = trainer.gae(cost_b, heads[..., k], last_h[:, k], done, 0.95, 0.7)
        np.testing.assert_allclose(calm[3][..., k], ret, rtol=1e-6)


def test_with_one_cost_head_the_targets_are_plain_gae():
    *args, acfg = _rollout(heads=1)
    _, _, adv_c, ret_c, risk = trainer.rollout_targets(*args, acfg, kappa=1.0)
    p, obs, last, _rew, cost, done, _final_at, final_obs = args
    c = trainer.mlp(p["cf"], obs.reshape(-1, 5)).reshape(16, 2)
    cost_b = cost.copy()
    cost_b[3, 1] += 0.95 * trainer.mlp(p["cf"], final_obs)[0, 0]
    adv, ret = trainer.gae(cost_b, c, trainer.mlp(p["cf"], last)[:, 0], done, 0.95, 0.7)
    np.testing.assert_allclose(adv_c, adv, rtol=1e-6)
    np.testing.assert_allclose(ret_c[..., 0], ret, rtol=1e-6)
    assert np.all(risk == 0)


# ----------------------------------------------------------------------------- config checks


def _cfg(**trainer_overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "sweep.yaml")
    return OmegaConf.create({
        "seed": 0,
        "trainer": {**OmegaConf.to_container(cfg.trainer), **trainer_overrides},
        "agent": OmegaConf.load(ROOT / "conf" / "agent" / "ppo_lag.yaml"),
        "env": OmegaConf.load(ROOT / "conf" / "env" / "safety_gym.yaml"),
        "eval": OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml"),
    })


def test_budget_that_is_not_a_multiple_of_the_rollout_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"trainer.total_steps=3000 .*Fix: trainer.total_steps=3072"):
        trainer.check_config(_cfg(total_steps=3000, rollout_steps=1024, num_envs=2))
    with pytest.raises(ValueError, match=r"trainer.num_envs"):
        trainer.check_config(_cfg(rollout_steps=1000, num_envs=3))


def test_cadence_crossing_is_in_env_steps():
    assert trainer.crossed(1024, 2048, 2048)
    assert not trainer.crossed(2048, 3072, 2048)
    assert trainer.crossed(3000, 4100, 4096)


def test_heartbeat_keeps_beating_while_the_loop_is_busy_but_env_step_only_moves_with_the_loop(tmp_path):
    rd = RunDir(tmp_path / "run")
    with trainer.Heartbeat(rd, total_steps=4096, period=0.05) as hb:
        hb.env_step = 1024
        time.sleep(0.3)  # a long update: the thread keeps refreshing progress.json
        first = rd.read_progress()
        time.sleep(0.3)
        second = rd.read_progress()
        assert second["updated_at"] > first["updated_at"]
        assert second["env_step"] == 1024 and second["env_step_moved_at"] == first["env_step_moved_at"]
        hb.env_step = 2048
    final = rd.read_progress()
    assert final["env_step"] == 2048 and final["total_steps"] == 4096 and final["peak_rss_mb"] > 0
    assert final["env_step_moved_at"] > second["env_step_moved_at"]


# ----------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_same_seed_same_config_gives_the_same_training_curve(tmp_path):
    cfg = _cfg(total_steps=1024, num_envs=1, rollout_steps=512, log_every_steps=512, eval_every_steps=1024,
               checkpoint_every_steps=1024)
    cfg.agent.u.enabled = True
    cfg.agent.cert.enabled = True
    cfg.eval.episodes = 1
    timing = {"steps_per_s", "wall_time_s"}
    curves = []
    for name in ("a", "b"):
        rd = RunDir(tmp_path / name)
        assert trainer.train(cfg, rd) == 1024
        curves.append(([{k: v for k, v in r.items() if k not in timing} for r in rd.read_metrics()],
                       rd.read_eval_curve()))
    assert [r["env_step"] for r in curves[0][0]] == [512, 1024]
    assert curves[0] == curves[1]


def _first_checkpoint_then_kill(cmd, env, ckpt_dir_glob, timeout=240.0):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if list(ckpt_dir_glob()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


@pytest.mark.slow
def test_real_cell_killed_after_first_checkpoint_resumes_to_a_complete_run_dir(tmp_path):
    store = tmp_path / "store"
    total, log_every = 8192, 1024
    cmd = [sys.executable, "-m", "safedreamer_sweep", "config=v2_full", "seed=0", f"store.root={store}",
           f"trainer.total_steps={total}", "trainer.num_envs=2", "trainer.rollout_steps=1024",
           f"trainer.log_every_steps={log_every}", "trainer.checkpoint_every_steps=2048",
           "trainer.eval_every_steps=4096", "trainer.eval_curve_episodes=1", "eval.episodes=1",
           "trainer.heartbeat_every_s=0.5", "hydra/launcher=basic"]
    env = {**os.environ, "SDS_STORE": str(store)}

    def ckpts():
        return store.glob("runs/v2_full/seed_0/*/checkpoints/ckpt_*.pkl")

    code, out = _first_checkpoint_then_kill(cmd, env, ckpts)
    assert code == -signal.SIGKILL, f"the cell ended before it could be killed (exit {code}):\n{out[-3000:]}"
    (run_path,) = store.glob("runs/v2_full/seed_0/*")
    rd = RunDir(run_path)
    killed_at = [s for s, _ in rd.checkpoints()]
    assert killed_at and max(killed_at) < total
    assert rd.read_state()["phase"] == "running"  # killed: no end marker, the supervisor's job

    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming {run_path} from checkpoint step {max(killed_at)}" in done.stdout

    for name in ("spec.json", "state.json", "progress.json", "metrics.jsonl", "eval_curve.jsonl",
                 "eval/id.json", "eval/ood.json"):
        assert (run_path / name).is_file(), name
    state = rd.read_state()
    assert state["phase"] == "done" and state["trained"] and state["trained_steps"] == total
    assert [a.get("outcome") for a in state["attempts"]][-1] == "done" and len(state["attempts"]) == 2
    progress = json.loads((run_path / "progress.json").read_text())
    assert progress["env_step"] == total and progress["total_steps"] == total and progress["steps_per_s"] > 0
    steps = [r["env_step"] for r in rd.read_metrics()]
    assert steps == list(range(log_every, total + 1, log_every)), steps  # no gap, no duplicate
    assert [r["env_step"] for r in rd.read_eval_curve()] == [4096, 8192]
    assert max(s for s, _ in rd.checkpoints()) == total
    for kind in ("id", "ood"):
        ev = rd.read_eval(kind)
        assert ev["checkpoint_step"] == total and len(ev["episodes"]) == 1
        assert {"return_mean", "cost_mean", "violation_rate"} <= set(ev["summary"])
    assert "ood_proxy" in rd.read_eval("ood")
