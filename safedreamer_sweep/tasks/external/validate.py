"""Check the external task before anything runs: every template renders, every probe builds, the
two step budgets agree (the launcher calls `validate_task` at plan time). Each refusal is an
ExternalTaskError naming the field, the cause and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir
from safedreamer_sweep.tasks import probes
from safedreamer_sweep.tasks.external.cell import cell_values, eval_values, knob_settings, probe_declarations, script_env
from safedreamer_sweep.tasks.external.config import ExternalTask
from safedreamer_sweep.tasks.external.errors import ExternalTaskError
from safedreamer_sweep.tasks.external.templates import MISSING, config_value, fill_command, fill_template


def _check_total_steps_of(cfg: DictConfig, total_steps: int) -> None:
    """`task.total_steps_of: {key: K, scale: S}` says the script's own budget is the config value K in
    other units (SafeDreamer's agent steps, 5 env frames each): task.total_steps must equal K x S, or
    the cell would train one budget while the adapter waits for another. A mismatch is refused."""
    decl = OmegaConf.select(cfg, "task.total_steps_of", default=None)
    if decl is None:
        return
    decl = OmegaConf.to_container(decl, resolve=True) if isinstance(decl, DictConfig) else decl
    if not isinstance(decl, Mapping) or set(decl) - {"key", "scale"} or not decl.get("key"):
        raise ExternalTaskError(f"task.total_steps_of: expected {{key: a.dotted.config.key, scale: number}}, got "
                                f"{decl!r}")
    key, scale = str(decl["key"]), decl.get("scale", 1)
    value = config_value(cfg, key)
    if value is MISSING or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExternalTaskError(f"task.total_steps_of.key={key}: no number at that key (got {value!r}). Fix: point "
                                f"it at the script's own budget, e.g. task.vars.agent_steps")
    want = value * scale
    if want != total_steps:
        have_units = total_steps / scale
        fix_units = int(have_units) if float(have_units).is_integer() else have_units
        raise ExternalTaskError(
            f"task.total_steps={total_steps} but {key}={value:g} x {scale:g} = {want:g} env steps: the script "
            f"would train {want:g} while the adapter waits for {total_steps} (task.total_steps_of ties the two). "
            f"Fix: task.total_steps={want:g}, or {key}={fix_units} for {total_steps} env steps.")


def validate_task(cfg: DictConfig, run: RunDir | None = None) -> ExternalTask:
    """Check every template and probe of the external task before anything runs (the launcher may
    call this at plan time). Raises ExternalTaskError naming the field, the cause and the fix."""
    task = ExternalTask.from_cfg(cfg)
    _check_total_steps_of(cfg, task.total_steps)
    run = run or RunDir(Path("/nonexistent/run_dir"))
    values = cell_values(cfg, run, task, _validating=True)
    _check_train_templates(task, values, cfg)
    probes.build_probes(probe_declarations(task, values, cfg), base_dir=run.path)
    if task.curves and not (task.curves.get("glob") and task.curves.get("step_key") and task.curves.get("keys")):
        raise ExternalTaskError("task.curves needs glob, step_key and keys (ours -> the script's, e.g. "
                                "episode_return: episode/score), or set it to null")
    if task.curves:
        fill_template(str(task.curves["glob"]), values, cfg, "task.curves.glob")
    if not task.probes:
        raise ExternalTaskError("task.probes is empty: without a probe the run's progress is unknown and every "
                                "run would look stalled. Fix: declare at least one (jsonl, files or stdout)")
    if task.eval.get("command") is not None:
        _check_eval_templates(task, values, cfg, run)
    return task


def _check_train_templates(task: ExternalTask, values: dict[str, Any], cfg: DictConfig) -> None:
    """The training command, the knobs, the resume arguments, env, cwd, checkpoint glob and done marker."""
    fill_command(task.command, values, cfg, "task.command", resume=None)
    knob_settings(task, values, cfg)
    for i, a in enumerate(task.resume_args):
        fill_template(a, values, cfg, f"task.resume_args[{i}]")
    if task.resume_args and not task.checkpoint_glob:
        raise ExternalTaskError("task.resume_args is set but task.checkpoint.glob is not: the adapter cannot "
                                "tell when to resume. Fix: declare where the script writes its checkpoint")
    script_env(task, values, cfg, {})
    if task.cwd:
        fill_template(task.cwd, values, cfg, "task.cwd")
    if task.checkpoint_glob:
        fill_template(task.checkpoint_glob, values, cfg, "task.checkpoint.glob")
    if task.done_marker:
        fill_template(task.done_marker, values, cfg, "task.done_marker")


def _check_eval_templates(task: ExternalTask, values: dict[str, Any], cfg: DictConfig, run: RunDir) -> None:
    """The eval command of each kind and where its results are."""
    ev = task.eval
    for kind in EVAL_KINDS:
        evalues = eval_values(task, values, kind, str(run.path / "external_eval" / kind))
        fill_command(ev["command"], evalues, cfg, f"task.eval.command ({kind})")
        res = ev.get("results") or {}
        if not res.get("glob"):
            raise ExternalTaskError("task.eval.results.glob is not set: where does the eval command write "
                                    "its episodes? Fix: e.g. glob: '**/metrics.jsonl'")
        fill_template(str(res["glob"]), evalues, cfg, "task.eval.results.glob")
        if "return" not in (res.get("keys") or {}):
            raise ExternalTaskError("task.eval.results.keys must map at least `return` "
                                    "(e.g. return: episode/score)")
