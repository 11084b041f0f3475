"""fast_reset changes what a reset costs, never what the env does: same seed, same trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from safedreamer_sweep.trainer.envs import make_env, make_vector_env


def _trajectory(fast_reset: bool, seed: int = 3, steps: int = 1200, reset_every: int = 400):
    env = make_env("SafetyPointGoal1-v0", fast_reset=fast_reset)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=seed)
    rows, resets = [np.r_[obs, 0.0, 0.0]], 0
    for k in range(1, steps + 1):
        obs, r, c, term, trunc, _ = env.step(rng.uniform(-1, 1, size=env.action_space.shape))
        rows.append(np.r_[obs, r, c])
        if term or trunc or k % reset_every == 0:  # later resets continue the env's own RNG stream
            obs, _ = env.reset()
            rows.append(np.r_[obs, 0.0, 0.0])
            resets += 1
    skybox_width = int(env.unwrapped.task.world.model.tex_width.max())
    env.close()
    return np.stack(rows), resets, skybox_width


def test_fast_reset_gives_identical_trajectories_across_resets():
    stock, resets, stock_tex = _trajectory(fast_reset=False)
    fast, _, fast_tex = _trajectory(fast_reset=True)
    assert resets >= 2
    assert stock_tex > 1000 and fast_tex <= 100  # the skybox really was skipped (and only with fast_reset)
    assert stock.shape == fast.shape
    np.testing.assert_array_equal(stock, fast)  # obs, reward and cost, bit for bit


def test_fast_reset_leaves_other_envs_in_the_process_stock():
    fast = make_env("SafetyPointGoal1-v0", fast_reset=True)
    fast.reset(seed=0)
    stock = make_env("SafetyPointGoal1-v0", fast_reset=False)
    stock.reset(seed=0)
    assert int(stock.unwrapped.task.world.model.tex_width.max()) > 1000


def test_fast_reset_refuses_rendering_envs():
    with pytest.raises(ValueError, match="render"):
        import safety_gymnasium

        from safedreamer_sweep.trainer.envs import FastReset

        FastReset(safety_gymnasium.make("SafetyPointGoal1-v0", render_mode="rgb_array"))


def test_unknown_env_id_names_the_fix():
    with pytest.raises(ValueError, match="SafetyPointGoal1-v0"):
        make_env("SafetyPointGoal9-v7")


def test_vector_env_matches_single_envs_and_reports_finished_episodes():
    venv = make_vector_env("SafetyPointGoal1-v0", 2)
    singles = [make_env("SafetyPointGoal1-v0") for _ in range(2)]
    obs = venv.reset([5, 6])
    single_obs = [e.reset(seed=s)[0] for e, s in zip(singles, (5, 6))]
    np.testing.assert_allclose(obs, np.stack(single_obs).astype(np.float32))
    rng = np.random.default_rng(0)
    totals = np.zeros(2)
    for _ in range(1000):  # Goal1 episodes are truncated at 1000 steps
        a = rng.uniform(-1, 1, size=(2, 2)).astype(np.float32)
        obs, r, c, _, trunc, info = venv.step(a)
        for i, e in enumerate(singles):
            _, r1, c1, *_ = e.step(a[i])
            assert r[i] == r1 and c[i] == c1
            totals[i] += r1
    assert trunc.all() and set(info["final_obs"]) == {0, 1}
    episodes = venv.pop_episodes()
    assert [e[2] for e in episodes] == [1000, 1000]
    np.testing.assert_allclose([e[0] for e in episodes], totals)
    assert venv.pop_episodes() == []
