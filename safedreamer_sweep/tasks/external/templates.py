"""Fill the task's command templates: `{name}` from the cell's values, `{environ[NAME]}` from the
cell process's environment, `{dotted.key}` from the config; a command becomes an argv."""

from __future__ import annotations

import os
import shlex
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.tasks.external.errors import ExternalTaskError

MISSING = object()  # config_value's answer for a key the config does not have


def template_fields(template: str) -> list[str]:
    """Names referenced by `{...}` in a template (`{{` and `}}` are literal braces)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ExternalTaskError(f"template {template!r}: {e}. Fix: balance the braces; write {{{{ and "
                                f"}}}} for literal braces.") from e


def config_value(cfg: DictConfig, key: str) -> Any:
    """The config value at dotted path `key`, or MISSING."""
    try:
        v = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=False)
    except (ValueError, KeyError, TypeError, AttributeError):  # a malformed key such as `a..b`
        return MISSING
    return MISSING if v is None and not _has_key(cfg, key) else v


def _has_key(cfg: DictConfig, key: str) -> bool:
    *parents, last = key.split(".")
    node: Any = cfg
    for p in parents:
        if not isinstance(node, DictConfig) or p not in node:
            return False
        node = node[p]
    return isinstance(node, DictConfig) and last in node


def fill_template(template: str, values: Mapping[str, Any], cfg: DictConfig, what: str) -> str:
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
            v = _environ_value(field_name, values, template, what)
        else:
            v = _config_leaf(cfg, field_name, values, template, what)
        if conv == "r":
            v = repr(v)
        out.append(format(v, spec) if spec else str(v))
    return "".join(out)


def _environ_value(field_name: str, values: Mapping[str, Any], template: str, what: str) -> str:
    """{environ[NAME]} / {environ[NAME|default]}: the cell process's environment, e.g. the GPU the
    launcher assigned to this cell."""
    var, bar, default = field_name[len("environ["):-1].partition("|")
    if bar and var not in os.environ:
        return default
    if var not in os.environ and not values.get("_validating"):
        raise ExternalTaskError(f"{what}: {{{field_name}}} in {template!r}: environment variable {var} is "
                                f"not set in the cell process. Fix: set it (task.env cannot, it is "
                                f"applied to the script only), give a default {{environ[{var}|0]}}, "
                                f"or drop it from the template")
    return os.environ.get(var, "")


def _config_leaf(cfg: DictConfig, field_name: str, values: Mapping[str, Any], template: str, what: str) -> Any:
    """The single config value `{field_name}` names; an ExternalTaskError when there is none."""
    v = config_value(cfg, field_name)
    if v is MISSING:
        raise ExternalTaskError(
            f"{what}: {{{field_name}}} in {template!r} is neither a cell value "
            f"({', '.join(sorted(k for k in values if not k.startswith('_')))}), {{environ[NAME]}}, "
            f"nor a config key. Fix: correct the name, or add the key to the config "
            f"(e.g. +{field_name}=...).")
    if isinstance(v, DictConfig) or OmegaConf.is_list(v):
        raise ExternalTaskError(f"{what}: {{{field_name}}} in {template!r} is a config group, not a "
                                f"single value; name a leaf key such as {{{field_name}.<key>}}")
    return v


def fill_command(command: Any, values: Mapping[str, Any], cfg: DictConfig, what: str,
                 resume: list[str] | None = None, knobs: list[str] | None = None) -> list[str]:
    """The argv of a command template. A string is split like a shell would (no shell runs), a
    list is taken token by token; each token is filled, so a value with spaces stays one
    argument; a token that is exactly `{key}` of a config list becomes one argument per item (each
    item a template). A token that is exactly `{resume_flag}` becomes the resume arguments (or nothing);
    without such a token, resume arguments go at the end. A token `{knob_args}` becomes `knobs`
    (the task's knob arguments); without it, `knobs` go at the end (the eval command passes None)."""
    tokens = _command_tokens(command, what)
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
            argv.extend(fill_template(str(item), values, cfg, f"{what} ({tok}[{i}])") for i, item in enumerate(spliced))
            continue
        for whole in ("resume_flag", "knob_args"):
            if whole in template_fields(tok):
                raise ExternalTaskError(f"{what}: {{{whole}}} must be a whole argument (got {tok!r}); it expands "
                                        f"to several tokens")
        argv.append(fill_template(tok, values, cfg, what))
    if knobs and not knobs_placed:
        argv.extend(knobs)
    if resume and not placed:
        argv.extend(resume)
    return argv


def _command_tokens(command: Any, what: str) -> list[str]:
    """A command template's tokens: a string split like a shell would, a list item by item."""
    if isinstance(command, str):
        tokens = shlex.split(command)
    elif OmegaConf.is_list(command) or isinstance(command, (list, tuple)):
        tokens = [str(t) for t in command]
    else:
        raise ExternalTaskError(f"{what}: must be a string or a list of strings, got {command!r}. Fix: set "
                                f"task.command, e.g. \"python train.py --seed {{seed}} --logdir {{run_dir}}/out\"")
    if not tokens:
        raise ExternalTaskError(f"{what}: is empty. Fix: set the command that trains one cell")
    return tokens


def _list_value(tok: str, values: Mapping[str, Any], cfg: DictConfig) -> list | None:
    """The config list a token names when it is exactly `{dotted.key}` of a list, else None."""
    if not (tok.startswith("{") and tok.endswith("}")) or tok.count("{") != 1:
        return None
    name = tok[1:-1]
    if name in values or name.startswith("environ["):
        return None
    v = config_value(cfg, name)
    return list(v) if OmegaConf.is_list(v) else None


def names_knob_args(command: Any) -> bool:
    """Whether a command template has the whole-argument token `{knob_args}`."""
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command or []]
    return "{knob_args}" in tokens


def fill_glob(pattern: str, values: Mapping[str, Any], cfg: DictConfig, what: str, base: Path) -> str:
    """A glob template filled for the cell; a relative one is taken from `base`."""
    g = fill_template(pattern, values, cfg, what)
    return g if os.path.isabs(g) else str(base / g)
