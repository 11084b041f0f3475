"""The external task's config: `cfg.task` read into plain values (`ExternalTask`), its fields and
their shapes checked; what the templates in it render to is checked by validate.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from safedreamer_sweep.core.schema import ExternalSettings, refusals
from safedreamer_sweep.tasks.external.errors import ExternalTaskError

_KNOWN_FIELDS = {"kind", "command", "cwd", "env", "total_steps", "probe_every_s", "probes", "checkpoint",
                 "resume_args", "done_marker", "stop_grace_s", "stderr_tail_lines", "eval", "description", "vars",
                 "curves", "knobs", "resume_not_restored", "exit_0_is_done", "code", "startup_s", "total_steps_of"}


@dataclass
class ExternalTask:
    """`cfg.task` as plain values (validated by `validate_task`)."""

    command: Any
    cwd: str | None
    env: dict[str, str]
    total_steps: int
    probe_every_s: float
    probes: list[dict]
    checkpoint_glob: str | None
    checkpoint_step: dict[str, Any]  # how to read the step (one of pickle_key/json_key/name_regex) + scale
    resume_args: list[str]
    done_marker: str | None
    stop_grace_s: float
    stderr_tail_lines: int
    eval: dict
    curves: dict
    knobs: dict[str, dict] = dataclasses.field(default_factory=dict)  # knob -> {args, env} (see cell.knob_settings)
    resume_not_restored: list[str] = dataclasses.field(default_factory=list)  # what resume_args do not bring back
    exit_0_is_done: bool = False  # exit 0 proves the script trained total_steps, whatever its files show

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> ExternalTask:
        t = cfg.get("task")
        if t is None or t.get("kind") != "external":
            raise ExternalTaskError("cfg.task.kind is not 'external'; select it with task=external (or a "
                                    "file in conf/task/ with `kind: external`)")
        c = OmegaConf.to_container(t, resolve=True)
        assert isinstance(c, dict)
        unknown = sorted(set(c) - _KNOWN_FIELDS)
        if unknown:
            raise ExternalTaskError(f"task: unknown field(s) {unknown}; the fields are {sorted(_KNOWN_FIELDS)} "
                                    f"(conf/task/external.yaml documents each)")
        ck = c.get("checkpoint") or {}
        step = _checkpoint_step_how(ck)
        s = _scalar_settings(c)
        return cls(
            command=c.get("command"),
            cwd=c.get("cwd"),
            env={str(k): str(v) for k, v in (c.get("env") or {}).items()},
            total_steps=s.total_steps,
            probe_every_s=s.probe_every_s,
            probes=list(c.get("probes") or []),
            checkpoint_glob=ck.get("glob"),
            checkpoint_step=step,
            resume_args=[str(a) for a in (c.get("resume_args") or [])],
            done_marker=c.get("done_marker"),
            stop_grace_s=s.stop_grace_s,
            stderr_tail_lines=s.stderr_tail_lines,
            eval=dict(c.get("eval") or {}),
            curves=dict(c.get("curves") or {}),
            knobs=_knob_declarations(c.get("knobs")),
            resume_not_restored=[str(x) for x in (c.get("resume_not_restored") or [])],
            exit_0_is_done=s.exit_0_is_done,
        )


def _checkpoint_step_how(ck: Mapping[str, Any]) -> dict[str, Any]:
    """`task.checkpoint` checked: how to read the step from the file (at most one way) and its scale."""
    step: dict[str, Any] = {k: v for k, v in (ck.get("step") or {}).items() if v}
    if len(step) > 1:
        raise ExternalTaskError(f"task.checkpoint.step: give one way to read the step, got {sorted(step)}")
    if set(step) - {"pickle_key", "json_key", "name_regex"}:
        raise ExternalTaskError(f"task.checkpoint.step: {sorted(step)} not in pickle_key, json_key, name_regex")
    if set(ck) - {"glob", "step", "scale"}:
        raise ExternalTaskError(f"task.checkpoint: unknown field(s) {sorted(set(ck) - {'glob', 'step', 'scale'})};"
                                f" the fields are glob, step, scale")
    step["scale"] = float(ck.get("scale") or 1.0)
    return step


def _scalar_settings(c: Mapping[Any, Any]) -> ExternalSettings:
    """The scalar settings by their declared type and range (core/schema.py), null = the default;
    startup_s is checked here and read by tasks/run.py, which records it in the attempt."""
    scalars = {k: c[k] for k in ExternalSettings.model_fields if c.get(k) is not None}
    try:
        return ExternalSettings.model_validate(scalars)
    except ValidationError:
        raise ExternalTaskError("\n".join(str(r) for r in refusals(ExternalSettings, scalars, "task."))) from None


def _knob_declarations(raw: Any) -> dict[str, dict]:
    """`task.knobs` checked for shape: knob -> {args: list | {value: list}, env: {NAME: template}}."""
    out: dict[str, dict] = {}
    for knob, decl in (raw or {}).items():
        if not isinstance(decl, Mapping) or not decl or set(decl) - {"args", "env"}:
            raise ExternalTaskError(f"task.knobs[{knob!r}]: expected {{args: [...], env: {{NAME: ...}}}} (either or "
                                    f"both), got {decl!r}. Fix: e.g. `{knob}: {{args: [--my_flag, '{{value}}']}}`")
        args = decl.get("args") or []
        if not isinstance(args, (list, Mapping)):
            raise ExternalTaskError(f"task.knobs[{knob!r}].args: a list of argument templates or a mapping from "
                                    f"value to such a list, got {args!r}")
        out[str(knob)] = {"args": args, "env": dict(decl.get("env") or {})}
    return out
