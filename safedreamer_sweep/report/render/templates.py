"""Templated documents: the user's slides or defense notes as Jinja2 Markdown templates whose
placeholders the report fills with the current numbers (numbers change, structure does not).

    {{ main['v2_full'].ood_return }}          -> "12.34 ± 5.67" (mean ± std over seeds)
    {{ main['v2_full'].ood_return.ci }}       -> "[8.10, 16.20]" (Student t; below 3 seeds the
                                                 words "no interval (n=2; ...)" instead)
    {{ main['v2_full'].ood_return.n }}        -> 5
    {{ ablation['v2_full'].id_return }}       -> "+3.21 [0.50, 6.00]"
    {{ decision.headline }}, {{ coverage.done }} / {{ coverage.total }}, {{ cost.device_hours }}

Undefined placeholders are errors (StrictUndefined): a typo never renders as an empty string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from safedreamer_sweep.report.analysis.stats import (
    MIN_SEEDS_FOR_INTERVAL,
    no_interval_text,
)
from safedreamer_sweep.report.render.text import fmt
from safedreamer_sweep.report.settings import PROJECT_ROOT


class TemplateRenderError(Exception):
    """A template could not be rendered; the message names the template, the line and the fix."""


@dataclass(frozen=True)
class Number:
    """One reported statistic over seeds; renders as "mean ± std"."""

    mean: float
    std: float
    iqm: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def ci(self) -> str:
        if self.n < MIN_SEEDS_FOR_INTERVAL:
            return no_interval_text(self.n)
        return f"[{fmt(self.ci_low)}, {fmt(self.ci_high)}]"

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{fmt(self.mean)} ± {fmt(self.std)}" if self.n > 1 else fmt(self.mean)


@dataclass(frozen=True)
class Difference:
    """A config minus the baseline; renders as "+diff [low, high]" (or "+diff no interval (...)"
    when either side has fewer than MIN_SEEDS_FOR_INTERVAL seeds)."""

    diff: float
    ci_low: float
    ci_high: float
    prob_improvement: float
    n: int
    n_baseline: int

    @property
    def ci(self) -> str:
        if min(self.n, self.n_baseline) < MIN_SEEDS_FOR_INTERVAL:
            return no_interval_text(self.n, self.n_baseline)
        return f"[{fmt(self.ci_low)}, {fmt(self.ci_high)}]"

    def __str__(self) -> str:
        if not math.isfinite(self.diff):
            return "n/a"
        return f"{self.diff:+.2f} {self.ci}"


class Namespace:
    """Attribute (and item) access over a dict, so `x.name` and `x['name']` both work in templates
    and an unknown name is an AttributeError (hence a StrictUndefined error naming it)."""

    def __init__(self, kind: str, values: dict[str, Any]):
        self._kind = kind
        self.__dict__.update(values)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.__dict__[key]
        except KeyError:
            raise KeyError(key) from None

    def __repr__(self) -> str:
        return f"<{self._kind}: {', '.join(k for k in self.__dict__ if not k.startswith('_'))}>"


def _resolve_template(path: str | Path) -> Path:
    """An absolute path, or a relative one found in the current directory or the project root."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise TemplateRenderError(f"report.templates: template {str(path)!r} not found (looked in "
                              f"{', '.join(str(c) for c in candidates)}). Fix: give an existing path, "
                              f"or remove it from report.templates.")


def _output_name(template: Path) -> str:
    """slides.md.j2 -> slides.md; notes.jinja -> notes; anything else keeps its name."""
    for suffix in (".j2", ".jinja2", ".jinja"):
        if template.name.endswith(suffix):
            return template.name[: -len(suffix)]
    return template.name


def _template_line(exc: BaseException, template: Path) -> int | None:
    """The template line an error was raised from (Jinja2 rewrites tracebacks to point at it)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).name == template.name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _render_template(template: Path, context: dict[str, Any]) -> str:
    """Render one template with StrictUndefined; TemplateRenderError names the placeholder, the
    template file and its line."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    try:
        return env.get_template(template.name).render(**context)
    except jinja2.UndefinedError as e:
        line = _template_line(e, template)
        raise TemplateRenderError(
            f"{template}{f' line {line}' if line else ''}: unknown placeholder ({e.message}). "
            f"Known names: {', '.join(sorted(context))}; configs: {', '.join(sorted(context.get('main', {})))}. "
            f"Fix the placeholder in the template; nothing was written."
        ) from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateRenderError(f"{template} line {e.lineno}: template syntax error ({e.message}). "
                                  f"Fix the template; nothing was written.") from None
    except jinja2.TemplateError as e:
        line = _template_line(e, template)
        raise TemplateRenderError(f"{template}{f' line {line}' if line else ''}: {type(e).__name__}: {e}. "
                                  f"Fix the template; nothing was written.") from None


def render_all(paths: list[str] | tuple[str, ...], context: dict[str, Any]) -> dict[str, str]:
    """Render every template in memory ({output name: text}); the first error stops all of them,
    so a bad template never leaves some documents updated and others stale."""
    out: dict[str, str] = {}
    for p in paths:
        t = _resolve_template(p)
        name = _output_name(t)
        if name in out:
            raise TemplateRenderError(f"report.templates: two templates render to the same file {name!r}; "
                                      f"rename one of them.")
        out[name] = _render_template(t, context)
    return out

