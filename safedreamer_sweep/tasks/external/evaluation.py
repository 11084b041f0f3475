"""Evaluate one cell with the script: run `task.eval.command` for a kind (id / ood) on the script's
newest checkpoint, watch the episodes it writes (they drive the heartbeat), and return them in the
store's eval schema (docs/CONTRACTS.md)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir, now
from safedreamer_sweep.tasks import probes
from safedreamer_sweep.tasks.external.cell import (
    cell_values,
    eval_values,
    find_script_checkpoint,
    knob_settings,
    script_cwd,
    script_env,
)
from safedreamer_sweep.tasks.external.config import ExternalTask
from safedreamer_sweep.tasks.external.errors import ExternalTaskError
from safedreamer_sweep.tasks.external.runner import run_script
from safedreamer_sweep.tasks.external.templates import fill_command, fill_glob, names_knob_args
from safedreamer_sweep.tasks.external.validate import validate_task


def _summarize(episodes: list[dict], cost_limit: float | None) -> dict:
    """The store's eval summary of a list of {return, cost, length} episodes."""
    import numpy as np

    def stats(key: str) -> tuple[float | None, float | None]:
        xs = [e[key] for e in episodes if e.get(key) is not None]
        return (float(np.mean(xs)), float(np.std(xs))) if xs else (None, None)

    rm, rs = stats("return")
    cm, cs = stats("cost")
    lm, _ = stats("length")
    costs = [e["cost"] for e in episodes if e.get("cost") is not None]
    vr = (float(np.mean([c > cost_limit for c in costs])) if costs and cost_limit is not None else None)
    return {"return_mean": rm, "return_std": rs, "cost_mean": cm, "cost_std": cs, "length_mean": lm,
            "violation_rate": vr, "episodes": len(episodes)}


def _results_since(pattern: str, started: float) -> list[Path]:
    """The result files matching `pattern` written since `started` (never a stale file)."""
    files = []
    for p in sorted(probes.expand_glob(pattern)):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mtime >= started:
                files.append(p)
    return files


def evaluate(cfg: DictConfig, run: RunDir, kind: str) -> dict:
    """Run `task.eval.command` for `kind` (id or ood), read its episodes from `task.eval.results`,
    and return them in the store's eval schema (docs/CONTRACTS.md)."""
    if kind not in EVAL_KINDS:
        raise ValueError(f"eval kind must be one of {EVAL_KINDS}, got {kind!r}")
    task = validate_task(cfg, run)
    ev = task.eval
    if ev.get("command") is None:
        raise ExternalTaskError("task.eval.command is not set: the cell cannot be evaluated. Fix: declare the "
                                "command that evaluates a checkpoint (see conf/task/safedreamer.yaml)")
    values = cell_values(cfg, run, task)
    found = find_script_checkpoint(task, values, cfg, run)
    attempt = int(values["attempt"])
    eval_dir = run.path / "external_eval" / kind / f"attempt_{attempt:02d}"
    eval_dir.mkdir(parents=True, exist_ok=True)
    values = eval_values(task, values, kind, str(eval_dir))
    if found is not None:
        values["checkpoint"] = str(found.path)
    elif "checkpoint" in str(ev["command"]):
        raise ExternalTaskError(f"{run.path}: task.eval.command needs {{checkpoint}} but no file matches "
                                f"task.checkpoint.glob {task.checkpoint_glob!r}. Fix: check the glob against "
                                f"where the script writes its checkpoint")
    kargs, kenv = knob_settings(task, values, cfg)
    argv = fill_command(ev["command"], values, cfg, f"task.eval.command ({kind})",
                        knobs=kargs if names_knob_args(ev["command"]) else None)
    env = script_env(task, values, cfg, kenv)
    res = ev.get("results") or {}
    watch = _EpisodeWatch(run, task, kind, pattern=fill_glob(str(res["glob"]), values, cfg,
                                                             "task.eval.results.glob", eval_dir))
    run_script(argv, task=task, run=run, attempt=attempt, cwd=script_cwd(task, values, cfg), env=env,
               header=f"eval {kind} attempt {attempt}", what=f"{kind} evaluation", on_tick=watch.tick)
    files, episodes = watch.episodes_written()
    if not episodes:
        out_path, _ = run.attempt_log_paths(attempt)
        raise ExternalTaskError(
            f"{run.path}: the {kind} evaluation exited 0 but no episode was found: {len(files)} file(s) written "
            f"since it started match {watch.pattern!r}, none with a row holding {dict(res.get('keys') or {})!r}. Fix: "
            f"point task.eval.results.glob/keys at what the script writes (see {out_path})")
    return _eval_document(cfg, run, ev, kind, values, found, watch.step, argv, files, episodes)


class _EpisodeWatch:
    """The episodes an evaluation has written so far (its result files since it started), and the
    heartbeat they drive: the stall check reads eval_moved_at during an evaluation (sweep/observe.py),
    and it moves with every episode the script writes, so a long evaluation is not taken for a
    stalled cell."""

    def __init__(self, run: RunDir, task: ExternalTask, kind: str, pattern: str):
        self.run, self.task, self.kind, self.pattern = run, task, kind, pattern
        self.prog = run.read_progress() or {}
        self.step = int(self.prog.get("env_step", 0))
        self.started = now() - 1.0
        self.done, self.moved_at = 0, time.time()

    def episodes_written(self) -> tuple[list[Path], list[dict]]:
        res = self.task.eval.get("results") or {}
        files = _results_since(self.pattern, self.started)
        return files, probes.read_episodes(files, str(res.get("format", "jsonl")), dict(res.get("keys") or {}),
                                           records=res.get("records"))

    def tick(self, pid: int) -> None:
        try:
            n = len(self.episodes_written()[1])
        except (OSError, probes.ProbeConfigError):
            n = self.done
        if n > self.done:
            self.done, self.moved_at = n, time.time()
        self.run.heartbeat(self.step, self.task.total_steps, phase=f"eval-{self.kind}", child_pid=pid,
                           probe=self.prog.get("probe"), eval_kind=self.kind, eval_episodes_done=self.done,
                           eval_episodes=self.task.eval.get("episodes"), eval_moved_at=self.moved_at)


def _eval_document(cfg: DictConfig, run: RunDir, ev: dict, kind: str, values: dict, found: Any, step: int,
                   argv: list[str], files: list[Path], episodes: list[dict]) -> dict:
    """The store's eval document (docs/CONTRACTS.md) for the episodes an evaluation wrote (`ev`: task.eval)."""
    cost_limit = ev.get("cost_limit")
    if found is not None and found.step is not None:
        ckpt_step = found.step
    else:  # the store's own newest checkpoint, else the step the cell reached
        ckpts = run.checkpoints()
        ckpt_step = ckpts[-1][0] if ckpts else step
    trained = int(run.read_state().get("trained_steps") or step)
    out = {
        "kind": kind,
        "env_id": values["env_id"],
        "checkpoint_step": ckpt_step,
        # A script that saves on a wall-clock timer (SafeDreamer) can end past its newest checkpoint:
        # the evaluated policy is then older than the trained steps say.
        "trained_steps": trained,
        "checkpoint_behind": max(0, trained - int(ckpt_step)),
        "seed": int(cfg.get("seed", values["seed"])),
        "cost_limit": None if cost_limit is None else float(cost_limit),
        "episodes": episodes,
        "summary": _summarize(episodes, None if cost_limit is None else float(cost_limit)),
        "source": {"command": argv, "files": [str(f) for f in files]},
    }
    if kind == "ood":
        out["ood_proxy"] = ev.get("ood_proxy")
    return out
