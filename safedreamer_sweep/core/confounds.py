"""Confound check: the configs on the `config` axis may differ only in the declared ablation knobs.

The seeds' baseline ran with `rew_rms: True` and the variants with `False`; every comparison in
the paper was confounded and nobody saw it. Here the resolved run configs of the planned cells are
compared key by key. A key is a confound when the set of values it takes differs between configs
and it is not an ablation knob (`sweep.ablation_knobs`). Seeds never count, nor does a key swept
as its own axis (it takes the same set of values under every config). Configs are always labelled
by their exact config name (RunSpec.config), never by matching a substring of a path.
Pure functions: the planner refuses or logs what they find (sweep/checks.py, check_confounds), the
report and `safedreamer-sweep confounds` show it.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safedreamer_sweep.core.identity import RunSpec, flatten

_ABSENT = "<absent>"
# Keys that vary by design between cells of one matrix.
_NEVER_CONFOUNDS = ("seed",)


@dataclass(frozen=True)
class Confound:
    """One key whose values differ between configs: {config name: [values it takes]}."""

    key: str
    values: dict[str, list[Any]] = field(default_factory=dict)


def is_knob(key: str, knobs: Iterable[str]) -> bool:
    """`key` is covered by a knob: equal, a sub-key of it (`agent.u` covers `agent.u.kappa`), or
    a glob match (`agent.*.enabled`)."""
    for k in knobs:
        k = str(k)
        if key == k or key.startswith(k + ".") or fnmatch.fnmatchcase(key, k):
            return True
    return False


def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def find_confounds(specs: Iterable[RunSpec], ablation_knobs: Iterable[str]) -> list[Confound]:
    """Every non-knob, non-seed key whose set of values differs between the configs of `specs`.
    Fewer than two configs: nothing to compare, no confounds."""
    knobs = list(ablation_knobs or [])
    flat_by_config: dict[str, list[dict[str, Any]]] = {}
    for s in specs:
        flat_by_config.setdefault(s.config, []).append(flatten(s.run_config))
    if len(flat_by_config) < 2:
        return []
    keys = sorted({k for flats in flat_by_config.values() for f in flats for k in f})
    out = []
    for key in keys:
        if key in _NEVER_CONFOUNDS or is_knob(key, knobs):
            continue
        per_config: dict[str, list[Any]] = {}
        for config, flats in flat_by_config.items():
            seen: dict[str, Any] = {}
            for f in flats:
                v = f.get(key, _ABSENT)
                seen.setdefault(_hashable(v), v)
            per_config[config] = list(seen.values())  # in order of first appearance
        signatures = {tuple(sorted(_hashable(v) for v in vals)) for vals in per_config.values()}
        if len(signatures) > 1:
            out.append(Confound(key=key, values=per_config))
    return out


def format_confounds(confounds: Sequence[Confound]) -> str:
    """One line per confounded key: `  agent.rew_rms: v2_baseline=True  v2_full=False`."""
    lines = []
    for c in confounds:
        vals = "  ".join(f"{cfg}={'|'.join(_show(v) for v in vs)}" for cfg, vs in c.values.items())
        lines.append(f"  {c.key}: {vals}")
    return "\n".join(lines)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def specs_for_overrides(conf_dir: str, overrides: Sequence[str]) -> list[RunSpec]:
    """Compose the app config once per `config` choice (and per seed) of a multirun command line,
    without launching: `config=a,b seed=0,1 x=y` -> RunSpecs. With no `config=` override the
    embedded default matrix (hydra.sweeper.params.config) is used. Other sweep axes are expanded too."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for ov in parsed:
        if ov.is_sweep_override():
            axes[ov.get_key_element()] = [str(v) for v in ov.sweep_string_iterator()]
        else:
            fixed.append(str(ov.input_line))
    if not any(o.get_key_element() == "hydra/launcher" for o in parsed):
        # Nothing is launched here; the basic launcher keeps composition independent of plugins.
        fixed.append("hydra/launcher=basic")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        if not any(o.get_key_element() == "config" for o in parsed):
            base = compose(config_name="sweep", overrides=fixed, return_hydra_config=True)
            params = base.hydra.sweeper.get("params") or {}
            for k, v in params.items():
                if k not in axes:
                    axes[k] = [x.strip() for x in str(v).split(",")]
        names = list(axes)
        specs = []
        for combo in itertools.product(*(axes[n] for n in names)) if names else [()]:
            ovs = fixed + [f"{n}={v}" for n, v in zip(names, combo)]
            cfg = compose(config_name="sweep", overrides=ovs, return_hydra_config=True)
            choice = cfg.hydra.runtime.choices.get("config")
            specs.append(RunSpec.from_cfg(cfg, config_name=str(choice), overrides=tuple(ovs)))
    return specs
