"""Check Hydra overrides before Hydra sees them, so a value with `=`, parentheses or spaces gets a
fix instead of a grammar error.

The seeds' `wandb.notes=K=4, H=16 (strong)` broke Hydra's override parser: the unquoted value has a
second `=`, a comma (read as a sweep) and parentheses (read as a function call). Quoted inside the
override (`wandb.notes='K=4, H=16 (strong)'`) it is one string. `check_overrides` parses every
override with Hydra's own `OverridesParser`; on failure it names the override, the parser's cause
and the exact shell-quoted form to type, which is itself re-parsed to prove it yields the value.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

# Characters a double-quoted shell word must backslash-escape.
_SHELL_DQ_ESCAPE = re.compile(r'(["$`\\])')


class OverrideError(ValueError):
    """An override Hydra cannot parse. `fix` is the exact shell word to type instead, if any."""

    def __init__(self, override: str, cause: str, fix: str | None):
        self.override, self.cause, self.fix = override, cause, fix
        msg = f"cannot parse override {override!r}: {cause}."
        if fix:
            msg += f" Fix: quote the value: {fix}"
        else:
            msg += " Fix: write it as key=value (see https://hydra.cc/docs/advanced/override_grammar/basic/)"
        super().__init__(msg)


@dataclass(frozen=True)
class _Split:
    key: str  # with its +, ++ or ~ prefix
    value: str


def _split(override: str) -> _Split | None:
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    return _Split(key, value)


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _cause(exc: Exception) -> str:
    """Hydra's message, first line only, without the documentation link."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("See https://")]
    lines = [ln for ln in lines if not ln.startswith("Error parsing override")] or lines
    return lines[0] if lines else type(exc).__name__


def _hydra_quoted(key: str, value: str) -> str:
    """The override with its value quoted for Hydra's grammar (single quotes unless the value has one)."""
    if "'" not in value:
        return f"{key}='{value}'"
    if '"' not in value:
        return f'{key}="{value}"'
    # Both quote kinds: Hydra's quoted strings take backslash-escaped quotes.
    return "{}='{}'".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))


def shell_word(arg: str) -> str:
    """`arg` as one shell word, preferring a readable double-quoted form over shlex's '"'"' dance."""
    if shlex.quote(arg) == arg:
        return arg
    if "!" in arg:  # history expansion happens inside double quotes in interactive bash
        return shlex.quote(arg)
    return '"' + _SHELL_DQ_ESCAPE.sub(r"\\\1", arg) + '"'


def suggest_fix(override: str) -> str | None:
    """The shell word to type so that Hydra reads the value as one literal string, or None when the
    override has no `key=` part or even the quoted form does not parse (a bad key)."""
    parts = _split(override)
    if parts is None or not parts.key:
        return None
    candidate = _hydra_quoted(parts.key, parts.value)
    from hydra.errors import HydraException

    try:
        parsed = _parser().parse_overrides([candidate])[0]
    except HydraException:  # OverrideParseException included: the key itself is malformed
        return None
    if parsed.value() != parts.value:  # must give back exactly what the user meant
        return None
    return shell_word(candidate)


def check_overrides(overrides: Sequence[str]) -> None:
    """Parse each override with Hydra's parser; raise OverrideError on the first that fails."""
    from hydra.errors import OverrideParseException

    parser = _parser()
    for ov in overrides:
        try:
            parser.parse_overrides([ov])
        except OverrideParseException as e:
            raise OverrideError(ov, _cause(e), suggest_fix(ov)) from None


def overrides_in_argv(argv: Sequence[str]) -> list[str]:
    """The override arguments of a Hydra app command line (flags such as -m, --config-name X dropped)."""
    from hydra._internal.utils import get_args_parser

    try:
        known, unknown = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # e.g. --help: Hydra answers that itself
        return []
    return list(known.overrides or []) + [u for u in unknown if not u.startswith("-")]


def exit_on_bad_overrides(argv: Sequence[str] | None = None) -> None:
    """Entry-point guard: print `error: cannot parse override ...` with the fix and exit 2 before
    Hydra runs (so nothing touches the store)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_overrides(overrides_in_argv(argv))
    except OverrideError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
