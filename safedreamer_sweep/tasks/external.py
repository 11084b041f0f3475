"""Any training script as a cell (`task=external`): the external-command adapter.

`run.py` calls `train(cfg, run)` and `evaluate(cfg, run, kind)` from here instead of the built-in
trainer when `cfg.task.kind == "external"`, so planning, claiming, submission, supervision and
retries are the same for both. What the script is and how to read it is declared in `cfg.task`
(conf/task/external.yaml documents every field; conf/task/safedreamer.yaml is a worked example):

- `command`: a template rendered with the cell's values (`{seed}`, `{run_dir}`, `{config}`,
  `{resume_flag}`, any config key by dotted path such as `{agent.lr}`), run as a subprocess in its
  own process group with `env` and `cwd`, stdout/stderr teed to `logs/attempt_NN.{out,err}`.
- `probes`: read the script's own files every `probe_every_s` seconds and turn them into env
  steps for `progress.json`, so a run whose metrics file is stale but whose replay grows is seen
  moving, and a run whose probes stop is seen stalled.
- `checkpoint` and `resume_args`: where the script's checkpoint is, and the arguments that make it
  resume from it (added when one exists).
- `knobs`: how each ablation knob reaches the script (arguments and environment variables rendered
  from the knob's value per cell); `config_axis_commands` renders a cell's commands so the planner
  can refuse configs that would run the same thing under different labels.
- `eval`: a command per kind (id / ood) and where its results are, mapped onto the eval schema.
- `curves` (optional): the script's metrics rows copied into the run dir's metrics.jsonl, so the
  report draws learning curves.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import shlex
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from safedreamer_sweep.core.files import atomic_write_bytes
from safedreamer_sweep.core.process import die_with_parent
from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir, now
from safedreamer_sweep.core.schema import ExternalSettings, refusals
from safedreamer_sweep.tasks import probes as P

# Values every template may use besides config keys. `checkpoint` and the eval-only names are
# filled in when they apply; validation uses placeholders for them.
CELL_VALUES = ("seed", "run_dir", "config", "config_file", "attempt", "total_steps", "python", "checkpoint",
               "resume_flag", "jit_launcher")
# A standalone script that runs a JAX script with the persistent compilation cache in $SDS_JIT_CACHE.
JIT_LAUNCHER = Path(__file__).resolve().with_name("jit_cache_launch.py")
EVAL_VALUES = ("kind", "env_id", "episodes", "eval_dir")
_PLACEHOLDER = "<placeholder>"


class ExternalTaskError(RuntimeError):
    """The task config is wrong (caught before anything runs) or the script failed."""


class ExternalCommandFailed(ExternalTaskError):
    """The script exited nonzero; the message carries its exit code and stderr tail."""


# ----------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """Names referenced by `{...}` in a template (`{{` and `}}` are literal braces)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ExternalTaskError(f"template {template!r}: {e}. Fix: balance the braces; write {{{{ and "
                                f"}}}} for literal braces.") from e


_MISSING = object()


def _config_value(cfg: DictConfig, key: str) -> Any:
    """The config value at dotted path `key`, or _MISSING."""
    try:
        v = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    except (ValueError, KeyError, TypeError, AttributeError):  # a malformed key such as `a..b`
        return _MISSING
    return _MISSING if v is None and not _has_key(cfg, key) else v


def _has_key(cfg: DictConfig, key: str) -> bool:
    *parents, last = key.split(".")
    node: Any = cfg
    for p in parents:
        if not isinstance(node, DictConfig) or p not in node:
            return False
        node = node[p]
    return isinstance(node, DictConfig) and last in node


def render(template: str, values: Mapping[str, Any], cfg: DictConfig, what: str) -> str:
    """Fill `template` from `values`, then from config keys by dotted path. An unknown name is an
    ExternalTaskError naming it, the template, and the names available."""
    out = []
    for literal, field_name, spec, conv in string.Formatter().parse(template):
        out.append(literal)
        if field_name is None:
            continue
        if field_name == "":
            raise ExternalTaskError(f"{what}: empty placeholder {{}} in {template!r}; name a value, e.g. {{seed}}")
        if field_name in values:
            v = values[field_name]
        elif field_name.startswith("environ[") and field_name.endswith("]"):
            # {environ[NAME]} / {environ[NAME|default]}: the cell process's environment, e.g. the
            # GPU the launcher assigned to this cell.
            var, bar, default = field_name[len("environ["):-1].partition("|")
            if bar and var not in os.environ:
                v = default
            elif var not in os.environ and not values.get("_validating"):
                raise ExternalTaskError(f"{what}: {{{field_name}}} in {template!r}: environment variable {var} is "
                                        f"not set in the cell process. Fix: set it (task.env cannot, it is "
                                        f"applied to the script only), give a default {{environ[{var}|0]}}, "
                                        f"or drop it from the template")
            else:
                v = os.environ.get(var, "")
        else:
            v = _config_value(cfg, field_name)
            if v is _MISSING:
                raise ExternalTaskError(
                    f"{what}: {{{field_name}}} in {template!r} is neither a cell value "
                    f"({', '.join(sorted(k for k in values if not k.startswith('_')))}), {{environ[NAME]}}, "
                    f"nor a config key. Fix: correct the name, or add the key to the config "
                    f"(e.g. +{field_name}=...).")
            if isinstance(v, DictConfig) or OmegaConf.is_list(v):
                raise ExternalTaskError(f"{what}: {{{field_name}}} in {template!r} is a config group, not a "
                                        f"single value; name a leaf key such as {{{field_name}.<key>}}")
        if conv == "r":
            v = repr(v)
        out.append(format(v, spec) if spec else str(v))
    return "".join(out)



def probe_declarations(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> list[dict]:
    """The task's probe declarations with their globs rendered for this cell."""
    out = []
    for i, d in enumerate(task.probes):
        d = dict(d)
        if "glob" in d:
            d["glob"] = render(str(d["glob"]), values, cfg, f"task.probes[{i}].glob")
        out.append(d)
    return out

def render_command(command: Any, values: Mapping[str, Any], cfg: DictConfig, what: str,
                   resume: list[str] | None = None, knobs: list[str] | None = None) -> list[str]:
    """The argv of a command template. A string is split like a shell would (no shell runs), a
    list is taken token by token; each token is rendered, so a value with spaces stays one
    argument; a token that is exactly `{key}` of a config list becomes one argument per item (each
    item a template). A token that is exactly `{resume_flag}` becomes the resume arguments (or nothing);
    without such a token, resume arguments go at the end. A token `{knob_args}` becomes `knobs`
    (the task's knob arguments); without it, `knobs` go at the end (the eval command passes None)."""
    if isinstance(command, str):
        tokens = shlex.split(command)
    elif OmegaConf.is_list(command) or isinstance(command, (list, tuple)):
        tokens = [str(t) for t in command]
    else:
        raise ExternalTaskError(f"{what}: must be a string or a list of strings, got {command!r}. Fix: set "
                                f"task.command, e.g. \"python train.py --seed {{seed}} --logdir {{run_dir}}/out\"")
    if not tokens:
        raise ExternalTaskError(f"{what}: is empty. Fix: set the command that trains one cell")
    argv: list[str] = []
    placed = knobs_placed = False
    for tok in tokens:
        if tok == "{resume_flag}":
            argv.extend(resume or [])
            placed = True
            continue
        if tok == "{knob_args}":
            argv.extend(knobs or [])
            knobs_placed = True
            continue
        spliced = _list_value(tok, values, cfg)
        if spliced is not None:  # `{a.list}` as a whole argument: one argument per item
            argv.extend(render(str(item), values, cfg, f"{what} ({tok}[{i}])") for i, item in enumerate(spliced))
            continue
        for whole in ("resume_flag", "knob_args"):
            if whole in template_fields(tok):
                raise ExternalTaskError(f"{what}: {{{whole}}} must be a whole argument (got {tok!r}); it expands "
                                        f"to several tokens")
        argv.append(render(tok, values, cfg, what))
    if knobs and not knobs_placed:
        argv.extend(knobs)
    if resume and not placed:
        argv.extend(resume)
    return argv


def _list_value(tok: str, values: Mapping[str, Any], cfg: DictConfig) -> list | None:
    """The config list a token names when it is exactly `{dotted.key}` of a list, else None."""
    if not (tok.startswith("{") and tok.endswith("}")) or tok.count("{") != 1:
        return None
    name = tok[1:-1]
    if name in values or name.startswith("environ["):
        return None
    v = _config_value(cfg, name)
    return list(v) if OmegaConf.is_list(v) else None


def _value_key(v: Any) -> str:
    """A knob value as a key of `task.knobs.<knob>.args` (YAML `true:` and `"True"` alike)."""
    return str(v).lower()


def knob_settings(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment variables through which this cell's ablation knobs reach the
    script, rendered from `task.knobs`: `{knob: {args: [...] | {value: [...]}, env: {NAME: tmpl}}}`,
    where `{value}` is the knob's value in this cell."""
    args: list[str] = []
    env: dict[str, str] = {}
    for knob, decl in task.knobs.items():
        what = f"task.knobs[{knob!r}]"
        v = _config_value(cfg, knob)
        if v is _MISSING or isinstance(v, DictConfig):
            raise ExternalTaskError(f"{what}: {knob} is {'not in the config' if v is _MISSING else 'a config group'}"
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
        args.extend(render(str(t), kv, cfg, f"{what}.args") for t in toks)
        for name, t in (decl.get("env") or {}).items():
            env[str(name)] = render(str(t), kv, cfg, f"{what}.env.{name}")
    return args, env


# ----------------------------------------------------------------------------- the task config


@dataclass
class ExternalTask:
    """`cfg.task` as plain values (validated by `load_task`)."""

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
    knobs: dict[str, dict] = dataclasses.field(default_factory=dict)  # knob -> {args, env} (see knob_settings)
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
        known = {"kind", "command", "cwd", "env", "total_steps", "probe_every_s", "probes", "checkpoint",
                 "resume_args", "done_marker", "stop_grace_s", "stderr_tail_lines", "eval", "description", "vars",
                 "curves", "knobs", "resume_not_restored", "exit_0_is_done", "code", "startup_s", "total_steps_of"}
        unknown = sorted(set(c) - known)
        if unknown:
            raise ExternalTaskError(f"task: unknown field(s) {unknown}; the fields are {sorted(known)} "
                                    f"(conf/task/external.yaml documents each)")
        ck = c.get("checkpoint") or {}
        step: dict[str, Any] = {k: v for k, v in (ck.get("step") or {}).items() if v}
        if len(step) > 1:
            raise ExternalTaskError(f"task.checkpoint.step: give one way to read the step, got {sorted(step)}")
        if set(step) - {"pickle_key", "json_key", "name_regex"}:
            raise ExternalTaskError(f"task.checkpoint.step: {sorted(step)} not in pickle_key, json_key, name_regex")
        if set(ck) - {"glob", "step", "scale"}:
            raise ExternalTaskError(f"task.checkpoint: unknown field(s) {sorted(set(ck) - {'glob', 'step', 'scale'})};"
                                    f" the fields are glob, step, scale")
        step["scale"] = float(ck.get("scale") or 1.0)
        # the scalar settings by their declared type and range (core/schema.py), null = the default;
        # startup_s is checked here and read by tasks/run.py, which records it in the attempt
        scalars = {k: c[k] for k in ExternalSettings.model_fields if c.get(k) is not None}
        try:
            s = ExternalSettings.model_validate(scalars)
        except ValidationError:
            raise ExternalTaskError("\n".join(str(r) for r in refusals(ExternalSettings, scalars, "task."))) from None
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
        "jit_launcher": str(JIT_LAUNCHER),
    }
    values.update(extra)
    return values


def _render_glob(pattern: str, values: Mapping[str, Any], cfg: DictConfig, what: str, base: Path) -> str:
    g = render(pattern, values, cfg, what)
    return g if os.path.isabs(g) else str(base / g)


def check_total_steps_of(cfg: DictConfig, total_steps: int) -> None:
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
    value = _config_value(cfg, key)
    if value is _MISSING or isinstance(value, bool) or not isinstance(value, (int, float)):
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
    check_total_steps_of(cfg, task.total_steps)
    run = run or RunDir(Path("/nonexistent/run_dir"))
    values = cell_values(cfg, run, task, _validating=True)
    render_command(task.command, values, cfg, "task.command", resume=None)
    knob_settings(task, values, cfg)
    for i, a in enumerate(task.resume_args):
        render(a, values, cfg, f"task.resume_args[{i}]")
    if task.resume_args and not task.checkpoint_glob:
        raise ExternalTaskError("task.resume_args is set but task.checkpoint.glob is not: the adapter cannot "
                                "tell when to resume. Fix: declare where the script writes its checkpoint")
    for k, v in task.env.items():
        render(v, values, cfg, f"task.env.{k}")
    if task.cwd:
        render(task.cwd, values, cfg, "task.cwd")
    if task.checkpoint_glob:
        render(task.checkpoint_glob, values, cfg, "task.checkpoint.glob")
    if task.done_marker:
        render(task.done_marker, values, cfg, "task.done_marker")
    P.build_probes(probe_declarations(task, values, cfg), base_dir=run.path)
    if task.curves and not (task.curves.get("glob") and task.curves.get("step_key") and task.curves.get("keys")):
        raise ExternalTaskError("task.curves needs glob, step_key and keys (ours -> the script's, e.g. "
                                "episode_return: episode/score), or set it to null")
    if task.curves:
        render(str(task.curves["glob"]), values, cfg, "task.curves.glob")
    if not task.probes:
        raise ExternalTaskError("task.probes is empty: without a probe the run's progress is unknown and every "
                                "run would look stalled. Fix: declare at least one (jsonl, files or stdout)")
    ev = task.eval
    if ev.get("command") is not None:
        for kind in EVAL_KINDS:
            evalues = {**values, "kind": kind, "env_id": (ev.get("env_id") or {}).get(kind, ""),
                       "episodes": ev.get("episodes", ""), "eval_dir": str(run.path / "external_eval" / kind)}
            render_command(ev["command"], evalues, cfg, f"task.eval.command ({kind})")
            res = ev.get("results") or {}
            if not res.get("glob"):
                raise ExternalTaskError("task.eval.results.glob is not set: where does the eval command write "
                                        "its episodes? Fix: e.g. glob: '**/metrics.jsonl'")
            render(str(res["glob"]), evalues, cfg, "task.eval.results.glob")
            if "return" not in (res.get("keys") or {}):
                raise ExternalTaskError("task.eval.results.keys must map at least `return` "
                                        "(e.g. return: episode/score)")
    return task


def _names_knob_args(command: Any) -> bool:
    """Whether a command template has the whole-argument token `{knob_args}`."""
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command or []]
    return "{knob_args}" in tokens


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
    env = {**{k: render(v, values, cfg, f"task.env.{k}") for k, v in task.env.items()}, **kenv}
    out: dict[str, Any] = {"train": render_command(task.command, values, cfg, "task.command", knobs=kargs),
                           "env": env}
    ev = task.eval
    if ev.get("command") is not None:
        for kind in EVAL_KINDS:
            evalues = {**values, "kind": kind, "env_id": (ev.get("env_id") or {}).get(kind, ""),
                       "episodes": ev.get("episodes", ""), "eval_dir": "<eval_dir>"}
            out[f"eval_{kind}"] = render_command(ev["command"], evalues, cfg, f"task.eval.command ({kind})",
                                                 knobs=kargs if _names_knob_args(ev["command"]) else None)
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
    if not clashes:
        return
    first = next(iter(cfgs.values()))
    task_name = OmegaConf.select(first, "hydra.runtime.choices.task", default=None) or "external"
    lines = []
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
    raise ExternalTaskError(
        f"task={task_name}: the `config` axis would run the same training under different labels, and the "
        f"report would show an ablation that never ran:\n" + "\n".join(lines) + "\n"
        f"Fix: declare how the knob reaches the script in the task file (conf/task/{task_name}.yaml), e.g. "
        f"`knobs: {{{example}: {{args: [--your_flag, '{{value}}']}}}}` or name {{{example}}} in task.command; if "
        f"the script has no such option, leave all but one of these configs out of the sweep.")


def _without(v: Any, seed: str) -> Any:
    if isinstance(v, list):
        return ["<seed>" if x == seed else x for x in v]
    return {k: "<seed>" if x == seed else x for k, x in v.items()}


# ----------------------------------------------------------------------------- running a command


def _in_child() -> None:
    """In the child before exec, after its new session began:
    - get SIGTERM when the cell process dies (a kill -9 of the cell must not leave the script training
      on its own).
    - keep the cell's niceness. With Linux's autogroup scheduling (sched_autogroup_enabled=1, the
      default on desktop and many server kernels) a new session is a new scheduling group at nice 0,
      which competes with every other group as an equal: a sweep started with `nice -n 19` would see
      its script take a full share of the machine. Writing the nice value to /proc/self/autogroup
      gives the new group the cell's priority (raising niceness needs no privilege)."""
    die_with_parent(signal.SIGTERM)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0:
        # no autogroup (not Linux, or CONFIG_SCHED_AUTOGROUP off): OSError, and the niceness holds as is
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            try:
                os.write(fd, str(nice).encode())
            finally:
                os.close(fd)


def _tee(stream, log_path: Path, sink, on_line: Callable[[str], None] | None, tail: collections.deque | None):
    with open(log_path, "ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", errors="replace")
            if sink is not None:
                with contextlib.suppress(OSError, ValueError):  # a closed or broken echo never stops the tee
                    sink.write(line)
                    sink.flush()
            if on_line is not None:
                on_line(line)
            if tail is not None:
                tail.append(line.rstrip("\n"))
    stream.close()


def _same_file(stream: Any, path: Path) -> bool:
    """Whether `stream` (sys.stdout, ...) writes into the file at `path`."""
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _tree_rss_mb(pid: int) -> float | None:
    """Resident memory of the script and its children (evidence for an OOM kill)."""
    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:  # the tree changed while we looked
        return None


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the script's process group, SIGKILL it after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(argv: list[str], *, cwd: str | None, env: Mapping[str, str], out_path: Path, err_path: Path,
                on_stdout: Callable[[str], None] | None = None, on_tick: Callable[[int], None] | None = None,
                tick_s: float = 2.0, stop_grace_s: float = 10.0, tail_lines: int = 40,
                header: str = "") -> tuple[int, str]:
    """Run `argv` in its own process group, tee its output to the log files (appending, never
    overwriting), call `on_tick(pid)` every `tick_s` seconds while it runs and once after it exits.
    Returns (exit code, stderr tail). Any exception here (Ctrl-C, a kill of the cell) stops the
    whole process group first."""
    for p in (out_path, err_path):
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "ab") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}$ {shlex.join(argv)}\n".encode())
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_in_child)  # noqa: PLW1509  see _in_child
    except FileNotFoundError as e:
        raise ExternalTaskError(f"{header or 'command'}: cannot start {argv[0]!r} ({e.strerror}) in cwd "
                                f"{cwd or os.getcwd()}. Fix: use an absolute path or set task.cwd") from e
    tail: collections.deque = collections.deque(maxlen=tail_lines)
    # Under the sds launcher the cell's own stdout/stderr already are these log files: echo to
    # them only when they are somewhere else (a terminal, submitit's files), or every line is twice.
    out_sink = None if _same_file(sys.stdout, out_path) else sys.stdout
    err_sink = None if _same_file(sys.stderr, err_path) else sys.stderr
    threads = [
        threading.Thread(target=_tee, args=(proc.stdout, out_path, out_sink, on_stdout, None), daemon=True),
        threading.Thread(target=_tee, args=(proc.stderr, err_path, err_sink, None, tail), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        while True:
            try:
                proc.wait(timeout=tick_s)
                break
            except subprocess.TimeoutExpired:
                if on_tick is not None:
                    on_tick(proc.pid)
        for t in threads:
            t.join(timeout=10)
        if on_tick is not None:
            on_tick(proc.pid)
    except BaseException:
        _stop_group(proc, stop_grace_s)
        raise
    finally:
        if proc.poll() is None:
            _stop_group(proc, stop_grace_s)
    return proc.returncode, "\n".join(tail)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ----------------------------------------------------------------------------- train


class _Progress:
    """Probes -> heartbeats; checkpoint file -> a pointer checkpoint in the store."""

    phase = "train"

    def __init__(self, cfg: DictConfig, run: RunDir, task: ExternalTask, values: Mapping[str, Any], base: int):
        self.cfg, self.run, self.task = cfg, run, task
        self.probes = P.build_probes(probe_declarations(task, values, cfg), base_dir=run.path)
        for p in self.probes:
            if isinstance(p, P.FilesProbe):
                p.start(base)
        self.stdout_probes = [p for p in self.probes if isinstance(p, P.StdoutProbe)]
        self.ckpt_glob = (_render_glob(task.checkpoint_glob, values, cfg, "task.checkpoint.glob", run.path)
                          if task.checkpoint_glob else None)
        self.env_step, self.source = int(base), "checkpoint" if base else "start"
        self.curves = None
        if task.curves:
            self.curves = P.CurveMirror(_render_glob(str(task.curves["glob"]), values, cfg, "task.curves.glob",
                                                     run.path), step_key=str(task.curves["step_key"]),
                                        keys=dict(task.curves["keys"]), scale=float(task.curves.get("scale", 1)),
                                        last_step=int(base))
            self.curves.skip_existing()
        self.history: collections.deque = collections.deque(maxlen=64)
        self.last_ckpt: tuple | None = None
        self.peak_rss_mb = 0.0  # of the script's process tree: evidence when it dies of an OOM kill
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        for p in self.stdout_probes:
            p.feed(line)

    def read(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for p in self.probes:
            try:
                out[p.name] = p.read()
            except OSError:  # a file vanished or is unreadable this instant: no evidence, not a crash
                out[p.name] = None
        return out

    def tick(self, pid: int | None = None) -> None:
        with self.lock:
            readings = self.read()
            for name, v in readings.items():
                # The most advanced probe is the truth; a probe that lags (a metrics file on a
                # wall-clock timer) never pulls the step back.
                if v is not None and v > self.env_step:
                    self.env_step, self.source = v, name
            t = time.monotonic()
            self.history.append((t, self.env_step))
            while len(self.history) > 2 and t - self.history[0][0] > 60:
                self.history.popleft()
            t0, s0 = self.history[0]
            rate = (self.env_step - s0) / (t - t0) if t > t0 else None
            fields: dict[str, Any] = {"probe": self.source, "probes": readings, "phase": self.phase}
            if rate is not None:
                fields["steps_per_s"] = round(rate, 3)
            if pid is not None:
                fields["child_pid"] = pid
                rss = _tree_rss_mb(pid)
                if rss is not None:
                    self.peak_rss_mb = max(self.peak_rss_mb, rss)
                    fields.update(rss_mb=round(rss, 1), peak_rss_mb=round(self.peak_rss_mb, 1))
            self.run.heartbeat(self.env_step, self.task.total_steps, **fields)
            self.mirror_checkpoint()
            if self.curves is not None:
                for row in self.curves.new_rows():
                    self.run.append_metrics(row)

    def mirror_checkpoint(self) -> None:
        """Record the script's newest checkpoint in the store (checkpoints/ckpt_<step>.pkl holding a
        pointer, not a copy), so `plan` sees `resume` and resume knows the step it restarts from."""
        if not self.ckpt_glob:
            return
        found = P.find_checkpoint(self.ckpt_glob, **self.task.checkpoint_step)
        if found is None:
            return
        key = (str(found.path), found.mtime, found.size)
        if key == self.last_ckpt:
            return
        self.last_ckpt = key
        if found.step is not None:  # an exact step: the files probes count on from it
            for p in self.probes:
                if isinstance(p, P.FilesProbe):
                    p.rebase(found.step)
        step = found.step if found.step is not None else self.env_step
        self.run.save_checkpoint(step, {"external": True, "path": str(found.path), "mtime": found.mtime,
                                        "size": found.size, "step": step,
                                        "step_from": "file" if found.step is not None else "probe"}, keep=3)


def resume_point(cfg: DictConfig, run: RunDir, task: ExternalTask, values: Mapping[str, Any]
                 ) -> tuple[Path, int] | None:
    """The script's checkpoint to resume from and its env step, or None to start from scratch.
    The step comes from the file when `task.checkpoint.step` says how to read it, else from the
    store pointer recorded when the file was written (the probed step then)."""
    if not task.checkpoint_glob:
        return None
    found = P.find_checkpoint(_render_glob(task.checkpoint_glob, values, cfg, "task.checkpoint.glob", run.path),
                              **task.checkpoint_step)
    if found is None:
        return None
    if found.step is not None:
        return found.path, found.step
    for step, path in reversed(run.checkpoints()):
        with contextlib.suppress(Exception):
            ptr = RunDir.read_checkpoint(path)
            if isinstance(ptr, dict) and ptr.get("path") == str(found.path) and ptr.get("mtime") == found.mtime:
                return found.path, int(ptr["step"])
    return found.path, 0


def record_resume(run: RunDir, task: ExternalTask, attempt: int, checkpoint: Path, step: int) -> dict:
    """Record in the cell's state.json (`resumes`) that this attempt restarts from `checkpoint` at
    env step `step`: how far the previous attempt had got (its last probed step), the env frames
    that are trained again (lost), and what the script's resume does not restore
    (`task.resume_not_restored`, e.g. SafeDreamer's replay buffer). The report repeats it."""
    prog = run.read_progress() or {}
    reached = max(int(prog.get("env_step") or 0), int(step))  # the checkpoint can be newer than the last heartbeat
    entry = {"attempt": attempt, "checkpoint": str(checkpoint), "from_step": int(step), "reached": reached,
             "lost_frames": max(0, reached - int(step)), "not_restored": list(task.resume_not_restored),
             "at": now()}
    run.update_state(lambda s: s.setdefault("resumes", []).append(entry))
    return entry


def _write_config_file(cfg: DictConfig, run: RunDir) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c.pop("hydra", None)
    atomic_write_bytes(run.path / "external" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(c)).encode())


def _cwd(task: ExternalTask, values: Mapping[str, Any], cfg: DictConfig) -> str | None:
    return render(task.cwd, values, cfg, "task.cwd") if task.cwd else None


def train(cfg: DictConfig, run: RunDir) -> int:
    """Run the script until it exits; return the env step it reached. Resumes from the script's
    checkpoint (adding `task.resume_args`) when there is one. Raises ExternalCommandFailed on a
    nonzero exit (with the stderr tail), and ExternalTaskError when it exits 0 short of
    `task.total_steps` without its done marker."""
    task = validate_task(cfg, run)
    values = cell_values(cfg, run, task)
    if "config_file" in str(task.command) + str(task.eval.get("command")):
        _write_config_file(cfg, run)
    resume = resume_point(cfg, run, task, values)
    resume_argv: list[str] = []
    base = 0
    if resume is not None:
        ckpt, base = resume
        values = {**values, "checkpoint": str(ckpt)}
        resume_argv = [render(a, values, cfg, f"task.resume_args[{i}]") for i, a in enumerate(task.resume_args)]
        values["resume_flag"] = shlex.join(resume_argv)
        run.truncate_curves_after(base)
        record_resume(run, task, int(values["attempt"]), ckpt, base)
    kargs, kenv = knob_settings(task, values, cfg)
    argv = render_command(task.command, values, cfg, "task.command", resume=resume_argv, knobs=kargs)
    env = {**{k: render(v, values, cfg, f"task.env.{k}") for k, v in task.env.items()}, **kenv}
    out_path, err_path = run.attempt_log_paths(int(values["attempt"]))

    progress = _Progress(cfg, run, task, values, base)
    run.heartbeat(base, task.total_steps, probe=progress.source, phase="train",
                  resumed_from=str(resume[0]) if resume else None)
    code, tail = run_command(argv, cwd=_cwd(task, values, cfg), env=env, out_path=out_path, err_path=err_path,
                             on_stdout=progress.feed, on_tick=progress.tick, tick_s=task.probe_every_s,
                             stop_grace_s=task.stop_grace_s, tail_lines=task.stderr_tail_lines,
                             header=f"train attempt {values['attempt']}")
    if code != 0:
        raise ExternalCommandFailed(
            f"{run.path}: the training command {_exit_text(code)} at env step {progress.env_step} "
            f"(probe {progress.source}); full output in {err_path}. Command: {shlex.join(argv)}\n"
            f"--- stderr tail ---\n{tail}")
    marker = render(task.done_marker, values, cfg, "task.done_marker") if task.done_marker else None
    if marker and not os.path.isabs(marker):
        marker = str(run.path / marker)
    if progress.env_step < task.total_steps and task.exit_0_is_done:
        # The script exits 0 only once its own loop reached its budget, but its files can lag behind
        # (SafeDreamer: no checkpoint, metrics row or replay flush at the end): the exit is the evidence.
        run.heartbeat(task.total_steps, task.total_steps, probe="exit 0", phase="train", probes=progress.read())
        run.update_state(lambda s: s.update(trained_by="exit 0", probed_step=progress.env_step))
        return task.total_steps
    if progress.env_step < task.total_steps and not (marker and P.expand_glob(marker)):
        raise ExternalTaskError(
            f"{run.path}: the training command exited 0 but its probes show env step {progress.env_step} "
            f"< task.total_steps {task.total_steps} (readings {progress.read()}), and no done marker"
            f"{' matches ' + marker if marker else ' is declared'}. The cell is not marked trained. Fix: make "
            f"task.total_steps match the script's step budget, fix the probes, or declare task.done_marker.")
    return progress.env_step  # the probed truth, even when the done marker vouches for completion


# ----------------------------------------------------------------------------- evaluate


def summarize(episodes: list[dict], cost_limit: float | None) -> dict:
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
    for p in sorted(P.expand_glob(pattern)):
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
    found = None
    if task.checkpoint_glob:
        found = P.find_checkpoint(_render_glob(task.checkpoint_glob, values, cfg, "task.checkpoint.glob", run.path),
                                  **task.checkpoint_step)
    attempt = int(values["attempt"])
    eval_dir = run.path / "external_eval" / kind / f"attempt_{attempt:02d}"
    eval_dir.mkdir(parents=True, exist_ok=True)
    env_id = (ev.get("env_id") or {}).get(kind, "")
    values.update(kind=kind, env_id=env_id, episodes=ev.get("episodes", ""), eval_dir=str(eval_dir))
    if found is not None:
        values["checkpoint"] = str(found.path)
    elif "checkpoint" in str(ev["command"]):
        raise ExternalTaskError(f"{run.path}: task.eval.command needs {{checkpoint}} but no file matches "
                                f"task.checkpoint.glob {task.checkpoint_glob!r}. Fix: check the glob against "
                                f"where the script writes its checkpoint")
    kargs, kenv = knob_settings(task, values, cfg)
    argv = render_command(ev["command"], values, cfg, f"task.eval.command ({kind})",
                          knobs=kargs if _names_knob_args(ev["command"]) else None)
    env = {**{k: render(v, values, cfg, f"task.env.{k}") for k, v in task.env.items()}, **kenv}
    out_path, err_path = run.attempt_log_paths(attempt)
    res = ev.get("results") or {}
    watch = _EpisodeWatch(run, task, kind, pattern=_render_glob(str(res["glob"]), values, cfg,
                                                                "task.eval.results.glob", eval_dir))
    code, tail = run_command(argv, cwd=_cwd(task, values, cfg), env=env, out_path=out_path, err_path=err_path,
                             on_tick=watch.tick, tick_s=task.probe_every_s, stop_grace_s=task.stop_grace_s,
                             tail_lines=task.stderr_tail_lines, header=f"eval {kind} attempt {attempt}")
    if code != 0:
        raise ExternalCommandFailed(f"{run.path}: the {kind} evaluation command {_exit_text(code)}; full output "
                                    f"in {err_path}. Command: {shlex.join(argv)}\n--- stderr tail ---\n{tail}")
    files, episodes = watch.episodes_written()
    if not episodes:
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
        return files, P.read_episodes(files, str(res.get("format", "jsonl")), dict(res.get("keys") or {}),
                                      records=res.get("records"))

    def tick(self, pid: int) -> None:
        try:
            n = len(self.episodes_written()[1])
        except (OSError, P.ProbeConfigError):
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
        "summary": summarize(episodes, None if cost_limit is None else float(cost_limit)),
        "source": {"command": argv, "files": [str(f) for f in files]},
    }
    if kind == "ood":
        out["ood_proxy"] = ev.get("ood_proxy")
    return out
