"""A small Hydra app that is not RL and knows nothing of the launcher: it fits a line y = 3x - 1 to
noisy points by gradient descent, checkpoints every `checkpoint_every` steps into its cell's stable
run directory, resumes from the newest checkpoint, beats a heartbeat, and returns the final loss
(the value a sweeper such as Optuna minimizes).

    python examples/any_app/app.py -m hydra/launcher=sds_local lr=0.01,0.1 seed=0,1

Outside the sds launchers `${sds_run_dir:}` is the current directory, so it runs anywhere.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import safedreamer_sweep


def data(seed: int, n: int = 64) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    xs = [rng.uniform(-1, 1) for _ in range(n)]
    return [(x, 3.0 * x - 1.0 + rng.gauss(0, 0.1)) for x in xs]


def loss_and_grad(w: float, b: float, points: list[tuple[float, float]]) -> tuple[float, float, float]:
    n = len(points)
    errs = [(w * x + b - y, x) for x, y in points]
    loss = sum(e * e for e, _ in errs) / n
    return loss, sum(2 * e * x for e, x in errs) / n, sum(2 * e for e, _ in errs) / n


def save(ckpt_dir: Path, step: int, state: dict) -> None:
    """One checkpoint file per step, written atomically (a kill leaves the previous one whole)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".step_{step:08d}.json.tmp"
    tmp.write_text(json.dumps({"step": step, **state}))
    os.replace(tmp, ckpt_dir / f"step_{step:08d}.json")


def newest(ckpt_dir: Path) -> dict | None:
    files = sorted(ckpt_dir.glob("step_*.json")) if ckpt_dir.is_dir() else []
    return json.loads(files[-1].read_text()) if files else None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    ckpt_dir = Path(cfg.ckpt_dir)
    points = data(cfg.seed)
    start = newest(ckpt_dir) or {"step": 0, "w": 0.0, "b": 0.0}
    if start["step"]:
        print(f"resuming from step {start['step']} ({ckpt_dir})", flush=True)
    w, b, loss = start["w"], start["b"], float("nan")
    for step in range(start["step"] + 1, cfg.steps + 1):
        if step == cfg.fail_at:
            raise RuntimeError(f"planted failure at step {step} (fail_at={cfg.fail_at})")
        loss, gw, gb = loss_and_grad(w, b, points)
        w, b = w - cfg.lr * gw, b - cfg.lr * gb
        safedreamer_sweep.heartbeat(step, total=cfg.steps, loss=loss)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(ckpt_dir, step, {"w": w, "b": b, "loss": loss})
        time.sleep(cfg.step_sleep)
    final = newest(ckpt_dir)
    return float(final["loss"] if final else loss)


if __name__ == "__main__":
    main()
