"""The sds sweeper's check, once per shape (safedreamer_sweep/sweep/shapes.py), against the real thing:
for every key kind and value form below, a job is refused by the shape check exactly when Hydra's
own composition of it fails, with the same exception and message, and a batch fails on the same
first job as BasicSweeper.validate_batch_is_legal. Hydra's config loader over a small app of
every node kind (untyped, int, float, bool, str, enum, optional, union, typed dict, list,
interpolation, a config group), nothing stubbed."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional, Union

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.types import HydraContext, RunMode

from safedreamer_sweep.sweep.shapes import ShapeValidator, take_composed

ROOT = Path(__file__).resolve().parent.parent


class Color(Enum):
    RED = 1
    BLUE = 2


@dataclass
class Typed:
    i: int = 0
    f: float = 0.5
    b: bool = False
    s: str = "x"
    color: Color = Color.RED
    maybe_i: Optional[int] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    u: Union[int, str] = 0  # noqa: UP007
    ints: dict[str, int] = field(default_factory=lambda: {"a": 1})


APP = """\
defaults:
  - shapes_typed_schema@t
  - group1: a
  - _self_
any_key: 0
nested:
  deep: 1
interp: ${any_key}
d:
  k: 1
lst: [1, 2]
"""

KEYS = ["any_key", "nested.deep", "t.i", "t.f", "t.b", "t.s", "t.color", "t.u", "+t.ints.z", "d", "interp",
        "no_such_key", "+new_key", "+t.i", "group1"]
VALUES = ["0", "-3", "1_000", "1.5", "true", "abc", "${any_key}", "'${oops'", "PURPLE", "null", "[1,2]", "'5'"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # Hydra's singletons (the ConfigStore) travel to every cell process a later test starts, which
    # could not unpickle this module's schema: registered here and taken back after this module.
    state = copy.deepcopy(Singleton.get_state())
    ConfigStore.instance().store(name="shapes_typed_schema", node=Typed)
    conf = tmp_path_factory.mktemp("conf")
    (conf / "app.yaml").write_text(APP)
    (conf / "group1").mkdir()
    (conf / "group1" / "a.yaml").write_text("g: 1\n")
    (conf / "group1" / "b.yaml").write_text("g: 2\n")
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf)))
    master = loader.load_configuration("app", overrides=[], run_mode=RunMode.MULTIRUN)
    yield loader, master
    Singleton.set_state(state)


def outcome(fn, *args):
    """None when fn composes, else (exception type, message, cause's message)."""
    try:
        fn(*args)
        return None
    except Exception as e:
        return type(e), str(e), str(e.__cause__)


def compose(loader, master, ov):
    return loader.load_sweep_config(master_config=master, sweep_overrides=list(ov))


def test_every_value_is_refused_exactly_when_hydra_refuses_it(app):
    loader, master = app
    composed, truth = {}, {}
    for k, v in itertools.product(KEYS, VALUES):
        ov = ("group1=b", f"{k}={v}")
        try:
            composed[ov] = compose(loader, master, ov)
            truth[(k, v)] = None
        except Exception as e:
            composed[ov], truth[(k, v)] = e, (type(e), str(e), str(e.__cause__))

    def replay(ov):  # what Hydra gave for this job, without composing it again (0.13 s each)
        got = composed[tuple(ov)]
        if isinstance(got, Exception):
            raise got
        return got

    derived = 0
    for k in KEYS:
        for rep in [v for v in VALUES if truth[(k, v)] is None][:4]:  # shapes whose first job composes
            shapes = ShapeValidator(loader, master, compose=replay)
            shapes.validate([["group1=b", f"{k}={rep}"]])
            for v in VALUES:
                got = outcome(shapes.validate, [["group1=b", f"{k}={v}"]])
                assert got == truth[(k, v)], f"{k}={v} after {k}={rep}: shape check {got}, Hydra {truth[(k, v)]}"
            derived += shapes.check.derived
    # the fast path is taken: untyped, int, float, bool and str nodes accept values of their type uncomposed
    assert derived > 40


class Remembering:
    """Hydra's config loader, each distinct job composed once and its outcome (config or exception)
    replayed: both checks below see exactly what Hydra gives, without paying 0.13 s per repeat."""

    def __init__(self, loader):
        self.loader, self.seen = loader, {}

    def __getattr__(self, name):  # the repository call ShapeValidator makes
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config, sweep_overrides):
        key = tuple(sweep_overrides)
        if key not in self.seen:
            try:
                self.seen[key] = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            except Exception as e:
                self.seen[key] = e
        if isinstance(self.seen[key], Exception):
            raise self.seen[key]
        return self.seen[key]


def test_a_batch_fails_on_the_same_first_job_as_basic_sweeper(app):
    # imported here: Hydra's plugin scan reloads this module, so a top-level import goes stale
    from hydra._internal.core_plugins import basic_sweeper

    loader, master = Remembering(app[0]), app[1]
    basic = basic_sweeper.BasicSweeper(max_batch_size=None)
    basic.config = master
    basic.hydra_context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
    axes = [["group1=a", "group1=b"], ["t.i=0", "t.i=x", "t.i=1"], ["t.s=u", "t.s=1"],
            ["t.color=RED", "t.color=PURPLE"], ["any_key=1", "any_key='${oops'"]]
    failed = 0
    for picks in itertools.product(*[[axis[:1], axis] for axis in axes]):
        batch = [list(job) for job in itertools.product(*picks)]
        expected = outcome(basic.validate_batch_is_legal, batch)
        assert outcome(ShapeValidator(loader, master).validate, batch) == expected, batch
        failed += expected is not None
    assert 0 < failed < 32


def test_the_built_in_grid_composes_one_job_per_config(tmp_path):
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    master = loader.load_configuration("sweep", overrides=[f"store.root={tmp_path}"], run_mode=RunMode.MULTIRUN)
    configs = ["v2_baseline", "v2_u_only", "v2_cert_only", "v2_full"]
    batch = [[f"config={c}", f"seed={s}"] for c in configs for s in range(50)]
    check = ShapeValidator(loader, master).validate(batch)
    assert (check.composed, check.shapes, check.derived) == (4, 4, 196)
    # the launcher's planner gets each composed config once, for exactly that job and master config
    handed = take_composed(master, ["config=v2_full", "seed=0"])
    assert handed is not None and handed.agent == compose(loader, master, ["config=v2_full", "seed=0"]).agent
    assert take_composed(master, ["config=v2_full", "seed=0"]) is None
    assert take_composed(master, ["config=v2_full", "seed=1"]) is None
    with pytest.raises(Exception) as e:  # a config that does not exist: Hydra's own message
        ShapeValidator(loader, master).validate([*batch, ["config=v2_nope", "seed=0"]])
    assert "v2_nope" in str(e.value) and type(e.value).__name__ == "MissingConfigException"


def test_the_handover_keeps_the_newest_configs_in_a_long_process(tmp_path):
    """Configs nobody took (a dry run, cells found done) must not fill the handover for good: after
    more than _HANDOVER_MAX of them, a new sweep's composed configs are still handed to its planner."""
    from omegaconf import OmegaConf

    from safedreamer_sweep.sweep import shapes

    old_master = OmegaConf.create({"m": 0})
    for i in range(shapes._HANDOVER_MAX + 5):
        shapes._hand_over(old_master, [f"seed={i}"], OmegaConf.create({"i": i}))
    assert len(shapes._HANDOVER) <= shapes._HANDOVER_MAX
    master = OmegaConf.create({"m": 1})
    shapes._hand_over(master, ["seed=0"], OmegaConf.create({"new": True}))
    assert shapes.take_composed(master, ["seed=0"]) == OmegaConf.create({"new": True})
