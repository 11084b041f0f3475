"""Check that every job of a Hydra sweep composes, composing once per shape instead of once per job.

Hydra's BasicSweeper composes every job through the config loader before the launcher sees it
(`Sweeper.validate_batch_is_legal`, about 0.13 s a job here): a 10,000-cell grid waited 22 minutes.
Most of those jobs differ from one another only in the value of a plain key such as `seed`, and
what such a value can change in a composition is known from Hydra's own code (hydra 1.3,
_internal/config_loader_impl.py and defaults_list.py):

- The defaults list (which config files are merged) depends on config-group overrides only: an
  override is a group override when `repo.group_exists(key)`, and defaults-list interpolation sees
  group choices only (`_create_interpolation_map`). A value override never changes it.
- Value overrides are then applied in order (`_apply_overrides_to_config`). For `key=v` (and `+key=v`,
  `++key=v`) whether that succeeds depends on v only through the node it is assigned to: a key that
  does not exist, a read-only node, a struct refusal or a wrong prefix fail for every value alike.
  The node's class decides which values it takes (omegaconf.nodes): an untyped AnyNode takes every
  primitive, IntegerNode every int, BooleanNode every bool, StringNode every str, FloatNode every
  float. Other nodes (enums, unions, paths, containers) depend on the value itself.
- Nothing later in the composition fails on a value (hydra.overrides, runtime choices and
  override_dirname are string bookkeeping); interpolations are not resolved.

So a job's override is a *free value* when its key is not a config group, it is written `key=v`,
`+key=v` or `++key=v` with a plain dotted key that no other override of the job touches (no equal,
parent or child key), and v, as Hydra's grammar reads it, is an int, float, bool or str (a str
without `$` or backslash: OmegaConf parses interpolation syntax on assignment). No key name is
special: the planner's seed (a top-level `seed=<int>`, sweep/compose.py) is one free value, and so are
another app's `training.seed=3` or `lr=0.1`; a `seed` that is a config group is not. A job's *shape* is
its override list with the free values blanked. The first job of each shape is composed through
Hydra exactly as BasicSweeper does; every later job of the shape is accepted if each free value's
type is one its node (read from that composed config) takes whatever the value, and composed
through Hydra otherwise. When in doubt (an override the rules above do not cover, a config loader
without the calls used here) the job is composed. Jobs are checked in order, so the first job that
would fail composition fails first, with Hydra's own exception and message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

# A value Hydra's grammar reads as an int (a subset of its INT token: no sign +, no underscores).
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# A plain dotted key (the only keys whose node is looked up here; anything else is composed).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_PREFIXES = ("", "+", "++")
# The configs the last shape checks composed, handed once to the launcher's planner (compose.job_spec)
# so that it does not compose the same jobs again: (master config, overrides) -> composed config.
_HANDOVER: dict[tuple[int, tuple[str, ...]], tuple[DictConfig, DictConfig]] = {}
_HANDOVER_MAX = 64


def _node_takes() -> dict[type, tuple[type, ...]]:
    """Node class -> the value types it accepts for every value of that type."""
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return {AnyNode: (int, float, bool, str), IntegerNode: (int,), FloatNode: (float,),
            BooleanNode: (bool,), StringNode: (str,)}


@dataclass
class ShapeCheck:
    """What ShapeValidator.validate did: jobs composed through Hydra and jobs accepted from their shape."""

    composed: int = 0
    derived: int = 0
    shapes: int = 0
    why_composed: dict[str, int] = field(default_factory=dict)

    def note(self, why: str) -> None:
        self.composed += 1
        self.why_composed[why] = self.why_composed.get(why, 0) + 1


def _split(override: str) -> tuple[str, str] | None:
    """(key element with its prefix, value text) of `key=value`, else None."""
    key, eq, value = override.partition("=")
    return (key, value) if eq else None


def _plain_key(key_element: str) -> tuple[str, str] | None:
    """(prefix, dotted key) when the key element is `[+|++]a.b.c`, else None."""
    prefix = "++" if key_element.startswith("++") else "+" if key_element.startswith("+") else ""
    key = key_element[len(prefix):]
    return (prefix, key) if prefix in _PREFIXES and _KEY.fullmatch(key) else None


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class _Values:
    """The value of one override text as Hydra's grammar reads it, parsed once per distinct text."""

    def __init__(self) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self._parser = OverridesParser.create()
        self._seen: dict[str, tuple[bool, Any]] = {}

    def read(self, text: str, key_element: str) -> tuple[bool, Any]:
        """(True, value) when `text` is a plain override of `key_element`, else (False, None)."""
        value_text = text[len(key_element) + 1:]
        if _INT.fullmatch(value_text):
            return True, int(value_text)
        got = self._seen.get(text)
        if got is None:
            try:
                ov = self._parser.parse_override(text)
                ok = not ov.is_sweep_override() and ov.get_key_element() == key_element and ov.package is None
                got = (ok, ov.value() if ok else None)
            except Exception:  # noqa: BLE001 (Hydra's composition of this job will say what is wrong)
                got = (False, None)
            self._seen[text] = got
        return got


def _free_positions(overrides: Sequence[str], is_group: Callable[[str], bool]) -> list[int] | None:
    """Positions of the overrides that may hold free values (by key alone), or None if none can."""
    splits = [_split(o) for o in overrides]
    keys = [(_plain_key(s[0]) if s else None) for s in splits]
    out = []
    for i, k in enumerate(keys):
        if k is None or k[1] == "hydra" or k[1].startswith("hydra.") or is_group(k[1]) \
                or is_group(k[1].replace(".", "/")):
            continue
        others = [o for j, o in enumerate(overrides) if j != i]
        other_keys = [(_split(o) or (o, ""))[0].lstrip("+~").split("@")[0] for o in others]
        if any(_related(k[1], ok) for ok in other_keys):
            continue
        out.append(i)
    return out or None


def _node_class(cfg: DictConfig, key: str) -> type | None:
    node: Any = cfg
    try:
        for part in key.split("."):
            if not isinstance(node, DictConfig) or node._is_none() or node._is_interpolation():
                return None
            node = node._get_node(part, validate_access=False)
            if node is None:
                return None
    except Exception:  # noqa: BLE001 (an unusual node: compose the jobs of this shape)
        return None
    return type(node)


def _takes(node_takes: dict[type, tuple[type, ...]], node_cls: type | None, value: Any) -> bool:
    accepted = node_takes.get(node_cls) if node_cls is not None else None
    if not accepted or type(value) not in accepted:  # exact type: a bool is not an int here
        return False
    return not (isinstance(value, str) and ("$" in value or "\\" in value))


class ShapeValidator:
    """Checks the batches of one sweep (module doc). Shapes seen in one batch stay known for the
    next (hydra.sweeper.max_batch_size), since every batch composes against the same master config.
    `compose(overrides)` composes one job; default: `config_loader.load_sweep_config`, the call
    `Sweeper.validate_batch_is_legal` makes."""

    def __init__(self, config_loader: Any, master_config: DictConfig,
                 compose: Callable[[list[str]], Any] | None = None) -> None:
        self.loader, self.master = config_loader, master_config
        self.compose = compose or (lambda ov: config_loader.load_sweep_config(master_config=master_config,
                                                                             sweep_overrides=ov))
        self.check = ShapeCheck()
        self._is_group: Callable[[str], bool] | None = None
        self._values: _Values | None = None
        self._node_takes = _node_takes()
        self._free: dict[tuple[str, ...], list[int] | None] = {}
        self._shapes: dict[tuple[Any, ...], dict[int, type | None]] = {}

    def validate(self, batch: Sequence[Sequence[str]]) -> ShapeCheck:
        """Raise what Hydra raises for the first job of `batch` that does not compose, as
        `Sweeper.validate_batch_is_legal` does; the counts so far."""
        check = self.check
        if not batch:
            return check
        if self._is_group is None:
            self._is_group = _group_test(self.loader, self.master, list(batch[0])) or _every_key_a_group
            self._values = _Values()
        for ov in batch:
            ov = list(ov)
            elements = tuple((_split(o) or (o, ""))[0] for o in ov)
            if elements not in self._free:
                self._free[elements] = _free_positions(ov, self._is_group)
            free = self._free[elements]
            if free is None:
                self.compose(ov)
                check.note("no free value")
                continue
            read = {i: self._values.read(ov[i], elements[i]) for i in free}  # type: ignore[union-attr]
            shape = (elements, tuple(None if i in read else o for i, o in enumerate(ov)))
            nodes = self._shapes.get(shape)
            if nodes is None:
                cfg = self.compose(ov)
                _hand_over(self.master, ov, cfg)
                self._shapes[shape] = {i: _node_class(cfg, elements[i].lstrip("+")) for i in free}
                check.shapes += 1
                check.note("first job of its shape")
            elif all(ok and _takes(self._node_takes, nodes[i], v) for i, (ok, v) in read.items()):
                check.derived += 1
            else:
                self.compose(ov)
                check.note("a value its node may refuse")
        return check


def _hand_over(master: DictConfig, overrides: list[str], cfg: DictConfig) -> None:
    """Keep the newest _HANDOVER_MAX composed configs: configs nobody took (a dry run, a job found
    done) are dropped oldest first, so a long process (many sweeps, a sweeper's many batches)
    neither stops handing over nor holds configs forever."""
    if not isinstance(cfg, DictConfig):
        return
    while len(_HANDOVER) >= _HANDOVER_MAX:
        _HANDOVER.pop(next(iter(_HANDOVER)))
    _HANDOVER[(id(master), tuple(overrides))] = (master, cfg)


def take_composed(master: DictConfig, overrides: Sequence[str]) -> DictConfig | None:
    """The config a shape check composed for exactly these overrides against this master config,
    once (the caller may modify it), else None. Hydra composes a job the same way every time in
    one process: the launcher's planner gets what it would compose itself."""
    got = _HANDOVER.pop((id(master), tuple(overrides)), None)
    return got[1] if got is not None and got[0] is master else None


def _every_key_a_group(key: str) -> bool:
    """Stands in for group_exists when the loader does not expose its repository: nothing is free."""
    return True


def _group_test(config_loader: Any, master_config: DictConfig, overrides: list[str]
                ) -> Callable[[str], bool] | None:
    """`group_exists` of the repository Hydra composes these jobs with (the primary config's
    hydra.searchpath included), or None when the loader does not expose it."""
    make = getattr(config_loader, "_parse_overrides_and_create_caching_repo", None)
    if make is None:
        return None
    try:
        hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))  # type: ignore[arg-type]
        _, repo = make(master_config.hydra.job.config_name, hydra_overrides + overrides)
    except Exception:  # noqa: BLE001 (composing every job reports whatever this was)
        return None
    return repo.group_exists
