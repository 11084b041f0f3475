"""A job's config and identity: each Hydra job override list composed (or derived from its seed
group's composed job) into a RunSpec with its cell label.

A cell's label is the `config` choice (the built-in app) or the app's job name, followed by the
overrides the sweep itself varies, so keys swept on the command line, in hydra.sweeper.params or by
a sweeper such as Optuna define distinct cells, while a changed key that nobody swept is still a
conflict (the mislabel trap). Jobs that differ only by a plain `seed=<int>` are composed once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from safedreamer_sweep.core.code_fingerprint import absolute_code_globs
from safedreamer_sweep.core.identity import (
    IDENTITY_EXCLUDE,
    RunSpec,
    cell_label,
    config_choice,
    declared_exclusions,
    identity_excluded,
    identity_hash,
    resolved_without_hydra,
)
from safedreamer_sweep.sweep.checks import validate_job
from safedreamer_sweep.sweep.errors import PlanError
from safedreamer_sweep.sweep.settings import absolute_store_root


def _compose_job(config_loader: Any, config: DictConfig, overrides: Sequence[str],
                cwd: str | None = None) -> DictConfig:
    """The composed per-job config of one override list, as Hydra composes it (store.root made absolute).
    A job the sds sweeper composed already is not composed again (shapes.take_composed)."""
    from safedreamer_sweep.sweep.shapes import take_composed

    sweep_cfg = take_composed(config, overrides)
    if sweep_cfg is None:
        sweep_cfg = config_loader.load_sweep_config(config, list(overrides))
    if OmegaConf.select(sweep_cfg, "store.root", default=None) is not None:
        with open_dict(sweep_cfg):
            sweep_cfg.store.root = str(absolute_store_root(sweep_cfg, cwd))
    if OmegaConf.select(sweep_cfg, "task.kind", default=None) == "external" and sweep_cfg.task.get("code"):
        with open_dict(sweep_cfg):  # a cell process started elsewhere hashes the same files
            sweep_cfg.task.code = absolute_code_globs(sweep_cfg)
    return sweep_cfg


def _task_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides recorded in spec.json: the job's own, without hydra.* settings."""
    return tuple(o for o in overrides if not o.startswith("hydra"))


def _override_key(text: str) -> tuple[str, str]:
    """(key, value text) of one override string: `+a.b=1` -> ("a.b", "1")."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def swept_keys(config: DictConfig, job_overrides: Sequence[Sequence[str]] = ()) -> set[str]:
    """The keys this sweep varies: a sweep on the command line (`a=1,2`, `lr=interval(0,1)`), a key
    of hydra.sweeper.params (the basic sweeper's and Optuna's search space), or a key whose value
    differs between the jobs of this launch."""
    keys: set[str] = set()
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if params:
        keys.update(str(k).lstrip("+~") for k in params)
    task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    if task:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        except Exception:  # noqa: BLE001 (Hydra has parsed these already; never fail planning on them)
            parsed = []
        keys.update(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())
    values: dict[str, set[str]] = {}
    for ov in job_overrides:
        for text in ov:
            k, v = _override_key(str(text))
            values.setdefault(k, set()).add(v)
    keys.update(k for k, vs in values.items() if len(vs) > 1)
    return {k for k in keys if not k.startswith("hydra.") and k != "hydra"}


def cell_base(cfg: DictConfig) -> tuple[str, str | None]:
    """(label base, the override key it stands for): the `config` group choice of the built-in app
    (key "config"), else the app's job name (no key)."""
    try:
        return config_choice(cfg), "config"
    except ValueError:
        return str(OmegaConf.select(cfg, "hydra.job.name", default=None) or "app"), None


def job_spec(config_loader: Any, config: DictConfig, overrides: Sequence[str],
             cwd: str | None = None, swept: set[str] | None = None) -> tuple[RunSpec, DictConfig]:
    """The RunSpec and the composed per-job config of one override list (store.root made absolute).
    Its label: cell_base, then every override of `swept` (default: swept_keys(config)) that is not
    the seed, the base or a key outside the identity. PlanError for a config that is not a valid
    cell (e.g. a seed that is not an integer)."""
    sweep_cfg = _compose_job(config_loader, config, overrides, cwd)
    try:
        spec = cell_spec(sweep_cfg, overrides, swept_keys(config) if swept is None else swept)
    except ValueError as e:
        raise PlanError(f"job {' '.join(overrides)}: {e}") from e
    return spec, sweep_cfg


def cell_spec(cfg: DictConfig, overrides: Sequence[str], swept: set[str]) -> RunSpec:
    """The RunSpec of one job's composed config: label = cell_base, then the job's overrides of
    `swept` keys other than the seed, the base and keys outside the identity. ValueError for a
    config that is not a valid cell (a seed that is not an integer, a bad sds.identity_exclude)."""
    base, base_key = cell_base(cfg)
    sds = OmegaConf.to_container(cfg.sds, resolve=True) if "sds" in cfg else {}
    excluded = (*IDENTITY_EXCLUDE, *declared_exclusions({"sds": sds}))
    label = cell_label(base, [(k, v) for k, v in map(_override_key, _task_overrides(overrides))
                              if k in swept and k not in ("seed", base_key) and not identity_excluded(k, excluded)])
    return RunSpec.from_cfg(cfg, config_name=label, overrides=_task_overrides(overrides))


# `seed=<int>` exactly as Hydra's grammar reads an integer: the one override the fast path substitutes.
_SEED_RE = re.compile(r"^seed=(-?(?:0|[1-9][0-9]*))$")


def _seed_split(overrides: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
    """(the other overrides, the seed) when the job sets the seed with one plain `seed=<int>`."""
    idx = [i for i, o in enumerate(overrides) if o.lstrip("+~").startswith("seed=")]
    if len(idx) != 1:
        return None
    m = _SEED_RE.match(overrides[idx[0]])
    if not m:
        return None
    return tuple(o for i, o in enumerate(overrides) if i != idx[0]), int(m.group(1))


def _seed_is_a_leaf(cfg: DictConfig) -> bool:
    """True when changing the top-level seed changes nothing else in the resolved config (no other
    key interpolates it), i.e. a job's config is its group's config with the seed leaf substituted.
    Checked by resolving the composed config with two different seeds."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return False
    try:
        a = resolved_without_hydra(cfg)
        other = cfg.copy()
        with open_dict(other):
            other.seed = seed + 1
        b = resolved_without_hydra(other)
    except Exception:  # noqa: BLE001 (anything unusual: compose every job instead)
        return False
    a.pop("seed", None)
    b.pop("seed", None)
    return a == b


@dataclass
class _Group:
    """The jobs that differ only by `seed=<int>`: composed once, each job's spec derived."""

    cfg: DictConfig
    spec: RunSpec
    fast: bool


def plan_specs(job_overrides: Sequence[Sequence[str]], *, config_loader: Any, config: DictConfig,
               fast: bool = True) -> list[tuple[RunSpec, DictConfig, DictConfig | None]]:
    """(spec, settings cfg, composed cfg or None) of every job, each job validated.

    Fast path: jobs that differ only by a plain `seed=<int>` are composed once (the first of them);
    every other job's resolved run config is that one with the `seed` leaf substituted, then hashed.
    Exactly what composing it would give, as long as nothing else interpolates the seed: that is
    checked on the composed config (_seed_is_a_leaf); if it fails, or for any other override form,
    every job is composed through Hydra. The composed cfg is None for derived jobs (PlannedCell
    composes it when it is submitted)."""
    out: list[tuple[RunSpec, DictConfig, DictConfig | None]] = []
    groups: dict[tuple[str, ...], _Group] = {}
    swept = swept_keys(config, job_overrides)
    for ov in job_overrides:
        ov = list(ov)
        split = _seed_split(ov) if fast else None
        g = groups.get(split[0]) if split else None
        if g is not None and g.fast:
            seed = split[1]  # type: ignore[index]
            if seed < 0:  # the one key a derived job does not get checked by validate_job
                raise PlanError(f"job {' '.join(ov)}: seed={seed} is not allowed: must be an integer >= 0. Fix: seed=0")
            rc = dict(g.spec.run_config)
            rc["seed"] = seed
            spec = RunSpec(config=g.spec.config, seed=seed, hash=identity_hash(rc, g.spec.app), run_config=rc,
                           overrides=_task_overrides(ov), done_when=g.spec.done_when, code=g.spec.code,
                           primary=g.spec.primary, app=g.spec.app)
            out.append((spec, g.cfg, None))
            continue
        spec, cfg = job_spec(config_loader, config, ov, swept=swept)
        if g is None or not g.fast:  # a fast group's first job validates for it (only the seed differs after it)
            validate_job(cfg, ov)
        if split and split[0] not in groups:
            groups[split[0]] = _Group(cfg=cfg, spec=spec, fast=_seed_is_a_leaf(cfg))
        out.append((spec, cfg, cfg))
    return out

