"""The sweeper's structured config in Hydra's ConfigStore. hydra-optuna-sweeper's documented keys mean
the same (`params` with interval, int(interval), range, choice, tag(log, ...); `sampler` incl. seed, and
the `hydra/sweeper/sampler` group tpe | random | cmaes | nsgaii | qmc | gp | grid; `direction`, a list
for several objectives; `n_trials`; `n_jobs`; `study_name`; `storage`; `max_failure_rate`), so a config
switches with `override hydra/sweeper: sds_optuna`. The keys after them are ours: every key is checked
by type and range in safedreamer_sweep/search/settings.py before anything is written."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = True  # trials in flight are not asked twice (Optuna's default; no barrier here)


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    n_startup_trials: int = 1
    sigma0: float | None = None


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConfig:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class GPSamplerConfig:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10


@dataclass
class SdsOptunaConf:
    _target_: str = "hydra_plugins.sds_optuna.sweeper.SdsOptunaSweeper"
    _recursive_: bool = False  # the sampler arrives as its config (checked, then made by search/settings.py)
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])
    # --- hydra-optuna-sweeper's keys
    sampler: Any = None
    direction: Any = None          # minimize | maximize | a list; null: the task's (apps minimize, RL maximizes return)
    study_name: str | None = None  # null: the app's job name (`safedreamer_sweep` for the built-in)
    storage: str | None = None  # null: Optuna's journal file in <store>/studies/<study_name>/journal.log
    n_trials: int = 20             # the study's total: a re-run continues toward it
    n_jobs: int | None = None   # trials in flight at once (null: as many as the launcher has slots for)
    max_failure_rate: float = 0.0
    params: Any = None             # the search space, key -> interval(...) | int(interval(...)) | range | choice | tag(log, ...)
    # --- ours
    seeds: list[int] | None = None  # a trial is a point on these seeds, each seed an ordinary cell
    aggregate: str = "mean"        # mean | iqm of the seeds' values (the spread is kept beside it)
    objective: Any = None          # metric path(s), e.g. id.return_mean; null: the task's (an app's return value)
    constraint: Any = None         # {metric, limit}; null: RL tasks use id.cost_mean <= the task's cost_limit
    pruner: Any = None             # median | asha | hyperband | none, or {_target_: optuna.pruners..., ...}
    prune: dict[str, Any] = field(default_factory=lambda: {"metric": None, "warmup_steps": 0, "cost_warmup_steps": None,
                                                           "cost_slack": 1.0})
    test: Any = None               # {seeds: [100, 101], top_k: 2}: the best points re-run on fresh seeds
    new_study: bool = False        # true: a study of this name with another identity is set aside, a new one begins


_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="sds_optuna", node=SdsOptunaConf, provider="sds_optuna")
for _name, _node in (("tpe", TPESamplerConfig), ("random", RandomSamplerConfig), ("cmaes", CmaEsSamplerConfig),
                     ("nsgaii", NSGAIISamplerConfig), ("qmc", QMCSamplerConfig), ("gp", GPSamplerConfig)):
    _cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="sds_optuna")
