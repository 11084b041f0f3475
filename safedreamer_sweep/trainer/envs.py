"""Safety-Gymnasium environments for the trainer and the evaluator, with cheap resets.

Safety-Gymnasium 1.0.0 rebuilds its MuJoCo world on every reset (`World.build`): it re-reads
`configs/assets.yaml` and compiles an XML whose skybox names six ~4 MB PNGs, which MuJoCo decodes
into a 3259x3259x6 RGB texture (190 MB) every time: ~1.1 s per reset for 1,000-step episodes.

`fast_reset` removes that cost and nothing else:
- the skybox is only ever seen by a camera. When the env does not render and does not observe
  vision, the decoded skybox is swapped for an 8x8 builtin one right before MuJoCo compiles the XML;
  no body, geom, joint, option or sensor changes, so physics and observations are identical
  (tests/test_envs.py checks obs, reward and cost step for step across resets);
- `configs/assets.yaml` is parsed once per process instead of once per reset.

The switch is per env: the hook in `safety_gymnasium.world` only acts while an env wrapped in
`FastReset` is resetting, so any other env in the same process behaves exactly as stock.

`CLOCK` counts, per process, what building envs and stepping evaluation envs cost (wall and CPU
seconds, env steps): the cell's timeline (tasks/run.py) splits its wall time with it.
"""

from __future__ import annotations

import contextvars
import copy
import os
import time
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium
import numpy as np

_FAST = contextvars.ContextVar("sds_fast_reset", default=False)
_SMALL_SKYBOX = {"@type": "skybox", "@builtin": "gradient", "@width": "8", "@height": "8",
                 "@rgb1": "0.2 0.3 0.4", "@rgb2": "0 0 0"}
_hook_installed = False


def _install_world_hook() -> None:
    """Route `safety_gymnasium.world`'s XML unparse and YAML load through the fast-reset hook (once)."""
    global _hook_installed
    if _hook_installed:
        return
    import xmltodict
    import yaml
    from safety_gymnasium import world

    assets_cache: dict[str, Any] = {}

    def unparse(doc: Any, *args: Any, **kwargs: Any) -> str:
        if _FAST.get():
            asset = doc.get("mujoco", {}).get("asset", {})
            textures = asset.get("texture")
            if isinstance(textures, list) and any(t.get("@type") == "skybox" for t in textures):
                asset["texture"] = [t for t in textures if t.get("@type") != "skybox"] + [dict(_SMALL_SKYBOX)]
        return xmltodict.unparse(doc, *args, **kwargs)

    def load(stream: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(stream, "name", None)
        if not (_FAST.get() and isinstance(name, str) and name.endswith(os.path.join("configs", "assets.yaml"))):
            return yaml.load(stream, *args, **kwargs)
        if name not in assets_cache:
            assets_cache[name] = yaml.load(stream, *args, **kwargs)
        return copy.deepcopy(assets_cache[name])  # World.build appends these dicts into its XML tree

    # world.py uses only xmltodict.parse/unparse and yaml.load/FullLoader from these modules.
    world.xmltodict = types.SimpleNamespace(parse=xmltodict.parse, unparse=unparse)
    world.yaml = types.SimpleNamespace(load=load, FullLoader=yaml.FullLoader)
    _hook_installed = True


class FastReset(gymnasium.Wrapper):
    """Resets without decoding the skybox textures (see the module docstring). Refuses envs that
    render or observe vision, where the skybox is part of what the env returns."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        task = getattr(env.unwrapped, "task", None)
        if env.render_mode is not None or getattr(task, "observe_vision", False):
            raise ValueError(
                f"fast_reset cannot be used with {env.spec.id if env.spec else env}: it renders "
                f"(render_mode={env.render_mode!r}) or observes vision, so the skybox is part of its "
                f"output. Fix: set env.fast_reset=false for rendering envs."
            )
        _install_world_hook()

    def reset(self, **kwargs: Any):
        token = _FAST.set(True)
        try:
            return self.env.reset(**kwargs)
        finally:
            _FAST.reset(token)


@dataclass
class EnvClock:
    """What this process spent on envs outside training rollouts: building them (`make_env`, the
    safety_gymnasium import and VectorEnv's explicit resets included) and stepping/resetting envs
    made one at a time (the
    evaluation envs; VectorEnv's training envs are not counted). Wall and CPU seconds."""

    construct_s: float = 0.0
    construct_cpu_s: float = 0.0
    single_steps: int = 0
    single_s: float = 0.0
    single_cpu_s: float = 0.0
    first_vector_step_at: float | None = None  # epoch time of the first training env step

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)


CLOCK = EnvClock()


class _Clocked(gymnasium.Wrapper):
    """Adds the wall and CPU time of every step and reset of one evaluation env to CLOCK (two clock
    reads a call, ~1 us against ~500 us for a step)."""

    def step(self, action: Any):
        w, c = time.perf_counter(), time.process_time()
        out = self.env.step(action)
        CLOCK.single_s += time.perf_counter() - w
        CLOCK.single_cpu_s += time.process_time() - c
        CLOCK.single_steps += 1
        return out

    def reset(self, **kwargs: Any):
        w, c = time.perf_counter(), time.process_time()
        out = self.env.reset(**kwargs)
        CLOCK.single_s += time.perf_counter() - w
        CLOCK.single_cpu_s += time.process_time() - c
        return out


def make_env(env_id: str, fast_reset: bool = True, **kwargs: Any) -> gymnasium.Env:
    """One Safety-Gymnasium env whose step returns (obs, reward, cost, terminated, truncated, info)."""
    return _Clocked(_make_env(env_id, fast_reset, **kwargs))


def _make_env(env_id: str, fast_reset: bool = True, **kwargs: Any) -> gymnasium.Env:
    w, c = time.perf_counter(), time.process_time()
    import safety_gymnasium

    try:
        env = safety_gymnasium.make(env_id, **kwargs)
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(
            f"env id {env_id!r} could not be made by safety_gymnasium 1.0.0 ({type(e).__name__}: {e}). "
            f"Fix: use a registered id such as SafetyPointGoal1-v0 (env.id / eval.id_env / eval.ood_env)."
        ) from e
    finally:
        CLOCK.construct_s += time.perf_counter() - w
        CLOCK.construct_cpu_s += time.process_time() - c
    return FastReset(env) if fast_reset and kwargs.get("render_mode") is None else env


class VectorEnv:
    """N envs stepped in this process, auto-resetting: on 2 shared cores one process per cell beats
    subprocess workers (no IPC, no fork-after-JAX problem). `step` returns the Safety-Gymnasium
    6-tuple of stacked arrays; `info["final_obs"][i]` holds the last observation of an env whose
    episode ended (its returned obs is already the next episode's first), and `episodes` collects
    (return, cost, length) of every finished episode until `pop_episodes` is called."""

    def __init__(self, env_id: str, num_envs: int, fast_reset: bool = True):
        self.envs = [_make_env(env_id, fast_reset=fast_reset) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self._ret = np.zeros(num_envs)
        self._cost = np.zeros(num_envs)
        self._len = np.zeros(num_envs, dtype=np.int64)
        self.episodes: list[tuple[float, float, int]] = []

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset every env with its own seed; later auto-resets continue each env's own RNG stream."""
        w, c = time.perf_counter(), time.process_time()
        self._ret[:] = 0.0
        self._cost[:] = 0.0
        self._len[:] = 0
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)]).astype(np.float32)
        CLOCK.construct_s += time.perf_counter() - w  # the first reset builds the MuJoCo world
        CLOCK.construct_cpu_s += time.process_time() - c
        return obs

    def step(self, actions: np.ndarray):
        if CLOCK.first_vector_step_at is None:
            CLOCK.first_vector_step_at = time.time()
        obs, rew, cost = [], np.zeros(self.num_envs), np.zeros(self.num_envs)
        term = np.zeros(self.num_envs, dtype=bool)
        trunc = np.zeros(self.num_envs, dtype=bool)
        final_obs: dict[int, np.ndarray] = {}
        for i, env in enumerate(self.envs):
            o, r, c, te, tr, _ = env.step(actions[i])  # type: ignore[misc]  # Safety-Gymnasium's 6-tuple
            rew[i], cost[i], term[i], trunc[i] = r, c, te, tr
            self._ret[i] += r
            self._cost[i] += c
            self._len[i] += 1
            if te or tr:
                final_obs[i] = np.asarray(o, dtype=np.float32)
                self.episodes.append((float(self._ret[i]), float(self._cost[i]), int(self._len[i])))
                self._ret[i] = self._cost[i] = 0.0
                self._len[i] = 0
                o, _ = env.reset()
            obs.append(o)
        return np.stack(obs).astype(np.float32), rew, cost, term, trunc, {"final_obs": final_obs}

    def pop_episodes(self) -> list[tuple[float, float, int]]:
        out, self.episodes = self.episodes, []
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(env_id: str, num_envs: int, fast_reset: bool = True) -> VectorEnv:
    """`num_envs` auto-resetting envs stepped together in this process (see VectorEnv)."""
    if num_envs < 1:
        raise ValueError(f"trainer.num_envs must be >= 1, got {num_envs}. Fix: trainer.num_envs=2")
    return VectorEnv(env_id, num_envs, fast_reset=fast_reset)
