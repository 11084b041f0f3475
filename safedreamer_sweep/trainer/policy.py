"""The policy as the trainer's rollouts and the evaluator act with it: the MLP (one function for
jax and numpy arrays), a numpy copy of the networks (`NumpyPolicy`, ~10x cheaper per call than a
jitted JAX call) and the observation normaliser. Both the trainer and evaluation import it; it
imports neither."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def mlp(layers, x):
    """The same function for jax and numpy arrays (tanh hidden layers, linear output)."""
    xp = jnp if isinstance(x, jax.Array) else np
    for W, b in layers[:-1]:
        x = xp.tanh(x @ W + b)
    W, b = layers[-1]
    return x @ W + b


def to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: np.asarray(a), jax.device_get(tree))


def to_jax(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.asarray, tree)


class NumpyPolicy:
    """The actor (and critics) in numpy for acting: ~10x cheaper per call than a jitted JAX call."""

    def __init__(self, params: dict, normalizer: RunningNorm | None, kappa: float = 0.0):
        self.p = to_numpy(params)
        self.kappa = kappa
        # The normaliser is frozen for this policy's lifetime: precompute it once for the hot loop.
        # Without a normaliser: identity (mean 0, scale 1, no clip).
        norm = normalizer
        self.obs_mean = norm.mean.astype(np.float32) if norm is not None else np.float32(0.0)
        self.obs_scale = (1.0 / np.sqrt(norm.var + 1e-8)).astype(np.float32) if norm is not None else np.float32(1.0)
        self.clip = float(norm.clip) if norm is not None else np.inf

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        return np.clip((obs - self.obs_mean) * self.obs_scale, -self.clip, self.clip)

    def mean_action(self, obs_n: np.ndarray) -> np.ndarray:
        return mlp(self.p["actor"]["net"], obs_n)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action (the mean) for raw observations, clipped to the action box."""
        return np.clip(self.mean_action(self.normalize(obs)), -1.0, 1.0)

    def values(self, obs_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reward value, cost value used for the advantage (mean + kappa * std of the heads), and
        kappa * std (the risk penalty), for normalised observations."""
        v = mlp(self.p["vf"], obs_n)[..., 0]
        heads = mlp(self.p["cf"], obs_n)
        risk = self.kappa * heads.std(axis=-1) if heads.shape[-1] > 1 else np.zeros_like(v)
        return v, heads.mean(axis=-1) + risk, risk


# ----------------------------------------------------------------------------- observation normaliser


class RunningNorm:
    """Running mean and variance of observations (parallel Welford merge of whole batches)."""

    def __init__(self, dim: int, clip: float = 10.0):
        self.mean = np.zeros(dim, np.float64)
        self.var = np.ones(dim, np.float64)
        self.count = 1e-4
        self.clip = clip

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, np.float64).reshape(-1, self.mean.shape[0])
        b_mean, b_var, b_n = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = b_mean - self.mean, self.count + b_n
        self.mean = self.mean + delta * b_n / total
        self.var = (self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total) / total
        self.count = total

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        out = (obs - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    @classmethod
    def from_state(cls, state: dict) -> RunningNorm:
        norm = cls(len(state["mean"]))
        norm.mean, norm.var, norm.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])
        return norm
