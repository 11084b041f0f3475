"""The plan-time checks, before anything is written: each job's own config check (validate_job),
and across the jobs, confounds between the configs of the `config` axis (check_confounds, over
core/confounds.py) and an external task's commands that must differ per config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from safedreamer_sweep.core.confounds import find_confounds, format_confounds
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.settings import flag_hint, sweep_setting


def validate_job(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Run the task's own config check at plan time, so a cell that would fail on its first line
    is refused before any run directory, claim or manifest is written: the builtin trainer's budget
    check (jax-free), or the external adapter's template/probe check."""
    if "task" not in cfg or "kind" not in (cfg.task or {}):  # any other app: its own code checks its config
        return
    from safedreamer_sweep.core.schema import check_cell, check_env_ids

    refused = check_cell(cfg) or check_env_ids(cfg)  # every key's declared type and range (core/schema.py)
    if refused:
        raise PlanError(f"job {' '.join(overrides)}: refused before anything was written:\n"
                        + "\n".join(f"  {r}" for r in refused))
    try:
        if (cfg.get("task") or {}).get("kind", "builtin") == "external":
            from safedreamer_sweep.tasks.external import validate_task

            validate_task(cfg)
        else:
            from safedreamer_sweep.trainer.budget import check_config

            check_config(cfg)
    except Exception as e:  # any refusal by the task's own check becomes a plan error
        raise PlanError(f"job {' '.join(overrides)}: {e}") from e



def check_confounds(specs: list[RunSpec], cfg: DictConfig, log: Any = print, swept: set[str] | frozenset[str] = frozenset(),
                    launcher: dict | None = None) -> None:
    """Refuse (PlanError) or log the confounds core/confounds.py finds between the configs of
    `specs`: with sweep.strict_confounds=true (the default) a confound stops the launch, else it is
    logged as a warning. Knobs: sweep.ablation_knobs, and the keys the sweep varies itself (`swept`,
    part of each cell's label), knobs by construction."""
    knobs = list(cfg.get("sweep", {}).get("ablation_knobs", []) or []) + sorted(swept)
    found = find_confounds(specs, knobs)
    if not found:
        return
    text = format_confounds(found)
    hint = flag_hint(cfg)
    if bool(sweep_setting(cfg, launcher, "strict_confounds")):
        raise PlanError(f"confounds between the configs on the `config` axis:\n{text}\n"
                        f"Fix: make those keys equal, declare them in sweep.ablation_knobs, or pass "
                        f"{hint('strict_confounds', False)} to launch anyway")
    log(f"[plan] WARNING confounds ({hint('strict_confounds', False)}):\n{text}")


def check_config_axis_renders(specs: Sequence[tuple[RunSpec, DictConfig, DictConfig | None]]) -> None:
    """An external task must run something different per config on the `config` axis: render each
    config's train and eval commands (tasks/external/axis.py) and refuse configs that render the same."""
    per_config: dict[str, DictConfig] = {}
    for spec, _, composed in specs:
        if composed is not None:
            per_config.setdefault(spec.config, composed)
    if not per_config:
        return
    from safedreamer_sweep.tasks.external import check_config_axis

    knobs = list(specs[0][1].get("sweep", {}).get("ablation_knobs", []) or [])
    try:
        check_config_axis(per_config, knobs)
    except Exception as e:  # the task's refusal (or a template that does not render) stops the launch
        raise PlanError(str(e)) from e
