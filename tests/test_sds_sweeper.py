"""hydra/sweeper=sds against hydra/sweeper=basic on the same app (hydra.test_utils' a_module), same
run: every sweep form of Hydra's grammar gives the same batches, the same jobs in the same order and
the same job configs; every refused sweep fails with the same exception and message. The sds sweeper
composes fewer jobs while doing so (its debug line says how many)."""

from __future__ import annotations

import logging

import pytest

SWEEPS = [
    ["group1=file1,file2", "bar=range(1,4)"],
    ["group1=glob(*)", "bar=choice(100,200)"],
    ["group1=glob(*,exclude=file1)", "+x=[1,2],[3,4]"],
    ["bar=sort(3,1,2)", "+y=range(0,10,3)"],
    ["+a=range(0,5)", "bar=1,two", "hydra.sweeper.max_batch_size=2"],
    ["+seed=range(0,6)", "group1=file1,file2", "hydra.sweeper.max_batch_size=4"],
    ["foo=1,2.5,true,abc", "bar=sort(1,3,2,reverse=true)"],
]
REFUSED = [
    ["bar=interval(0,1)"],
    ["group1=file1,nope"],
    ["no_such_key=1,2"],
    ["+bar=1,2"],
    ["bar=1,2", "~foo=10,11"],
    ["bar=1,'${oops'"],
]


def run(hydra_sweep_runner, tmp_path, sweeper, args, app=None):
    """[[(overrides, cfg) of each job] of each batch]; `app`: a primary config file instead of a_module's."""
    where = ({"calling_file": str(app), "calling_module": None, "config_path": ".", "config_name": app.stem} if app
             else {"calling_file": None, "calling_module": "hydra.test_utils.a_module", "config_path": "configs",
                   "config_name": "compose.yaml"})
    sweep = hydra_sweep_runner(**where, task_function=None, overrides=[f"hydra/sweeper={sweeper}", *args],
                               temp_dir=tmp_path / sweeper)
    with sweep:
        return [[(list(r.overrides), r.cfg) for r in batch] for batch in sweep.returns]


def refusal(hydra_sweep_runner, tmp_path, sweeper, args):
    with pytest.raises(Exception) as e:
        run(hydra_sweep_runner, tmp_path, sweeper, args)
    return type(e.value), str(e.value)


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("args", SWEEPS, ids=" ".join)
def test_same_jobs_as_basic_sweeper(hydra_sweep_runner, tmp_path, args):
    basic = run(hydra_sweep_runner, tmp_path, "basic", args)
    assert basic and sum(map(len, basic)) > 1
    assert run(hydra_sweep_runner, tmp_path, "sds", args) == basic


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("args", REFUSED, ids=" ".join)
def test_same_refusal_as_basic_sweeper(hydra_sweep_runner, tmp_path, args):
    assert refusal(hydra_sweep_runner, tmp_path, "sds", args) == refusal(hydra_sweep_runner, tmp_path, "basic", args)


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_hydra_sweeper_params_as_basic_sweeper(hydra_sweep_runner, tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text("bar: 1\nfoo: a\nhydra:\n  sweeper:\n    params:\n      bar: 7,8\n      foo: a,b\n")
    basic = run(hydra_sweep_runner, tmp_path, "basic", ["bar=9,10", "+z=1,2"], app=app)
    # the command line's bar replaces the config's, in the config's place
    assert [ov for ov, _ in basic[0]][:3] == [["bar=9", "foo=a", "+z=1"], ["bar=9", "foo=a", "+z=2"],
                                              ["bar=9", "foo=b", "+z=1"]]
    assert run(hydra_sweep_runner, tmp_path, "sds", ["bar=9,10", "+z=1,2"], app=app) == basic


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_jobs_of_one_shape_are_composed_once(hydra_sweep_runner, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="hydra_plugins.sds_sweeper.sweeper")
    jobs = run(hydra_sweep_runner, tmp_path, "sds", ["group1=file1,file2", "+seed=range(0,20)"])
    assert len(jobs[0]) == 40
    assert "so far 2 composed (2 shapes), 38 accepted from their shape" in caplog.text
