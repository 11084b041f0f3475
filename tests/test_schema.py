"""The schema (core/schema.py): every key of conf/ and of the launcher has a type and a range; the
shipped configs pass; each malformed value derived from the schema is refused naming key, value,
range and fix; env ids are checked against Safety-Gymnasium's registry."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from hydra_plugins.sds_launcher.config import SdsLocalConf, SdsSlurmConf
from safedreamer_sweep.core.schema import (
    Launcher,
    check_cell,
    check_env_ids,
    check_launcher,
    malformed_values,
)


@pytest.fixture(scope="module")
def composed(repo_root_module):
    with initialize_config_dir(config_dir=str(repo_root_module / "conf"), version_base=None):
        return compose(config_name="sweep", overrides=["store.root=/tmp/sds-schema"])


@pytest.fixture(scope="module")
def repo_root_module():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def set_key(data: dict, key: str, value) -> dict:
    import copy

    out = copy.deepcopy(data)
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def test_the_shipped_configs_and_launcher_defaults_pass(composed):
    assert check_cell(composed) == []
    assert check_env_ids(composed) == []
    for conf in (SdsLocalConf, SdsSlurmConf):
        assert check_launcher(dataclasses.asdict(conf())) == []


def test_every_numeric_launcher_option_declares_its_range():
    # core/launcher_options.py is the one declaration; the schema is derived from it
    from safedreamer_sweep.core.launcher_options import LocalOptions, SlurmOptions

    declared = set(Launcher.model_fields) - {"target_"} | {"_target_"}
    for conf in (SdsLocalConf, SdsSlurmConf):
        assert {f.name for f in dataclasses.fields(conf)} <= declared
    for options in (LocalOptions, SlurmOptions):
        for f in dataclasses.fields(options):
            if f.type in (int, float, int | None, float | None):
                assert f.metadata.get("bounds"), f"give hydra.launcher.{f.name} a range: opt(default, ge=...)"


def test_every_key_of_the_composed_config_is_declared(composed):
    from omegaconf import OmegaConf

    from safedreamer_sweep.core.schema import Cell, _leaf_schemas

    schema = Cell.model_json_schema()
    declared = {k for k, _ in _leaf_schemas(schema, schema["$defs"])}
    data = OmegaConf.to_container(composed, resolve=False)
    data.pop("hydra", None)

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and not (prefix + k).startswith(("task", "sweep.ablation")):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    undeclared = {k for k in leaves(data) if k not in declared and not k.startswith("task")}
    assert not undeclared, f"declare {undeclared} in core/schema.py"


@pytest.mark.parametrize(("schema", "key", "bad"), malformed_values(), ids=str)
def test_each_malformed_value_is_refused_naming_key_value_range_and_fix(composed, schema, key, bad):
    if schema == "cell":
        from omegaconf import OmegaConf

        data = {k: v for k, v in OmegaConf.to_container(composed, resolve=True).items() if k != "hydra"}
        refused = check_cell(set_key(data, key, bad))
        prefix = ""
    else:
        refused = check_launcher({**dataclasses.asdict(SdsSlurmConf()), key: bad})
        prefix = "hydra.launcher."
    assert [r.key for r in refused] == [prefix + key], refused
    text = str(refused[0])
    assert text.startswith(f"{prefix}{key}={bad!r} is not allowed: must be ") and "Fix: " in text


def test_the_issue_examples_are_refused_with_their_range(composed):
    from omegaconf import OmegaConf

    data = {k: v for k, v in OmegaConf.to_container(composed, resolve=True).items() if k != "hydra"}
    (r,) = check_cell(set_key(data, "agent.u.ensemble", 0))
    assert str(r) == ("agent.u.ensemble=0 is not allowed: must be an integer >= 1 and <= 64. "
                      "Fix: set agent.u.ensemble to an integer >= 1 and <= 64, e.g. agent.u.ensemble=1")
    (r,) = check_launcher({"mem_gb": -4.0})
    assert r.key == "hydra.launcher.mem_gb" and "> 0" in r.allowed
    (r,) = check_cell(set_key(data, "agent.u.enabled", 1))  # an int is not a bool
    assert r.key == "agent.u.enabled"


def test_an_env_id_that_safety_gymnasium_does_not_register_is_refused_with_close_ones(composed):
    from omegaconf import OmegaConf

    data = {k: v for k, v in OmegaConf.to_container(composed, resolve=True).items() if k != "hydra"}
    (r,) = check_env_ids(set_key(data, "eval.ood_env", "SafetyPointGoal3-v0"))
    assert r.key == "eval.ood_env" and "Safety-Gymnasium env id" in r.allowed and "SafetyPointGoal" in r.fix
    assert check_env_ids(set_key(data, "task", {"kind": "external"})) == []  # not the builtin trainer's
