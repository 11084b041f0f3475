
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from safedreamer_sweep.core.identity import RunSpec, config_hash, diff_keys, run_config


def compose_cell(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("sweep", overrides=["hydra/launcher=basic", *overrides], return_hydra_config=True)


def test_config_name_comes_from_the_exact_group_choice_and_knobs_apply():
    knobs = {}
    for name in ["v2_baseline", "v2_u_only", "v2_cert_only", "v2_full"]:
        spec = RunSpec.from_cfg(compose_cell(f"config={name}", "seed=2"))
        assert spec.config == name and spec.seed == 2
        knobs[name] = (spec.run_config["agent"]["u"]["enabled"], spec.run_config["agent"]["cert"]["enabled"])
    assert knobs == {"v2_baseline": (False, False), "v2_u_only": (True, False),
                     "v2_cert_only": (False, True), "v2_full": (True, True)}


def test_identity_ignores_store_cadence_and_sweep_settings_but_not_training_keys():
    base = RunSpec.from_cfg(compose_cell("config=v2_full", "seed=1"))
    same = RunSpec.from_cfg(compose_cell("config=v2_full", "seed=1", "store.root=/elsewhere",
                                         "trainer.log_every_steps=7", "sweep.strict_confounds=false"))
    other = RunSpec.from_cfg(compose_cell("config=v2_full", "seed=1", "agent.lr=0.001"))
    assert base.hash == same.hash
    assert base.hash != other.hash
    assert diff_keys(base.run_config, other.run_config) == {"agent.lr": (0.0003, 0.001)}


def test_hash_is_stable_under_key_order_and_integral_floats():
    assert config_hash(run_config({"a": 1.0, "b": {"c": 2}})) == config_hash(run_config({"b": {"c": 2}, "a": 1}))


def test_missing_config_choice_is_a_clear_error():
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match="config"):
        RunSpec.from_cfg(OmegaConf.create({"seed": 0}))


@pytest.mark.parametrize("seed", ["1.5", "true", "abc", "'7'"])
def test_a_seed_that_is_not_an_integer_is_refused_not_truncated(seed):
    with pytest.raises(ValueError, match=r"seed=.* is not an integer.*e\.g\. seed=0,1,2"):
        RunSpec.from_cfg(compose_cell("config=v2_full", f"seed={seed}"))


def test_an_integral_seed_keeps_its_hash_whatever_its_spelling():
    a, b = RunSpec.from_cfg(compose_cell("config=v2_full", "seed=3")), RunSpec.from_cfg(compose_cell("config=v2_full", "seed=3.0"))
    assert (a.seed, a.hash) == (b.seed, b.hash) == (3, a.hash)
