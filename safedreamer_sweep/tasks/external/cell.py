"""The task's declarations filled for one cell: the values its templates name, the knobs'
arguments and environment, the script's environment and cwd, its probes, the eval values, and the
script's newest checkpoint."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.tasks import probes
from safedreamer_sweep.tasks.external.config import ExternalTask
from safedreamer_sweep.tasks.external.errors import ExternalTaskError
from safedreamer_sweep.tasks.external.templates import MISSING, config_value, fill_glob, fill_template

# A standalone script that runs a JAX script with the persistent compilation cache in $SDS_JIT_CACHE.
_JIT_LAUNCHER = Path(__file__).resolve().parents[1] / "jit_cache_launch.py"
# `checkpoint` is filled in when there is one; validation uses this placeholder.
_PLACEHOLDER = "<placeholder>"


def _attempt_number(run: RunDir) -> int:
    attempts = run.read_state().get("attempts") or []
    return int(attempts[-1].get("n", len(attempts))) if attempts else 1


def cell_values(cfg: DictConfig, run: RunDir, task: ExternalTask, **extra: Any) -> dict[str, Any]:
    """The values a template can name besides config keys."""
    spec = run.read_spec() or {}
    values = {
        "seed": cfg.get("seed", spec.get("seed")),
        "run_dir": str(run.path),
        "config": spec.get("config", ""),
        "config_file": str(run.path / "external" / "config.yaml"),
        "attempt": _attempt_number(run),
        "total_steps": task.total_steps,
        "python": sys.executable,
        "checkpoint": _PLACEHOLDER,
        "resume_flag": "",
        "jit_launcher": str(_JIT_LAUNCHER),
    }
    values.update(extra)
    return values


def eval_values(task: ExternalTask, values: Mapping[str, Any], kind: str, eval_dir: str) -> dict[str, Any]:
    """`values` with the names only the eval command has: kind, env_id, episodes, eval_dir."""
    ev = task.eval
    return {**values, "kind": kind, "env_id": (ev.get("env_id") or {}).get(kind, ""),
            "episodes": ev.get("episodes", ""), "eval_dir": eval_dir}


def probe_declarations(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> list[dict]:
    """The task's probe declarations with their globs filled for this cell."""
    out = []
    for i, d in enumerate(task.probes):
        d = dict(d)
        if "glob" in d:
            d["glob"] = fill_template(str(d["glob"]), values, cfg, f"task.probes[{i}].glob")
        out.append(d)
    return out


def _value_key(v: Any) -> str:
    """A knob value as a key of `task.knobs.<knob>.args` (YAML `true:` and `"True"` alike)."""
    return str(v).lower()


def knob_settings(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment variables through which this cell's ablation knobs reach the
    script, filled from `task.knobs`: `{knob: {args: [...] | {value: [...]}, env: {NAME: tmpl}}}`,
    where `{value}` is the knob's value in this cell."""
    args: list[str] = []
    env: dict[str, str] = {}
    for knob, decl in task.knobs.items():
        what = f"task.knobs[{knob!r}]"
        v = config_value(cfg, knob)
        if v is MISSING or isinstance(v, DictConfig):
            raise ExternalTaskError(f"{what}: {knob} is {'not in the config' if v is MISSING else 'a config group'}"
                                    f". Fix: name a single value of the config (e.g. agent.u.enabled), or drop "
                                    f"it from task.knobs")
        kv = {**values, "value": v}
        toks = decl.get("args") or []
        if isinstance(toks, Mapping):
            by_value = {_value_key(k): t for k, t in toks.items()}
            if _value_key(v) not in by_value:
                raise ExternalTaskError(f"{what}.args: no entry for the value {v!r} (entries: {sorted(by_value)}). "
                                        f"Fix: add `{_value_key(v)}: [...]` (an empty list passes nothing)")
            toks = by_value[_value_key(v)] or []
        args.extend(fill_template(str(t), kv, cfg, f"{what}.args") for t in toks)
        for name, t in (decl.get("env") or {}).items():
            env[str(name)] = fill_template(str(t), kv, cfg, f"{what}.env.{name}")
    return args, env


def script_env(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig,
               knob_env: Mapping[str, str]) -> dict[str, str]:
    """The environment the script gets besides the cell's own: task.env filled, then the knobs' variables."""
    return {**{k: fill_template(v, values, cfg, f"task.env.{k}") for k, v in task.env.items()}, **knob_env}


def script_cwd(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> str | None:
    """The directory the script runs in (task.cwd filled), None for the cell's own."""
    return fill_template(task.cwd, values, cfg, "task.cwd") if task.cwd else None


def checkpoint_pattern(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig, run: RunDir) -> str | None:
    """task.checkpoint.glob filled for this cell (relative to the run dir), None when undeclared."""
    if not task.checkpoint_glob:
        return None
    return fill_glob(task.checkpoint_glob, values, cfg, "task.checkpoint.glob", run.path)


def find_script_checkpoint(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig, run: RunDir
                           ) -> probes.FoundCheckpoint | None:
    """The script's newest checkpoint file (with its step when the task says how to read it), or None."""
    pattern = checkpoint_pattern(task, values, cfg, run)
    return None if pattern is None else probes.find_checkpoint(pattern, **task.checkpoint_step)
