"""A small script that behaves like SafeDreamer's `train.py` on disk, for the external-adapter tests.

What it reproduces (PKU-Alignment/SafeDreamer, embodied/):
- the log directory is `<--logdir><YYYYmmdd-HHMMSS>_<method>_<task>_<seed>`: a fresh timestamped
  directory per invocation, so a resumed run writes a new one;
- `metrics.jsonl` rows `{"step": <env step>, ...}` written on a WALL-CLOCK timer
  (`--run.log_every` seconds, like `embodied.when.Clock`), the step being agent steps times the
  action repeat; with a long period the file is stale for minutes while the run is healthy;
- replay chunks `<logdir>/replay/<time>-<uuid>-<succ>-<len>.npz` every `--fake.chunk` agent steps;
- one `<logdir>/checkpoint.ckpt`: a pickle of {"step": agent steps, "agent": ...}, saved right
  after start (`load_or_save`), every `--run.save_every` seconds and at the end, replaced atomically;
  `--run.from_checkpoint PATH` resumes from it (step counter and weights);
- `--run.script eval_only --run.from_checkpoint PATH`: rolls out episodes and writes
  `episode/score`, `episode/cost`, `episode/length` rows to the new log dir's metrics.jsonl.

Each step does real work (a small recurrent numpy update and a learning rule), paced by a short
sleep, so its progress rate is real. `--fail_at_step N` raises at env step N (a planted error).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pickle
import sys
import time
import uuid
from pathlib import Path

import numpy as np


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=["defaults"])
    p.add_argument("--method", default="fake")
    p.add_argument("--task", default="safetygymcoor_SafetyPointGoal1-v0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="./logdir/")
    p.add_argument("--run.script", dest="script", default="train", choices=["train", "eval_only"])
    p.add_argument("--run.steps", dest="steps", type=float, default=1e4, help="agent steps (not env steps)")
    p.add_argument("--run.log_every", dest="log_every", type=float, default=300.0, help="seconds")
    p.add_argument("--run.save_every", dest="save_every", type=float, default=900.0, help="seconds")
    p.add_argument("--run.from_checkpoint", dest="from_checkpoint", default="")
    p.add_argument("--fake.repeat", dest="repeat", type=int, default=1, help="action repeat: env steps per agent step")
    p.add_argument("--fake.chunk", dest="chunk", type=int, default=64, help="agent steps per replay chunk")
    p.add_argument("--fake.episode_length", dest="episode_length", type=int, default=50)
    p.add_argument("--fake.step_sleep", dest="step_sleep", type=float, default=0.002)
    p.add_argument("--fake.dim", dest="dim", type=int, default=32)
    p.add_argument("--fail_at_step", type=int, default=-1, help="raise at this env step (a planted error)")
    # Two switches that change what it learns, so ablation knobs can reach it (conf/task/external.yaml).
    p.add_argument("--pessimistic", type=_flag, default=False, help="also push the weights away from costly states")
    p.add_argument("--fake.cert", dest="cert", type=_flag, default=False,
                   help="skip the update of a step whose cost exceeds the running cost average")
    return p.parse_args(argv)


def _flag(text: str) -> bool:
    """A boolean flag value as SafeDreamer's flag parser reads it (True/False)."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return text.lower() in ("true", "1")


class Clock:
    """True on the first call, then once every `every` seconds (embodied.when.Clock)."""

    def __init__(self, every: float):
        self.every, self.prev = every, None

    def __call__(self) -> bool:
        t = time.time()
        if self.prev is None or t - self.prev >= self.every:
            self.prev = t
            return True
        return False


def save_checkpoint(path: Path, step: int, weights: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pickle.dumps({"step": step, "agent": {"W": weights}}))
    os.replace(tmp, path)


def save_chunk(replay: Path, data: list[np.ndarray]) -> None:
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"F{now.microsecond:06d}"
    name = f"{stamp}-{uuid.uuid4().hex}-{uuid.UUID(int=0).hex}-{len(data)}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, obs=np.stack(data))
    (replay / name).write_bytes(buf.getvalue())


def rollout_step(w: np.ndarray, x: np.ndarray, rng: np.random.Generator, hazard: float) -> tuple[np.ndarray, float, float]:
    x = np.tanh(w @ x + (0.2 + hazard) * rng.standard_normal(x.shape))
    reward = float(x[: len(x) // 2].mean())
    cost = float(abs(x[-1]) > 0.6 - hazard)
    return x, reward, cost


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    rng = np.random.default_rng(a.seed)
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = Path(f"{a.logdir}{now}_{a.method}_{a.task}_{a.seed}")
    logdir.mkdir(parents=True, exist_ok=True)
    print("Logdir", logdir, flush=True)
    hazard = 0.3 if "Goal2" in a.task else 0.0  # the level-2 layout has more hazards

    step, w = 0, 0.5 * rng.standard_normal((a.dim, a.dim)) / np.sqrt(a.dim)
    if a.from_checkpoint:
        doc = pickle.loads(Path(a.from_checkpoint).read_bytes())
        step, w = int(doc["step"]), doc["agent"]["W"]
        print(f"Resumed from checkpoint {a.from_checkpoint} at step {step * a.repeat}", flush=True)
    elif a.script == "eval_only":
        print("eval_only needs --run.from_checkpoint", file=sys.stderr)
        return 2
    metrics = open(logdir / "metrics.jsonl", "a")  # noqa: SIM115  open for the whole run, like SafeDreamer

    def log(row: dict) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    if a.script == "eval_only":
        x, episodes, ep_ret, ep_cost, ep_len, t = rng.standard_normal(a.dim), 0, 0.0, 0.0, 0, 0
        while t < a.steps:
            x, r, c = rollout_step(w, x, rng, hazard)
            ep_ret, ep_cost, ep_len, t = ep_ret + r, ep_cost + c, ep_len + 1, t + 1
            if ep_len == a.episode_length:
                log({"step": (step + t) * a.repeat, "episode/score": ep_ret, "episode/cost": ep_cost,
                     "episode/length": ep_len * a.repeat})
                print(f"Episode has {ep_len} steps and return {ep_ret:.1f}.", flush=True)
                episodes, ep_ret, ep_cost, ep_len = episodes + 1, 0.0, 0.0, 0
                x = rng.standard_normal(a.dim)
            time.sleep(a.step_sleep)
        return 0

    replay = logdir / "replay"
    replay.mkdir(exist_ok=True)
    ckpt = logdir / "checkpoint.ckpt"
    save_checkpoint(ckpt, step, w)  # load_or_save: the new log dir starts with a checkpoint
    should_log, should_save = Clock(a.log_every), Clock(a.save_every)
    should_save()  # "register that we just saved"
    x, chunk = rng.standard_normal(a.dim), []
    ep_ret = ep_cost = 0.0
    ep_len, last, cost_avg = 0, {}, 0.0
    t0, s0 = time.time(), step
    while step < a.steps:
        x_next, r, c = rollout_step(w, x, rng, hazard)
        # A tiny learning rule so the weights (and the eval) depend on how long it trained.
        update = 1e-3 * np.outer(np.sign(x_next[: a.dim]) * r, x) / a.dim
        if a.pessimistic:
            update -= 1e-3 * c * np.outer(np.sign(x_next), x) / a.dim
        cost_avg = 0.99 * cost_avg + 0.01 * c
        if not (a.cert and c > cost_avg):
            w += update
        x = x_next
        step += 1
        ep_ret, ep_cost, ep_len = ep_ret + r, ep_cost + c, ep_len + 1
        chunk.append(x.astype(np.float32))
        if len(chunk) == a.chunk:
            save_chunk(replay, chunk)
            chunk = []
        if ep_len == a.episode_length:
            last = {"episode/score": ep_ret, "episode/cost": ep_cost, "episode/length": ep_len * a.repeat}
            ep_ret = ep_cost = 0.0
            ep_len = 0
        if 0 <= a.fail_at_step <= step * a.repeat:
            raise RuntimeError(f"planted failure at env step {step * a.repeat}")
        if should_log():
            fps = (step - s0) * a.repeat / max(time.time() - t0, 1e-9)
            log({"step": step * a.repeat, **last, "fps": fps})
        if should_save():
            save_checkpoint(ckpt, step, w)
        time.sleep(a.step_sleep)
    if chunk:
        save_chunk(replay, chunk)
    save_checkpoint(ckpt, step, w)
    log({"step": step * a.repeat, **last})
    print(f"Finished at step {step * a.repeat}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
