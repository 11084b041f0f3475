"""The planner's check of the `config` axis: configs whose cells would run the same train and eval
commands (seed and paths aside) are refused, since their ablation would never reach the script."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir
from safedreamer_sweep.tasks.external.cell import cell_values, eval_values, knob_settings, script_env
from safedreamer_sweep.tasks.external.errors import ExternalTaskError
from safedreamer_sweep.tasks.external.templates import fill_command, names_knob_args
from safedreamer_sweep.tasks.external.validate import validate_task

# What a cell's commands may differ by without running different code: its seed, its label and its
# paths. The planner compares the rest between the configs on the `config` axis.
_CELL_PLACEHOLDERS = {"seed": "<seed>", "run_dir": "<run_dir>", "config": "<config>",
                      "config_file": "<run_dir>/external/config.yaml", "attempt": 1, "python": "<python>",
                      "jit_launcher": "<jit_launcher>"}


def config_axis_commands(cfg: DictConfig) -> dict[str, Any]:
    """The train and eval commands (argv and environment) one cell of `cfg` would run, with its
    seed, config name and paths replaced by placeholders. Two configs on the `config` axis with
    equal results run the same training under different labels (no ablation knob reaches the
    script). Raises ExternalTaskError for a task that does not validate."""
    task = validate_task(cfg)
    values = {**cell_values(cfg, RunDir(Path("/<run_dir>")), task, _validating=True), **_CELL_PLACEHOLDERS}
    seed = cfg.get("seed")
    kargs, kenv = knob_settings(task, values, cfg)
    env = script_env(task, values, cfg, kenv)
    out: dict[str, Any] = {"train": fill_command(task.command, values, cfg, "task.command", knobs=kargs),
                           "env": env}
    ev = task.eval
    if ev.get("command") is not None:
        for kind in EVAL_KINDS:
            evalues = eval_values(task, values, kind, "<eval_dir>")
            out[f"eval_{kind}"] = fill_command(ev["command"], evalues, cfg, f"task.eval.command ({kind})",
                                               knobs=kargs if names_knob_args(ev["command"]) else None)
    if seed is not None:  # a config key that interpolates the seed (e.g. {task.vars.logdir}) is still the seed
        out = {k: _without(v, str(seed)) for k, v in out.items()}
    return out


def check_config_axis(cfgs: Mapping[str, DictConfig], knobs: list[str]) -> None:
    """Refuse configs on the `config` axis that render the same commands: they would run the same
    training under different labels, and the report would present an ablation that never ran.
    `cfgs`: one composed config per config name; `knobs`: sweep.ablation_knobs (named in the
    message). A builtin task reads its knobs itself: nothing to check."""
    if len(cfgs) < 2 or any((c.get("task") or {}).get("kind") != "external" for c in cfgs.values()):
        return
    by_commands: dict[str, list[str]] = {}
    for name, c in cfgs.items():
        by_commands.setdefault(json.dumps(config_axis_commands(c), sort_keys=True, default=str), []).append(name)
    clashes = [names for names in by_commands.values() if len(names) > 1]
    if clashes:
        raise ExternalTaskError(_clash_refusal(cfgs, clashes, knobs))


def _clash_refusal(cfgs: Mapping[str, DictConfig], clashes: list[list[str]], knobs: list[str]) -> str:
    """The refusal of configs that render the same commands: which, the knobs they differ in, the fix."""
    first = next(iter(cfgs.values()))
    task_name = OmegaConf.select(first, "hydra.runtime.choices.task", default=None) or "external"
    lines = []
    differ: list[str] = []
    for names in clashes:
        ref = cfgs[names[0]]
        differ = [k for k in knobs if any(OmegaConf.select(cfgs[n], k, default=None)
                                          != OmegaConf.select(ref, k, default=None) for n in names[1:])]
        why = (f"they differ in {', '.join(differ)}, which task={task_name} never passes to the script (not in "
               f"task.knobs, not named in task.command, task.eval.command or task.env)" if differ else
               "they differ in no ablation knob (sweep.ablation_knobs)")
        lines.append(f"  configs {', '.join(names)} render the same train and eval commands (seed and paths "
                     f"aside): {why}")
    example = (differ or knobs or ["agent.u.enabled"])[0]
    return (
        f"task={task_name}: the `config` axis would run the same training under different labels, and the "
        f"report would show an ablation that never ran:\n" + "\n".join(lines) + "\n"
        f"Fix: declare how the knob reaches the script in the task file (conf/task/{task_name}.yaml), e.g. "
        f"`knobs: {{{example}: {{args: [--your_flag, '{{value}}']}}}}` or name {{{example}}} in task.command; if "
        f"the script has no such option, leave all but one of these configs out of the sweep.")


def _without(v: Any, seed: str) -> Any:
    if isinstance(v, list):
        return ["<seed>" if x == seed else x for x in v]
    return {k: "<seed>" if x == seed else x for k, x in v.items()}
