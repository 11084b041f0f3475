"""Confound check on configs resolved through Hydra: the seeds' rew_rms difference is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from safedreamer_sweep.commands.cli import main as cli_main
from safedreamer_sweep.core.confounds import (
    find_confounds,
    format_confounds,
    is_knob,
    specs_for_overrides,
)
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.sweep.checks import check_confounds
from safedreamer_sweep.sweep.errors import PlanError

ROOT = Path(__file__).resolve().parent.parent
KNOBS = ["agent.u.enabled", "agent.cert.enabled"]


@pytest.fixture
def rew_rms_conf(tmp_path) -> Path:
    """The project's conf/ with the seeds' confound: the baseline normalises rewards, variants do not."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for name in ("v2_baseline", "v2_u_only", "v2_cert_only", "v2_full"):
        p = conf / "config" / f"{name}.yaml"
        p.write_text(p.read_text() + f"  rew_rms: {'true' if name == 'v2_baseline' else 'false'}\n")
    # a config whose name contains another's: labels must come from exact names
    (conf / "config" / "v2_full_long.yaml").write_text((conf / "config" / "v2_full.yaml").read_text())
    return conf


def test_project_configs_differ_only_in_the_ablation_knobs():
    specs = specs_for_overrides(str(ROOT / "conf"), ["config=v2_baseline,v2_u_only,v2_cert_only,v2_full", "seed=0,1"])
    assert len(specs) == 8
    assert find_confounds(specs, KNOBS) == []
    # without declared knobs, the knobs themselves are what differs
    assert [c.key for c in find_confounds(specs, [])] == ["agent.cert.enabled", "agent.u.enabled"]


def test_rew_rms_confound_is_found_and_stops_a_strict_launch(rew_rms_conf):
    specs = specs_for_overrides(str(rew_rms_conf), ["config=v2_baseline,v2_u_only,v2_full", "seed=0,1"])
    found = find_confounds(specs, KNOBS)
    assert [c.key for c in found] == ["agent.rew_rms"]
    assert found[0].values == {"v2_baseline": [True], "v2_u_only": [False], "v2_full": [False]}
    text = format_confounds(found)
    assert text == "  agent.rew_rms: v2_baseline=true  v2_u_only=false  v2_full=false"
    settings = OmegaConf.create({"sweep": {"ablation_knobs": KNOBS, "strict_confounds": True}})
    with pytest.raises(PlanError) as e:  # the planner's check: strict (the default) stops the launch
        check_confounds(specs, settings, log=lambda m: None)
    msg = str(e.value)
    assert f"{text}\n" in msg and "declare them in sweep.ablation_knobs" in msg and "make those keys equal" in msg
    assert "sweep.strict_confounds=false" in msg
    logged: list[str] = []  # not strict: logged, the launch goes on
    check_confounds(specs, settings, log=logged.append, launcher={"strict_confounds": False})
    assert logged == [f"[plan] WARNING confounds (sweep.strict_confounds=false):\n{text}"]
    check_confounds(specs, settings, log=logged.append, swept={"agent.rew_rms"})  # a swept key is a knob
    assert len(logged) == 1
    # declaring it as a knob (or a parent key of it) removes the confound
    assert find_confounds(specs, [*KNOBS, "agent.rew_rms"]) == []


def test_labels_are_exact_config_names(rew_rms_conf):
    specs = specs_for_overrides(str(rew_rms_conf), ["config=v2_full,v2_full_long", "seed=0", "agent.lr=0.001"])
    assert sorted(s.config for s in specs) == ["v2_full", "v2_full_long"]
    assert find_confounds(specs, KNOBS) == []  # identical resolved configs under two exact names


def test_seeds_and_independent_sweep_axes_are_not_confounds():
    def spec(config, seed, lr, **agent):
        rc = {"seed": seed, "agent": {"lr": lr, "u": {"enabled": config != "base"}, **agent}}
        return RunSpec(config=config, seed=seed, hash="x", run_config=rc)

    # lr is its own axis: both configs take {1e-3, 3e-4}
    specs = [spec(c, s, lr) for c in ("base", "full") for s in (0, 1) for lr in (1e-3, 3e-4)]
    assert find_confounds(specs, ["agent.u"]) == []  # parent key covers agent.u.enabled
    # lr only swept for one config: a confound, reported per config
    specs = [spec("base", 0, 1e-3), spec("base", 0, 3e-4), spec("full", 0, 1e-3)]
    (c,) = find_confounds(specs, ["agent.u.enabled"])
    assert c.key == "agent.lr" and c.values == {"base": [0.001, 0.0003], "full": [0.001]}
    # a key one config lacks entirely
    (c,) = find_confounds([spec("base", 0, 1e-3, rew_rms=True), spec("full", 0, 1e-3)], ["agent.u.*"])
    assert c.key == "agent.rew_rms" and c.values == {"base": [True], "full": ["<absent>"]}
    assert find_confounds([spec("base", 0, 1e-3), spec("base", 1, 3e-4)], []) == []  # one config: nothing to compare


def test_is_knob_matching():
    assert is_knob("agent.u.enabled", ["agent.u.enabled"])
    assert is_knob("agent.u.kappa", ["agent.u"])
    assert not is_knob("agent.unorm", ["agent.u"])  # prefix only at a dot boundary
    assert is_knob("agent.cert.enabled", ["agent.*.enabled"])


def test_confounds_command(rew_rms_conf, capsys):
    code = cli_main(["confounds", "--conf-dir", str(rew_rms_conf), "config=v2_baseline,v2_full", "seed=0"])
    out = capsys.readouterr().out
    assert code == 1 and "CONFOUNDED" in out and "agent.rew_rms: v2_baseline=true  v2_full=false" in out
    code = cli_main(["confounds", "--conf-dir", str(ROOT / "conf"), "config=v2_baseline,v2_full", "seed=0"])
    assert code == 0 and "no confounds" in capsys.readouterr().out
