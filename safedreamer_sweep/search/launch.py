"""A study's launch, the stages hydra/sweeper=sds_optuna calls in order: its settings and search space
checked (nothing written before), the study opened in the store (resumed, or refused by the key that
differs), the sweep planned with no cells yet, the driver run (search/driver.py), then Hydra's
optimization_results.yaml, the report and the sweep's hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.identity import IDENTITY_EXCLUDE, app_of, identity_excluded
from safedreamer_sweep.core.store_format import record_if_new
from safedreamer_sweep.search.driver import Objective, StudyDriver
from safedreamer_sweep.search.settings import SearchError, SearchSettings, build_pruner, build_sampler, search_settings
from safedreamer_sweep.search.space import Space, parse_space
from safedreamer_sweep.search.study import open_study
from safedreamer_sweep.search.trials import EVAL_SUMMARY_KEYS
from safedreamer_sweep.sweep.launch import Sweep, plan_sweep, say


def split_arguments(arguments: list[str], params: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The command line's overrides: a sweep (`lr=interval(0.001,0.1)`) joins the search space (and
    replaces a `params` entry of that key, as hydra-optuna-sweeper does), any other is fixed for every
    trial. Returns (the search space as key -> override text, the fixed overrides as typed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space = {str(k): str(v) for k, v in (params or {}).items()}
    fixed: list[str] = []
    for text, o in zip(arguments, OverridesParser.create().parse_overrides(arguments)):
        if o.is_sweep_override():
            space[o.get_key_element()] = text.split("=", 1)[1]
        else:
            space.pop(o.get_key_element().lstrip("+~"), None)
            fixed.append(text)
    return space, fixed


def task_kind(config: DictConfig) -> str:
    """builtin | external | app: what a cell's result is (evaluations, or the task function's return)."""
    kind = OmegaConf.select(config, "task.kind", default=None)
    return str(kind) if kind in ("builtin", "external") else "app"


def task_defaults(conf: dict[str, Any], config: DictConfig) -> dict[str, Any]:
    """The sweeper's config with the task's defaults where it says null: the built-in and an external
    task maximize `id.return_mean` under `id.cost_mean <= <the task's cost_limit>`; an app minimizes its
    return value (hydra-optuna-sweeper's default direction) and has no constraint unless given."""
    conf = dict(conf)
    kind = task_kind(config)
    if conf.get("direction") is None:
        conf["direction"] = "minimize" if kind == "app" else "maximize"
    if kind != "app":
        conf["objective"] = conf.get("objective") or "id.return_mean"
        limit = OmegaConf.select(config, "agent.lagrangian.cost_limit" if kind == "builtin" else "task.eval.cost_limit",
                                 default=None)
        if conf.get("constraint") is None and limit is not None:
            conf["constraint"] = {"metric": "id.cost_mean", "limit": float(limit)}
    return conf


def objective_of(s: SearchSettings, config: DictConfig) -> Objective:
    """What the driver judges: the objective paths (None: an app's return value), the constraint, and
    the curve the pruner reads: the built-in's training `episode_return`, else the objective's name
    (an app's heartbeat(...) metric of that name), else `prune.metric`."""
    kind = task_kind(config)
    paths: list[str | None] = list(s.objective) if s.objective else [None]
    if kind != "app":
        _check_eval_metrics(paths, "objective")
    cost_path = (s.constraint or {}).get("metric")
    if cost_path is not None and kind != "app":
        _check_eval_metrics([cost_path], "constraint.metric")
    metric = s.prune.metric or ("episode_return" if kind != "app" else paths[0])
    if s.pruner is None:  # no pruner: nothing is stopped early, on its curve or on its cost
        metric = None
    elif kind == "external":
        _check_external_curve(config, metric)
    return Objective(paths=paths, directions=list(s.directions), how=s.aggregate, cost_path=cost_path,
                     cost_limit=(s.constraint or {}).get("limit"), prune_metric=metric,
                     warmup_steps=s.prune.warmup_steps, cost_warmup_steps=s.prune.cost_warmup_steps,
                     cost_slack=s.prune.cost_slack,
                     # the cost's curve: the built-in's and an external task's episode_cost; an app's
                     # heartbeat metric named as its constraint's metric
                     cost_curve="episode_cost" if kind != "app" else cost_path)


def _check_external_curve(config: DictConfig, metric: str | None) -> None:
    """The pruner reads an external task's curve rows (task.curves.keys, mirrored into metrics.jsonl):
    a metric it never mirrors would never be reported, and nothing would ever be pruned."""
    keys = OmegaConf.select(config, "task.curves.keys", default=None)
    known = sorted(OmegaConf.to_container(keys).keys()) if keys is not None else []  # type: ignore[union-attr]
    if metric not in known:
        raise SearchError(f"hydra.sweeper.prune.metric={metric!r}: the external task never produces it: its curve rows "
                          f"carry {known or 'nothing (task.curves is null)'}. Fix: declare it under task.curves.keys, "
                          f"or hydra.sweeper.prune.metric=<one of those>, or no pruner")


def _check_eval_metrics(paths: list[str | None], key: str) -> None:
    for p in paths:
        kind, _, name = str(p).partition(".")
        if kind not in ("id", "ood") or name not in EVAL_SUMMARY_KEYS:
            raise SearchError(f"hydra.sweeper.{key}={p!r}: the task never produces it. A cell's result is its "
                              f"evaluations, `<id|ood>.<{'|'.join(EVAL_SUMMARY_KEYS)}>`. Fix: e.g. "
                              f"hydra.sweeper.{key}=ood.return_mean")


def check_seeds(s: SearchSettings, space: Space, fixed: list[str]) -> list[int | None]:
    """The tuning seeds: `seeds` of the study (each an ordinary cell), else the config's own seed.
    `seed` both in the study and as an axis or override is ambiguous: refused."""
    if s.seeds:
        given = [k for k in space.distributions if k == "seed"] + [f for f in fixed if f.lstrip("+~").startswith("seed=")]
        if given or "seed" in space.fixed:
            raise SearchError(f"the seed is given twice: hydra.sweeper.seeds={list(s.seeds)} and {given or ['params.seed']}. "
                              f"A trial runs each of its seeds as a cell. Fix: drop the seed axis or override (one in the "
                              f"config's hydra.sweeper.params: ~hydra.sweeper.params.seed), or drop hydra.sweeper.seeds")
        return list(s.seeds)
    return [None]


def identity_overrides(fixed: list[str], config: DictConfig) -> dict[str, str]:
    """The fixed overrides that enter the study's identity: those of keys in a cell's identity. A key
    no cell's hash holds (`store.root`, the trainer's cadences, an app's `sds.identity_exclude`)
    changes no trial's meaning, so changing it resumes the study instead of refusing it."""
    declared = OmegaConf.select(config, "sds.identity_exclude", default=None) or []
    excluded = (*IDENTITY_EXCLUDE, *(str(k) for k in declared))
    out = {}
    for o in fixed:
        key = o.split("=", 1)[0].lstrip("+~")
        if not identity_excluded(key, excluded):
            out[key] = o
    return out


def corner_jobs(space: Space, fixed: list[str], seeds: list[int | None]) -> list[list[str]]:
    """The jobs that check the whole search space against the schema before anything is written: each
    dimension at both ends of its interval (or at each of its choices), the others at their low end.
    A key's range is an interval, so a point inside passes when both ends do."""
    def ends(d: Any) -> list[Any]:
        return list(d.choices) if isinstance(d, optuna.distributions.CategoricalDistribution) else [d.low, d.high]

    low = {k: ends(d)[0] for k, d in space.distributions.items()}
    seed = [f"seed={seeds[0]}"] if seeds and seeds[0] is not None else []
    jobs = [[*fixed, *space.overrides({**low, k: v}), *seed] for k, d in space.distributions.items() for v in ends(d)]
    return jobs or [[*fixed, *space.overrides({}), *seed]]


def run_search(conf: dict[str, Any], arguments: list[str], *, launcher: Any, config: DictConfig,
               hydra_context: Any, backend: str, report: Callable[[Sweep], None]) -> None:
    """The whole study, from the sweeper's config and the command line's overrides; `report(sweep)`
    writes the store's report at the end (the plugin passes the report stage's refresh)."""
    s = search_settings(task_defaults(conf, config))
    params, fixed = split_arguments(arguments, conf.get("params") or {})
    space = parse_space(params)
    seeds = check_seeds(s, space, fixed)
    objective = objective_of(s, config)
    build_sampler(s, space), build_pruner(s)  # an unknown or unfit one refused before anything is written
    sweep = plan_sweep(backend, launcher.params, config, hydra_context, [], 0)  # checks the launcher, migrates
    sweep.plan_jobs(corner_jobs(space, fixed, seeds))  # every value the space can take is in its key's range
    app = app_of(config) if task_kind(config) == "app" else None
    study, sdir, created = open_study(sweep.store.root, s, space, app=app, sweep_id=sweep.id,
                                      fixed=identity_overrides(fixed, config),
                                      default_name=_job_name(config))
    record_if_new(sweep.store.root, sdir.json_path)  # a new store's first document may be a study
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    say(f"[sds] study {study.study_name} ({'new' if created else 'resumed'}; {sdir.journal}): {len(done)} of "
        f"{s.n_trials} trials finished, {len(seeds)} seed(s) per trial"
        + (f", constraint {objective.cost_path} <= {objective.cost_limit}" if objective.cost_limit is not None else ""))
    sweep.record()
    sup = sweep.supervisor(sweep.make_backend(hydra_context, launcher.task_function, 0), [])
    driver = StudyDriver(sweep=sweep, sup=sup, study=study, lock=sdir.ask_lock(), n_trials=s.n_trials, seeds=seeds,
                         objective=objective, distributions=dict(space.distributions), say=say, max_running=s.n_jobs,
                         overrides_of=lambda p: [*fixed, *space.overrides(p)], reseed=_reseeder(study, s, space),
                         test_seeds=list((s.test or {}).get("seeds") or []), test_top_k=int((s.test or {}).get("top_k") or 0))
    from safedreamer_sweep.sweep.progress import Progress

    # the live view over the study's cells: n_trials x seeds, those of trials finished before counted done
    with Progress(sweep.progress, s.n_trials * len(seeds), len(done) * len(seeds)) as progress:
        if sweep.progress != "none":
            sup.on_tick = progress.tick
        _drive(driver, sweep)
    finish(study, sweep, config, s, report)


def _job_name(config: DictConfig) -> str:
    """The default study name: the app's job name (`python -m safedreamer_sweep` runs as __main__)."""
    name = str(config.hydra.job.name)
    return "safedreamer_sweep" if name == "__main__" else name


def _reseeder(study: optuna.Study, s: SearchSettings, space: Space) -> Callable[[int], None]:
    """A seeded sampler is made again before each ask with its seed moved on by the trials the study
    holds: a new process (a resumed study) or a second invocation would otherwise start the same random
    stream over and ask the points of the first trials again (cells already done: no new evidence).
    The same history gives the same next point. An unseeded sampler is left as it is."""
    seed = s.sampler.get("seed")

    def reseed(n: int) -> None:
        if n and isinstance(seed, int):
            study.sampler = build_sampler(replace(s, sampler={**s.sampler, "seed": seed + 7919 * n}), space)

    return reseed


def _drive(driver: StudyDriver, sweep: Sweep) -> None:
    """Run the loop; Ctrl-C stops asking and supervising, not the cells (re-run the same command)."""
    try:
        driver.run()
    except KeyboardInterrupt:
        sup = driver.sup
        sweep._record_jobs({t.key: [j.job_id for j in t.subs] for t in sup.active if t.subs}, detached=True)
        say(f"[sds] interrupted: {len(sup.active)} cell(s) keep running, {len(sup.queue)} not submitted; "
            f"the same command continues the study (its trials in flight are adopted)")
        raise SystemExit(130) from None


def finish(study: optuna.Study, sweep: Sweep, config: DictConfig, s: SearchSettings,
           report: Callable[[Sweep], None]) -> None:
    """optimization_results.yaml in Hydra's sweep dir (as hydra-optuna-sweeper writes it, the best
    feasible trial), the report, the hooks, and one line."""
    trials = study.get_trials(deepcopy=False)
    states = {st: sum(t.state == st for t in trials) for st in (optuna.trial.TrialState.COMPLETE,
                                                                  optuna.trial.TrialState.PRUNED,
                                                                  optuna.trial.TrialState.FAIL)}
    results: dict[str, Any] = {"name": "sds_optuna", "study": study.study_name}
    best = _best(study)
    if len(study.directions) == 1 and best:
        results.update(best_params=dict(best[0].params), best_value=best[0].value, best_trial=best[0].number)
    elif best:
        results["solutions"] = [{"params": dict(t.params), "values": list(t.values or [])} for t in best]
    out = Path(str(config.hydra.sweep.dir))
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
    report(sweep)
    failed = states[optuna.trial.TrialState.FAIL]
    say(f"[sds] study {study.study_name}: {len(trials)}/{s.n_trials} trials "
        f"({states[optuna.trial.TrialState.COMPLETE]} complete, {states[optuna.trial.TrialState.PRUNED]} pruned, "
        f"{failed} failed)" + (f"; best feasible: trial {best[0].number} value "
                               f"{', '.join(f'{v:.4g}' for v in best[0].values or [])}" if best else
                               "; no feasible trial yet"))
    if trials and failed / len(trials) > s.max_failure_rate:
        from safedreamer_sweep.sweep.launch import SweepIncomplete

        raise SweepIncomplete(f"[sds] {failed} of {len(trials)} trials failed, above hydra.sweeper.max_failure_rate="
                              f"{s.max_failure_rate} (status: safedreamer-sweep status {sweep.store.root})")


def _best(study: optuna.Study) -> list[Any]:
    """The best feasible trial(s): Optuna 5 leaves infeasible trials out of best_trial(s)."""
    try:
        return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        return []
