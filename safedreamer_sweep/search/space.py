"""The search space: `hydra.sweeper.params` (override key -> Hydra sweep text) read into Optuna 5
distributions, exactly as hydra-optuna-sweeper's `create_optuna_distribution_from_override` reads it.

Each value is parsed by Hydra's own OverridesParser (never a regex), then:

    interval(a,b)                 FloatDistribution(a, b)        (int(interval(a,b)): IntDistribution(a, b))
    tag(log, interval(a,b))       the same with log=True         (ints stay IntDistribution, log=True)
    range(a,b[,step])             IntDistribution(a, b, step)    (a float bound or step: FloatDistribution
                                                                  with that step; shuffle(range): choice)
    choice(x,y,...) or x,y,...    CategoricalDistribution([x, y, ...])  (a list or dict choice, such as
                                  choice([64,64],[256,256]), is held as its Hydra text and written as is)
    a plain value                 a fixed override, passed to every trial as written
    ~key                          a fixed delete override

A shuffled sweep (`shuffle(range(1,4))`) is a choice of its values in sorted order: hydra-optuna-sweeper
kept the shuffled order, which would change the study's identity on every invocation.

As in hydra-optuna-sweeper, range's stop becomes the distribution's (inclusive) high: range(1,5) draws
from 1..5, although Hydra's basic sweeper would run 1..4; a config switches over with its meaning kept.
A value that does not parse, or a form Optuna cannot draw from (glob, a choice of lists), is a
SearchError naming the key and Hydra's message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from safedreamer_sweep.search.settings import SearchError

_SCALAR = (str, int, float, bool, type(None))


@dataclass
class Space:
    """The swept dimensions (name -> distribution, names are override keys such as `agent.lr`) and the
    fixed overrides (key -> value text as written; a delete override's key starts with `~`)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    # a choice's values that are Hydra text (a list or a dict: `[64,64]`), written as is, never quoted
    raw_choices: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        """Every key -> its canonical text, sorted (JSON-safe, for the study's identity): a dimension as
        the grammar form that parses back to the same distribution (`tag(log,interval(0.0001,0.01))`),
        a fixed override as its value text (`=` prefixed)."""
        out = {name: distribution_text(d, self.raw_choices.get(name, ())) for name, d in self.distributions.items()}
        out.update({key: "=" + value for key, value in self.fixed.items()})
        return dict(sorted(out.items()))

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: `key=value` for each of its params (in the space's order, each value written
        so Hydra parses it back to the same value and type), then the fixed overrides."""
        unknown = sorted(set(params) - set(self.distributions))
        if unknown:
            raise ValueError(f"params {unknown} are not dimensions of the search space {sorted(self.distributions)}")
        swept = [f"{name}={self._text(name, params[name])}" for name in self.distributions if name in params]
        return swept + [fixed_override(key, value) for key, value in self.fixed.items()]

    def _text(self, name: str, value: Any) -> str:
        return value if isinstance(value, str) and value in self.raw_choices.get(name, ()) else override_value(value)

    def grid(self) -> dict[str, list[Any]]:
        """Each dimension's values for GridSampler, as hydra-optuna-sweeper lists them (a choice's choices,
        a stepped range's steps below its stop); a continuous dimension is refused."""
        out: dict[str, list[Any]] = {}
        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution):
                out[name] = list(d.choices)
            elif isinstance(d, (IntDistribution, FloatDistribution)) and d.step is not None and not d.log:
                n = int((d.high - d.low) // d.step)
                out[name] = [d.low + i * d.step for i in range(n)]
            else:
                raise SearchError(f"hydra.sweeper.params.{name}: {distribution_text(d)} is continuous; the grid sampler "
                                  f"draws only from choices and stepped ranges. Fix: hydra.sweeper.params.{name}="
                                  f"'range(a,b,step)' or 'choice(...)', or another sampler (hydra.sweeper.sampler=tpe)")
        return out


def fixed_override(key: str, value: str) -> str:
    """A fixed override's command-line text: `key=value`, or a delete override `~key` / `~key=value`."""
    if key.startswith("~"):
        return key if value == "" else f"{key}={value}"
    return f"{key}={value}"


def parse_space(params: Mapping[str, Any]) -> Space:
    """The search space of `hydra.sweeper.params` (values as text, or YAML scalars). SearchError names
    the first key that does not parse or cannot be drawn from, with Hydra's message and the fix."""
    parser = OverridesParser.create()
    space = Space()
    for key, value in params.items():
        line = f"{key}={value if isinstance(value, str) else override_value(value)}"
        try:
            override = parser.parse_override(line)
        except HydraException as e:
            raise SearchError(f"hydra.sweeper.params.{key}={value!r} does not parse as a Hydra override: {_first_line(e)}. "
                              f"Fix: a sweep such as interval(0.0001,0.1), int(interval(1,8)), range(1,10,2), "
                              f"choice(a,b) or tag(log,interval(1e-5,1e-2)), or a plain value") from None
        if override.is_delete():
            space.fixed["~" + override.key_or_group] = "" if override.value() is None else override.get_value_element_as_str()
            continue
        name = override.get_key_element()
        try:
            made = distribution_of(override)
        except (ValueError, TypeError, AssertionError, NotImplementedError, HydraException) as e:
            raise SearchError(f"hydra.sweeper.params.{key}={value!r}: Optuna cannot draw from it ({e}). Fix: one of "
                              f"interval, int(interval), range, choice, tag(log,interval), or a plain value") from None
        if isinstance(made, BaseDistribution):
            space.distributions[name] = made
            raw = [c for c, v in zip(_choices(override), _values(override)) if isinstance(c, str) and not isinstance(v, str)] \
                if isinstance(made, CategoricalDistribution) else []
            if raw:
                space.raw_choices[name] = raw
        else:
            space.fixed[name] = made
    return space


def distribution_of(override: Override) -> BaseDistribution | str:
    """hydra-optuna-sweeper's `create_optuna_distribution_from_override`, on Optuna 5's distributions:
    a sweep's distribution, or a plain override's value text."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, Glob):
        raise NotImplementedError("Glob: glob() picks options of a config group; list them instead: choice(a,b)")
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        choices = _choices(override)
        if getattr(value, "shuffle", False):  # shuffle() means nothing to a sampler; its order would change the identity
            choices.sort(key=lambda x: (type(x).__name__, x if isinstance(x, (int, float)) else str(x)))
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        assert value.start is not None and value.stop is not None
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(float(value.start), float(value.stop), step=float(value.step) if value.step else None)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise NotImplementedError(f"{type(value).__name__} is not a sweep Optuna can draw from")


def _values(override: Override) -> list[Any]:
    """A choice's or shuffled range's values as parsed (lists stay lists), in their written order."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return list(value.list)
    return list(override.sweep_iterator())


def _choices(override: Override) -> list[Any]:
    """hydra-optuna-sweeper's choices: each value encoded (a list or dict becomes its Hydra text)."""
    out = []
    for x in _values(override):
        x = Transformer.encode(x)
        if not isinstance(x, _SCALAR):
            raise TypeError(f"a choice draws str, int, float, bool or null values; got {type(x).__name__} {x!r}")
        out.append(x)
    return out


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("See https")]
    return " ".join(lines)


def distribution_text(d: BaseDistribution, raw: Sequence[str] = ()) -> str:
    """The grammar form that parses back to `d`: interval, int(interval), range, choice, tag(log, ...).
    `raw`: the choices that are Hydra text (lists, dicts), written as is."""
    if isinstance(d, CategoricalDistribution):
        return "choice(" + ",".join(c if isinstance(c, str) and c in raw else override_value(c) for c in d.choices) + ")"
    if isinstance(d, IntDistribution):
        if d.log:
            return f"tag(log,int(interval({d.low},{d.high})))"
        return f"range({d.low},{d.high},{d.step})" if d.step != 1 else f"int(interval({d.low},{d.high}))"
    if isinstance(d, FloatDistribution):
        low, high = override_value(float(d.low)), override_value(float(d.high))
        if d.step is not None:
            return f"range({low},{high},{override_value(float(d.step))})"
        return f"tag(log,interval({low},{high}))" if d.log else f"interval({low},{high})"
    raise TypeError(f"not a distribution of a Hydra search space: {d!r}")


def override_value(value: Any) -> str:
    """`value` written so Hydra's parser reads it back as the same value and type: floats by repr (always
    with a `.` or exponent: 1.0, 1e-05, inf), bools lower case, None as null, a string quoted when
    bare it would read as something else (`'1'`, `'a,b'`, `'null'`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _string_text(value)
    raise TypeError(f"a trial parameter is a scalar; got {type(value).__name__} {value!r}")


def _string_text(value: str) -> str:
    parser = OverridesParser.create()
    candidates = [value]
    for body in (value, value.replace("\\", "\\\\")):  # Hydra unescapes backslashes only before a quote
        candidates += ["'" + body.replace("'", "\\'") + "'", '"' + body.replace('"', '\\"') + '"']
    for text in candidates:
        try:
            o = parser.parse_override(f"k={text}")
        except HydraException:
            continue
        if not o.is_sweep_override() and o.value() == value and isinstance(o.value(), str):
            return text
    raise ValueError(f"cannot write {value!r} as a Hydra override value")
