"""search/space.py, search/settings.py and search/values.py: the search space read as hydra-optuna-sweeper
reads it (expectations written from its `create_optuna_distribution_from_override`), trial overrides that
Hydra parses back to the same values, the sweeper's settings and their refusals, and a trial's value over
seeds (spread, aggregate, curves aligned at env-step rungs)."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from safedreamer_sweep.search.settings import SearchError, build_pruner, build_sampler, search_settings
from safedreamer_sweep.search.space import distribution_text, override_value, parse_space
from safedreamer_sweep.search.values import aggregate, aligned, spread

# ----------------------------------------------------------------------------- the grammar, as hydra-optuna-sweeper


@pytest.mark.parametrize("text, expected", [
    ("interval(1, 5)", FloatDistribution(1.0, 5.0)),                      # Hydra reads interval's bounds as floats
    ("interval(0.0001, 0.1)", FloatDistribution(0.0001, 0.1)),
    ("int(interval(1, 5))", IntDistribution(1, 5)),
    ("tag(log, interval(1, 5))", FloatDistribution(1.0, 5.0, log=True)),
    ("tag(log, interval(0.0001, 0.01))", FloatDistribution(0.0001, 0.01, log=True)),
    ("tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
    ("range(1,3)", IntDistribution(1, 3)),                                # stop is the (inclusive) high, as there
    ("range(1, 10, 3)", IntDistribution(1, 10, step=3)),
    ("range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1.0)),   # a float bound: a stepped float
    ("range(0.1, 1.0, 0.1)", FloatDistribution(0.1, 1.0, step=0.1)),
    ("choice(1,2)", CategoricalDistribution([1, 2])),
    ("choice(true, false)", CategoricalDistribution([True, False])),
    ("choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("choice(adam, sgd, 3, 2.5)", CategoricalDistribution(["adam", "sgd", 3, 2.5])),
    ("1,2,4", CategoricalDistribution([1, 2, 4])),                       # the simple choice form
    ("shuffle(range(1,4))", CategoricalDistribution([1, 2, 3])),         # sorted: the order is the identity
])
def test_every_grammar_form_maps_to_hydra_optuna_sweepers_distribution(text: str, expected: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "range not divisible by step" note
        space = parse_space({"agent.lr": text})
    assert space.distributions == {"agent.lr": expected}
    assert space.fixed == {}


def test_plain_values_are_fixed_overrides_as_written() -> None:
    space = parse_space({"key2": "5", "env.id": "SafetyPointGoal1-v0", "agent.hidden": "[64,64]", "x": 0.5, "flag": True,
                         "~z": "10"})
    assert space.distributions == {}
    # the value text as Hydra gives it back (get_value_element_as_str), which parses to the same value
    assert space.fixed == {"key2": "5", "env.id": "SafetyPointGoal1-v0", "agent.hidden": "[64,64]", "x": "0.5",
                           "flag": "True", "~z": "10"}
    lines = space.overrides({})
    assert lines == ["key2=5", "env.id=SafetyPointGoal1-v0", "agent.hidden=[64,64]", "x=0.5", "flag=True", "~z=10"]
    parsed = OverridesParser.create().parse_overrides(lines)
    assert [o.value() for o in parsed] == [5, "SafetyPointGoal1-v0", [64, 64], 0.5, True, 10]
    assert parsed[-1].is_delete()


def test_a_choice_of_lists_is_hydra_text_written_as_is() -> None:
    space = parse_space({"agent.hidden": "choice([64,64],[256,256],'[1]')"})
    # hydra-optuna-sweeper's choices (each encoded), so its trials' params are the same strings
    assert space.distributions["agent.hidden"] == CategoricalDistribution(["[64,64]", "[256,256]", "[1]"])
    parsed = OverridesParser.create().parse_overrides(
        space.overrides({"agent.hidden": "[256,256]"}) + space.overrides({"agent.hidden": "[1]"}))
    assert [o.value() for o in parsed] == [[256, 256], "[1]"]   # the list a list, the quoted string a string
    assert space.describe() == {"agent.hidden": "choice([64,64],[256,256],'[1]')"}
    assert parse_space(space.describe()) == space


def test_distribution_text_parses_back_to_the_same_distribution() -> None:
    texts = ["interval(0.0001,0.1)", "tag(log,interval(1e-05,0.01))", "int(interval(1,8))", "tag(log,int(interval(2,256)))",
             "range(1,9,2)", "range(0.5,5.5,1.0)", "choice(adam,'1',2,true,2.5)"]
    for text in texts:
        d = parse_space({"k": text}).distributions["k"]
        assert distribution_text(d) == text
        assert parse_space({"k": distribution_text(d)}).distributions["k"] == d


@pytest.mark.parametrize("value", [0.001, 1e-05, 3e20, 1.0, -2.5, math.inf, 7, 0, True, False, None, "adam", "1", "0.5",
                                   "true", "null", "a,b", "it's", "${x}", "a b", "x=y", "[1]", "", "interval(0,1)"])
def test_trial_values_parse_back_to_the_same_value_and_type(value: object) -> None:
    parsed = OverridesParser.create().parse_override(f"agent.x={override_value(value)}")
    assert not parsed.is_sweep_override()
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_overrides_of_a_trial_are_its_params_then_the_fixed_ones() -> None:
    space = parse_space({"agent.lr": "tag(log, interval(1e-5, 1e-2))", "agent.opt": "choice(adam,'1')",
                         "trainer.total_steps": "4096"})
    assert space.overrides({"agent.opt": "1", "agent.lr": 0.00012}) == \
        ["agent.lr=0.00012", "agent.opt='1'", "trainer.total_steps=4096"]
    with pytest.raises(ValueError, match=r"agent\.gamma"):
        space.overrides({"agent.gamma": 0.9})


def test_describe_is_canonical_and_sorted() -> None:
    a = parse_space({"b": "interval(0,1)", "a": "choice(x,y)", "c": "3"}).describe()
    b = parse_space({"c": "3", "a": "choice(x, y)", "b": "interval(0.0, 1.0)"}).describe()
    assert a == b == {"a": "choice(x,y)", "b": "interval(0.0,1.0)", "c": "=3"}
    assert list(a) == sorted(a)


@pytest.mark.parametrize("text, said", [
    ("interval(0,1", "no viable alternative"),        # does not parse
    ("range(1, 5, 0)", "step"),                        # Hydra refuses a zero step
    ("glob(*)", "Glob"),                               # not a sweep Optuna can draw from
    ("interval(5, 1)", "low"),                         # Optuna refuses low > high
    ("choice(1, null)", "NoneType"),                   # Hydra's own type check
])
def test_a_space_that_does_not_parse_is_refused_naming_the_key(text: str, said: str) -> None:
    with pytest.raises(SearchError) as e:
        parse_space({"agent.lr": "interval(0.001, 0.01)", "agent.bad": text})
    msg = str(e.value)
    assert "hydra.sweeper.params.agent.bad" in msg and said in msg and "Fix:" in msg


def test_grid_lists_choices_and_range_steps_as_hydra_optuna_sweeper() -> None:
    space = parse_space({"a": "choice(x,y)", "b": "range(0,6,2)"})
    assert space.grid() == {"a": ["x", "y"], "b": [0, 2, 4]}
    with pytest.raises(SearchError, match=r"hydra\.sweeper\.params\.c"):
        parse_space({"c": "interval(0,1)"}).grid()
    s = search_settings({"sampler": "grid", "params": {"a": "choice(x,y)"}})
    assert isinstance(build_sampler(s, parse_space(s.params)), optuna.samplers.GridSampler)


# ----------------------------------------------------------------------------- settings


def test_defaults_and_drop_in_keys() -> None:
    s = search_settings({"_target_": "hydra_plugins.sds_optuna.sweeper.SdsOptunaSweeper", "defaults": [],
                         "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 123, "consider_prior": None,
                                     "n_startup_trials": 10},
                         "direction": "maximize", "n_trials": 12, "n_jobs": 2, "study_name": None, "storage": None,
                         "max_failure_rate": 0, "params": {"agent.lr": "interval(0.0001,0.01)"}})
    assert s.sampler == {"_target_": "optuna.samplers.TPESampler", "seed": 123, "n_startup_trials": 10}
    assert s.directions == ["maximize"] and s.n_trials == 12 and s.objective is None and s.pruner is None
    sampler = build_sampler(s)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert isinstance(build_pruner(s), optuna.pruners.NopPruner)


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                       ("cmaes", optuna.samplers.CmaEsSampler), ("nsgaii", optuna.samplers.NSGAIISampler),
                                       ("qmc", optuna.samplers.QMCSampler), ("gp", optuna.samplers.GPSampler)])
def test_hydra_optuna_sweepers_sampler_names(name: str, cls: type) -> None:
    assert type(build_sampler(search_settings({"sampler": name}))) is cls


@pytest.mark.parametrize("given, cls", [("median", optuna.pruners.MedianPruner),
                                        ("asha", optuna.pruners.SuccessiveHalvingPruner),
                                        ("hyperband", optuna.pruners.HyperbandPruner),
                                        ("none", optuna.pruners.NopPruner),
                                        ({"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 2},
                                         optuna.pruners.HyperbandPruner)])
def test_pruners_by_short_name_or_target(given: object, cls: type) -> None:
    s = search_settings({"pruner": given})
    assert type(build_pruner(s)) is cls
    assert s.pruner_name == {"median": "median", "asha": "asha", "none": None}.get(given if isinstance(given, str) else "",
                                                                                   "hyperband")


@pytest.mark.parametrize("conf, key, said", [
    ({"sampler": "annealing"}, "hydra.sweeper.sampler", "tpe (optuna.samplers.TPESampler)"),
    ({"sampler": {"_target_": "optuna.pruners.MedianPruner"}}, "hydra.sweeper.sampler", "BaseSampler"),
    ({"sampler": {"_target_": "optuna.samplers.TPESampler", "sed": 1}}, "hydra.sweeper.sampler", "'seed'"),
    ({"sampler": "motpe"}, "hydra.sweeper.sampler", "removed"),
    ({"pruner": "patience"}, "hydra.sweeper.pruner", "asha (optuna.pruners.SuccessiveHalvingPruner)"),
    ({"pruner": {"_target_": "optuna.samplers.TPESampler"}}, "hydra.sweeper.pruner", "median"),
    ({"n_trials": 0}, "hydra.sweeper.n_trials=0", "greater than 0"),
    ({"n_trials": -3}, "hydra.sweeper.n_trials=-3", "greater than 0"),
    ({"n_trials": "12"}, "hydra.sweeper.n_trials='12'", "integer"),
    ({"n_jobs": 0}, "hydra.sweeper.n_jobs=0", "greater than or equal to 1"),
    ({"n_trial": 12}, "hydra.sweeper.n_trial", "valid keys: aggregate"),
    ({"prune": {"warmup": 10}}, "hydra.sweeper.prune.warmup", "unknown key"),
    ({"prune": {"warmup_steps": -1}}, "hydra.sweeper.prune.warmup_steps", "greater than or equal to 0"),
    ({"direction": "up"}, "hydra.sweeper.direction='up'", "'minimize' or 'maximize'"),
    ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate=1.5", "less than or equal to 1"),
    ({"aggregate": "median"}, "hydra.sweeper.aggregate='median'", "'mean' or 'iqm'"),
    ({"seeds": [0, 1, 0]}, "hydra.sweeper.seeds=[0, 1, 0]", "given twice"),
    ({"seeds": [0, 1], "test": {"seeds": [1, 100], "top_k": 2}}, "hydra.sweeper.test.seeds", "tuning seeds too"),
    ({"test": {"seeds": [100], "top_k": 0}}, "hydra.sweeper.test.top_k", "greater than or equal to 1"),
    ({"direction": ["maximize", "minimize"], "objective": "id.return_mean"}, "hydra.sweeper.objective",
     "one direction per objective"),
    ({"direction": ["maximize", "minimize"], "objective": ["a", "b", "c"]}, "hydra.sweeper.objective", "3 metric(s)"),
    ({"constraint": {"metric": "id.cost_mean"}}, "hydra.sweeper.constraint.limit", "required"),
    ({"custom_search_space": "my.module.fn"}, "hydra.sweeper.custom_search_space", "params"),
])
def test_bad_settings_are_refused_naming_the_key_and_the_fix(conf: dict, key: str, said: str) -> None:
    with pytest.raises(SearchError) as e:
        search_settings(conf)
    msg = str(e.value)
    assert key in msg and said in msg and "Fix:" in msg, msg


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(SearchError) as e:
        search_settings({"seeds": [0, 0], "sampler": "nope", "pruner": "nope"})
    msg = str(e.value)
    assert "hydra.sweeper.seeds" in msg and "hydra.sweeper.sampler" in msg and "hydra.sweeper.pruner" in msg


def test_cost_warmup_defaults_to_half_the_budget_and_is_checked() -> None:
    assert search_settings({}).prune.cost_warmup_steps is None  # the driver takes half the cells' budget
    assert search_settings({"prune": {"cost_warmup_steps": 20000}}).prune.cost_warmup_steps == 20000
    with pytest.raises(SearchError, match="cost_slack"):
        search_settings({"prune": {"cost_slack": -1.0}})


# ----------------------------------------------------------------------------- values over seeds


def test_spread_of_seeds() -> None:
    s = spread([1.0, 2.0, None, 3.0, 10.0])
    assert s["n"] == 4 and s["mean"] == 4.0 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["iqm"] == pytest.approx(2.5)                   # the middle two of four
    assert s["std"] == pytest.approx(math.sqrt(((3**2) + 2**2 + 1 + 6**2) / 3))
    half = 3.182446305284263 * s["std"] / 2                 # t(0.975, 3)
    assert s["ci_low"] == pytest.approx(4.0 - half) and s["ci_high"] == pytest.approx(4.0 + half)
    one = spread([5.0, None])
    assert one["n"] == 1 and one["mean"] == 5.0 and one["std"] is None and one["ci_low"] is None and one["ci_high"] is None
    assert spread([None])["mean"] is None


def test_aggregate() -> None:
    assert aggregate([1, 2, 3, 100], "mean") == 26.5
    assert aggregate([1, 2, 3, 100], "iqm") == 2.5
    assert aggregate([None, None], "mean") is None
    with pytest.raises(ValueError):
        aggregate([1.0], "median")


def test_aligned_judges_seeds_at_rungs_every_seed_reached() -> None:
    a = [(100, 1.0), (200, 2.0), (300, 3.0), (400, 4.0)]
    b = [(150, 10.0), (250, 20.0), (350, 30.0)]
    # rungs are a's steps up to 350 (b's last): at 100 b has no value yet; at 400 b has not arrived
    assert aligned([a, b], "mean") == [(200, 6.0), (300, 11.5)]
    assert aligned([a, b], "mean", every_steps=100) == [(200, 6.0), (300, 11.5)]
    assert aligned([a, b], "mean", every_steps=50) == [(150, 5.5), (200, 6.0), (250, 11.0), (300, 11.5), (350, 16.5)]
    assert aligned([a], "mean") == a
    assert aligned([a, []], "mean") == [] and aligned([], "mean") == []
    c = [(100, 0.0), (200, 0.0), (300, 0.0), (400, 100.0)]
    d = [(100, 1.0), (200, 1.0), (300, 1.0), (400, 1.0)]
    e = [(100, 2.0), (200, 2.0), (300, 2.0), (400, 2.0)]
    f = [(100, 3.0), (200, 3.0), (300, 3.0), (400, -50.0)]
    assert aligned([c, d, e, f], "iqm")[-1] == (400, 1.5)   # the outliers trimmed
    assert aligned([[(200, 5.0), (100, 1.0)]], "mean") == [(100, 1.0), (200, 5.0)]  # unsorted input
