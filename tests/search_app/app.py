"""A toy "safe RL" Hydra app for the search tests: one knob `x` in [0, 1], a return that grows with x
and a cost that grows faster, so the highest-return points break the cost limit (15 at x > 0.5); above
`diverge_above` training diverges (its return curve falls), which a pruner should see early. It beats a
heartbeat with its return curve, checkpoints and resumes, and returns {"ret": ..., "cost": ...}."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import safedreamer_sweep


def final_return(x: float, seed: int, diverge_above: float) -> float:
    noise = random.Random(seed).gauss(0, 0.2)
    return (-5.0 if x > diverge_above else 10.0 * x) + noise


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    ckpt = Path(cfg.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    files = sorted(ckpt.glob("step_*.json"))
    start = json.loads(files[-1].read_text())["step"] if files else 0
    print(f"first step {start + 1}", flush=True)
    target = final_return(cfg.x, cfg.seed, cfg.diverge_above)
    for step in range(start + 1, cfg.steps + 1):
        ret = target * step / cfg.steps
        safedreamer_sweep.heartbeat(step * 100, total=cfg.steps * 100, ret=ret, cost=30.0 * cfg.x * step / cfg.steps)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tmp = ckpt / f".step_{step:06d}.tmp"
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt / f"step_{step:06d}.json")
        time.sleep(cfg.step_sleep)
    return {"ret": target, "cost": 30.0 * cfg.x}


if __name__ == "__main__":
    main()
