"""The sweeper's settings (`hydra.sweeper.<key>`) read into SearchSettings, each key typed and ranged.

The keys hydra-optuna-sweeper 1.3 documents mean what they mean there, so a config switches by changing
one line (`hydra/sweeper=optuna` -> `hydra/sweeper=sds_optuna`): `sampler` (its `_target_` and kwargs,
or the name of one of its sampler configs: tpe, random, cmaes, nsgaii, grid, gp, qmc), `direction`,
`n_trials`, `n_jobs`, `study_name`, `storage`, `max_failure_rate` and `params` (the search space,
search/space.py). `n_trials` is the study's total, not a count of new trials. Ours: `seeds` (a trial is a
point evaluated on these tuning seeds), `aggregate` (mean or iqm over them), `objective` (the metric(s)
to optimize; null: the task's return value), `constraint` ({metric, limit}: metric - limit <= 0 is
feasible), `pruner` (median, asha, hyperband, none or a `_target_`), `prune` ({metric, warmup_steps,
cost_warmup_steps}), `test` ({seeds, top_k}: the best points re-run on fresh seeds) and `new_study`.

`prune.cost_warmup_steps` is how many env steps pass before a trial may be pruned on its cost (its seeds'
training cost above limit x (1 + cost_slack)): cost is often above the limit early in Lagrangian
training. Its default null means half of the cells' own budget, read from their heartbeats' total by the
driver (search/driver.py); no cost pruning while that total is unknown.

Every refusal is a SearchError (a PlanError: raised before anything is written) naming the key
(`hydra.sweeper.<key>`), the value, what is wrong and the fix; all bad keys are named at once.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safedreamer_sweep.sweep.errors import PlanError

if TYPE_CHECKING:
    import optuna


class _Grid(Protocol):
    """What the grid sampler needs of a search space (search/space.py's Space)."""

    def grid(self) -> dict[str, list[Any]]: ...


class SearchError(PlanError):
    """Bad search input (settings, search space, a study that differs from the stored one), refused
    before anything is written to the store. The message names the key, the cause and the fix."""


# hydra-optuna-sweeper's sampler config names (hydra/sweeper/sampler=<name>) -> Optuna's class
SAMPLERS: dict[str, str] = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "grid": "optuna.samplers.GridSampler",
    "gp": "optuna.samplers.GPSampler",
    "qmc": "optuna.samplers.QMCSampler",
}
PRUNERS: dict[str, str] = {
    "median": "optuna.pruners.MedianPruner",
    "asha": "optuna.pruners.SuccessiveHalvingPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "none": "optuna.pruners.NopPruner",
}
# instantiate's own keys: not kwargs of the class
_INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")

_Unit = Annotated[float, Field(ge=0.0, le=1.0)]
_Direction = Literal["minimize", "maximize"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Constraint(_Strict):
    metric: str = Field(min_length=1)
    limit: float


class _Prune(_Strict):
    metric: str | None = None
    warmup_steps: int = Field(default=0, ge=0)
    cost_warmup_steps: int | None = Field(default=None, ge=0)
    cost_slack: float = Field(default=1.0, ge=0.0)


class _Test(_Strict):
    seeds: list[int] = Field(min_length=1)
    top_k: int = Field(default=1, ge=1)


class _Schema(_Strict):
    """Every key of hydra.sweeper: its type and range (pydantic, strict: "3" is not an int)."""

    sampler: str | dict[str, Any] = "tpe"
    direction: _Direction | list[_Direction] = "minimize"
    n_trials: int = Field(default=20, gt=0)
    n_jobs: int | None = Field(default=None, ge=1)
    study_name: str | None = Field(default=None, min_length=1)
    storage: str | None = None
    max_failure_rate: _Unit = 0.0
    params: dict[str, str | int | float | bool | None] | None = None
    custom_search_space: None = None  # hydra-optuna-sweeper's; not supported (refused when set)
    seeds: list[int] | None = Field(default=None, min_length=1)
    aggregate: Literal["mean", "iqm"] = "mean"
    objective: str | list[str] | None = None
    constraint: _Constraint | None = None
    pruner: str | dict[str, Any] | None = None
    prune: _Prune = Field(default_factory=_Prune)
    test: _Test | None = None
    new_study: bool = False


# what a refused key should look like, for the message's fix
_FIX: dict[str, str] = {
    "sampler": "hydra.sweeper.sampler=tpe (or hydra/sweeper/sampler=tpe, or a _target_ such as optuna.samplers.TPESampler)",
    "direction": "hydra.sweeper.direction=maximize, or a list: hydra.sweeper.direction=[maximize,minimize]",
    "n_trials": "the study's total number of trials, a positive integer: hydra.sweeper.n_trials=20",
    "n_jobs": "how many trials run at once, at least 1: hydra.sweeper.n_jobs=2",
    "study_name": "a name (no '/'), or null for the app's name: hydra.sweeper.study_name=lr-search",
    "storage": "null (the study's journal in the store), a journal file path or an Optuna storage URL",
    "max_failure_rate": "a fraction between 0 and 1: hydra.sweeper.max_failure_rate=0.2",
    "params": "a mapping of override key -> search space, e.g. hydra.sweeper.params.agent.lr='tag(log,interval(1e-4,1e-2))'",
    "custom_search_space": "leave it null and put each dimension in hydra.sweeper.params (it ran Python per trial)",
    "seeds": "a list of distinct integer seeds: hydra.sweeper.seeds=[0,1,2], or null for the config's own seed",
    "aggregate": "hydra.sweeper.aggregate=mean or hydra.sweeper.aggregate=iqm",
    "objective": "a metric path such as id.return_mean, a list aligned with direction, or null (the task's return value)",
    "constraint": "{metric: id.cost_mean, limit: 25.0}, or null",
    "pruner": f"one of {sorted(PRUNERS)} (hydra.sweeper.pruner=asha), a _target_ such as optuna.pruners.MedianPruner, or null",
    "prune": "{metric: episode_return, warmup_steps: 0, cost_warmup_steps: null, cost_slack: 1.0} (steps are env steps, >= 0)",
    "test": "{seeds: [100, 101], top_k: 2} with seeds apart from the tuning seeds, or null",
    "new_study": "hydra.sweeper.new_study=true or false",
}


@dataclass(frozen=True)
class PruneSettings:
    metric: str | None = None
    warmup_steps: int = 0
    # Env steps before a trial may be pruned for a cost far above the limit (a Lagrangian learner's cost
    # is high early by design). None: half of the cells' own budget (their heartbeats' total).
    cost_warmup_steps: int | None = None
    cost_slack: float = 1.0  # "far above": the seeds' training cost > limit x (1 + cost_slack)


@dataclass(frozen=True)
class SearchSettings:
    """hydra.sweeper's keys, checked and normalized: `sampler` and `pruner` as {"_target_": class path,
    **kwargs} (kwargs that are None dropped: None means the class's default), `directions` always a
    list, `objective` a list aligned with it (or None: the task's return value)."""

    sampler: dict[str, Any]
    directions: list[str]
    n_trials: int
    n_jobs: int | None = None
    study_name: str | None = None
    storage: str | None = None
    max_failure_rate: float = 0.0
    params: dict[str, str] = field(default_factory=dict)
    seeds: list[int] | None = None
    aggregate: str = "mean"
    objective: list[str] | None = None
    constraint: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    prune: PruneSettings = field(default_factory=PruneSettings)
    test: dict[str, Any] | None = None
    new_study: bool = False

    @property
    def pruner_name(self) -> str | None:
        """The pruner's short name (median, asha, hyperband), None for no pruning."""
        if self.pruner is None:
            return None
        return next((k for k, v in PRUNERS.items() if v == self.pruner["_target_"] and k != "none"), None)


def search_settings(conf: Mapping[str, Any]) -> SearchSettings:
    """SearchSettings from the sweeper's config (a plain, resolved dict). SearchError names every bad key.
    Hydra's own keys of the node (`_target_`, `defaults`) are ignored."""
    given = {k: v for k, v in conf.items() if k not in ("_target_", "defaults")}
    try:
        raw = _Schema.model_validate(given)
    except ValidationError as e:
        raise SearchError(_refusal(_pydantic_lines(e, given))) from None
    problems: list[str] = []
    sampler = _class_spec("sampler", raw.sampler, SAMPLERS, problems)
    pruner = None if raw.pruner is None else _class_spec("pruner", raw.pruner, PRUNERS, problems)
    if pruner is not None and pruner["_target_"] == PRUNERS["none"]:
        pruner = None
    directions: list[str] = [raw.direction] if isinstance(raw.direction, str) else list(raw.direction)
    objective = [raw.objective] if isinstance(raw.objective, str) else raw.objective
    problems += _cross_checks(raw, directions, objective)
    if problems:
        raise SearchError(_refusal(problems))
    return SearchSettings(
        sampler=sampler, directions=directions, n_trials=raw.n_trials, n_jobs=raw.n_jobs,
        study_name=raw.study_name, storage=raw.storage, max_failure_rate=float(raw.max_failure_rate),
        params={str(k): _param_text(v) for k, v in (raw.params or {}).items()}, seeds=raw.seeds,
        aggregate=raw.aggregate, objective=objective,
        constraint=None if raw.constraint is None else raw.constraint.model_dump(),
        pruner=pruner, prune=PruneSettings(**raw.prune.model_dump()),
        test=None if raw.test is None else raw.test.model_dump(), new_study=raw.new_study)


def _refusal(lines: list[str]) -> str:
    head = "the search cannot start as configured (nothing was written):"
    return head + "".join(f"\n  {line}" for line in lines)


def _pydantic_lines(e: ValidationError, given: Mapping[str, Any]) -> list[str]:
    """One line per refused key from pydantic's errors (a union gives one error per member; they are
    joined): the key, its value, the causes and the fix."""
    by_key: dict[str, list[Any]] = {}
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_member(str(p))]
        by_key.setdefault(".".join(loc), []).append(err)
    return [_pydantic_line(key, errs, given) for key, errs in by_key.items()]


def _is_union_member(part: str) -> bool:
    return part.startswith(("str", "dict[", "list[", "literal[", "int", "float", "bool", "none", "_"))


def _pydantic_line(dotted: str, errs: list[Any], given: Mapping[str, Any]) -> str:
    top = dotted.split(".")[0]
    key = "hydra.sweeper." + dotted
    if any(err["type"] == "extra_forbidden" for err in errs):
        valid = sorted(_Schema.model_fields) if "." not in dotted else None
        return (f"{key}: unknown key" + (f" (valid keys: {', '.join(valid)})" if valid else "")
                + ". Fix: remove it or correct its spelling" + ("" if valid else f"; {_FIX.get(top, '')}"))
    value = given.get(top) if "." not in dotted else errs[0].get("input")
    causes = "; or ".join(dict.fromkeys(str(err["msg"]) for err in errs))
    return f"{key}={value!r}: {causes}. Fix: {_FIX.get(top, 'see the sweeper config')}"


def _cross_checks(raw: _Schema, directions: list[str], objective: list[str] | None) -> list[str]:
    out = []
    if objective is not None and len(objective) != len(directions):
        out.append(f"hydra.sweeper.objective={objective}: {len(objective)} metric(s) but hydra.sweeper.direction has "
                   f"{len(directions)} ({directions}). Fix: give one direction per objective metric")
    if raw.seeds is not None and len(set(raw.seeds)) != len(raw.seeds):
        dup = sorted({s for s in raw.seeds if raw.seeds.count(s) > 1})
        out.append(f"hydra.sweeper.seeds={raw.seeds}: seed(s) {dup} given twice (a trial would count one seed "
                   f"twice). Fix: list each seed once, e.g. hydra.sweeper.seeds={sorted(set(raw.seeds))}")
    if raw.test is not None:
        tseeds = raw.test.seeds
        if len(set(tseeds)) != len(tseeds):
            out.append(f"hydra.sweeper.test.seeds={tseeds}: a seed given twice. Fix: list each seed once")
        overlap = sorted(set(tseeds) & set(raw.seeds or []))
        if overlap:
            out.append(f"hydra.sweeper.test.seeds={tseeds}: seed(s) {overlap} are tuning seeds too (hydra.sweeper.seeds="
                       f"{raw.seeds}); a test on them is not a test. Fix: test seeds apart from the tuning seeds, "
                       f"e.g. hydra.sweeper.test.seeds=[{max(raw.seeds or [0]) + 100}]")
    if raw.constraint is not None and objective is not None and raw.constraint.metric in objective and len(objective) == 1:
        out.append(f"hydra.sweeper.constraint.metric={raw.constraint.metric}: it is the objective itself. "
                   f"Fix: constrain another metric (e.g. id.cost_mean) or drop the constraint")
    return out


def _param_text(value: str | float | bool | None) -> str:
    """A params value as override text: strings as given, YAML scalars as Hydra writes them."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _class_spec(key: str, value: str | dict[str, Any], names: dict[str, str], problems: list[str]) -> dict[str, Any]:
    """{"_target_": class path, **kwargs} from a short name or an instantiate-style dict; a problem line
    (naming what is available) for an unknown class or a kwarg the class does not take."""
    if isinstance(value, str):
        spec: dict[str, Any] = {"_target_": names.get(value, value)}
    else:
        spec = {"_target_": value.get("_target_")}
        spec.update({k: v for k, v in value.items() if k not in _INSTANTIATE_KEYS and v is not None})
    target = spec["_target_"]
    if key == "sampler" and target in ("motpe", "hydra_plugins.hydra_optuna_sweeper.config.raise_motpe_removed"):
        problems.append("hydra.sweeper.sampler: the 'motpe' sampler was removed in Optuna 4 (TPESampler handles several "
                        "objectives). Fix: hydra.sweeper.sampler=tpe")
        return spec
    base = "BaseSampler" if key == "sampler" else "BasePruner"
    cls = _import_class(target) if isinstance(target, str) else None
    if cls is None or not _subclass_of(cls, base) or (key == "pruner" and target not in names.values()):
        available = ", ".join(f"{n} ({t})" for n, t in names.items())
        problems.append(f"hydra.sweeper.{key}={value!r}: unknown {key} {target!r} (not an optuna.{key}s.{base} "
                        f"{'this sweeper supports' if key == 'pruner' else 'subclass'}). Fix: one of {available}")
        return spec
    accepted = inspect.signature(cls).parameters
    unknown = sorted(k for k in spec if k != "_target_" and k not in accepted)
    if unknown:
        valid = sorted(k for k in accepted if k not in ("args", "kwargs"))
        problems.append(f"hydra.sweeper.{key}: {target} takes no argument(s) {unknown}. Fix: use its arguments {valid}")
    return spec


def _import_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    if not module:
        return None
    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return obj if isinstance(obj, type) else None


def _subclass_of(cls: type, base: str) -> bool:
    import optuna

    return issubclass(cls, optuna.samplers.BaseSampler if base == "BaseSampler" else optuna.pruners.BasePruner)


def build_sampler(s: SearchSettings, space: _Grid | None = None) -> optuna.samplers.BaseSampler:
    """The sampler the settings name, made with their kwargs. GridSampler (hydra/sweeper/sampler=grid)
    needs the space: its grid is each dimension's values (choices, or a range's steps)."""
    import optuna

    cls = _import_class(s.sampler["_target_"])
    if cls is None or not issubclass(cls, optuna.samplers.BaseSampler):
        raise SearchError(f"hydra.sweeper.sampler: {s.sampler['_target_']!r} is not an optuna.samplers.BaseSampler. "
                          f"Fix: one of {sorted(SAMPLERS)}")
    kwargs = {k: v for k, v in s.sampler.items() if k != "_target_"}
    if cls is optuna.samplers.GridSampler:
        if space is None:
            raise SearchError("hydra.sweeper.sampler=grid: the grid sampler needs the search space. "
                              "Fix: call build_sampler(settings, space)")
        kwargs["search_space"] = space.grid()
    return cls(**kwargs)


def build_pruner(s: SearchSettings) -> optuna.pruners.BasePruner:
    """The pruner the settings name, made with their kwargs; NopPruner when none."""
    import optuna

    if s.pruner is None:
        return optuna.pruners.NopPruner()
    cls = _import_class(s.pruner["_target_"])
    if cls is None or not issubclass(cls, optuna.pruners.BasePruner):
        raise SearchError(f"hydra.sweeper.pruner: {s.pruner['_target_']!r} is not an optuna.pruners.BasePruner. "
                          f"Fix: one of {sorted(PRUNERS)}")
    return cls(**{k: v for k, v in s.pruner.items() if k != "_target_"})
