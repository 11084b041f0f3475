"""Probes: turn an external training script's own files into env steps, checkpoints and results.

A script we do not control says how far it is only through what it writes: a JSON-lines metrics
file (often on a wall-clock timer, so it can be stale for minutes while the run is healthy), data
files that grow with every env step (SafeDreamer's replay chunks `<time>-<uuid>-<succ>-<len>.npz`),
or lines on stdout. Each probe reads one of those and answers "env step now", so heartbeats and
stall detection count real progress, not log writes.

Every probe is a small object with `read() -> int | None` (None: no evidence yet). They never
raise on a torn or half-written file: a script may be writing while we read.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import json
import math
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PROBE_TYPES = ("jsonl", "files", "stdout")


class ProbeConfigError(ValueError):
    """A probe, checkpoint or result declaration in the task config is wrong; the message says how."""


# ----------------------------------------------------------------------------- helpers


def expand_glob(pattern: str | os.PathLike, base: Path | None = None) -> list[Path]:
    """Files matching `pattern` (`**` recurses); a relative pattern is taken from `base`."""
    pattern = str(pattern)
    if base is not None and not os.path.isabs(pattern):
        pattern = str(base / pattern)
    return [Path(p) for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)]


def _glob_names(pattern: str, base: Path | None) -> list[str]:
    """Like expand_glob but plain strings and no stat per file: FilesProbe lists thousands of replay
    chunks every tick (bench/bench_probes.py: 5000 files in ~15 ms instead of ~65 ms)."""
    if base is not None and not os.path.isabs(pattern):
        pattern = str(base / pattern)
    return globlib.glob(pattern, recursive=True)


def _newest(paths: Iterable[Path]) -> Path | None:
    """The most recently modified of `paths` (files that vanish while we look are ignored)."""
    best, best_mtime = None, -1.0
    for p in paths:
        try:
            m = p.stat().st_mtime
        except FileNotFoundError:
            continue
        if m > best_mtime:
            best, best_mtime = p, m
    return best


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    """`row[key]` if present as a flat key (SafeDreamer writes `episode/score` flat), else the
    dotted path into nested mappings (`stats.env_step`). None when absent."""
    if key in row:
        return row[key]
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _as_number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v  # NaN is no evidence


def tail_jsonl(path: Path, max_bytes: int = 256 * 1024) -> list[dict]:
    """The complete JSON rows in the last `max_bytes` of a JSON-lines file (a torn first or last
    line is skipped), so probing a long metrics file every few seconds stays cheap."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ProbeConfigError(f"{what}: regex {pattern!r} does not compile ({e}). Fix the pattern.") from e
    if rx.groups < 1:
        raise ProbeConfigError(f"{what}: regex {pattern!r} has no capture group; wrap the number in "
                               f"parentheses, e.g. 'step (\\d+)'.")
    return rx


# ----------------------------------------------------------------------------- progress probes


@dataclass
class JsonlProbe:
    """The last value of `key` in the newest file matching `glob` (times `scale`). The value is
    absolute: a resumed script that restores its step counter keeps counting from it."""

    name: str
    glob: str
    key: str
    scale: float = 1.0
    base_dir: Path | None = None

    def read(self) -> int | None:
        path = _newest(expand_glob(self.glob, self.base_dir))
        if path is None:
            return None
        for row in reversed(tail_jsonl(path)):
            v = _as_number(_lookup(row, self.key))
            if v is not None:
                return int(v * self.scale)
        return None


@dataclass
class FilesProbe:
    """Env steps from data files: (files matching `glob`) x `per_file`, or the sum of the number
    `size_regex` captures in each file name (SafeDreamer: `-(\\d+)\\.npz$`, the chunk length), times
    `scale` (an action repeat). With `since_start` (the default) only what appeared after `start()`
    counts, added to `base` (the step the attempt resumed from): a script that writes a fresh
    timestamped directory per attempt, or keeps old chunks around, is then counted right; and
    `rebase(step)` re-anchors the count on a checkpoint that states its step (only growth after it
    counts), so data collected before the script restored its step counter (SafeDreamer prefills
    its replay before loading the checkpoint) is never added on top of it.
    `key_regex` (a first group naming the data a file holds, e.g. a chunk's uuid) counts files of
    the same key once, at their largest size: SafeDreamer rewrites its current partial chunk under a
    new name with a growing length at every checkpoint save, leaving the shorter one in place."""

    name: str
    glob: str
    per_file: float | None = None
    size_regex: str | None = None
    scale: float = 1.0
    since_start: bool = True
    key_regex: str | None = None
    base_dir: Path | None = None
    base: int = 0
    _offset: dict[str, int] = field(default_factory=dict, repr=False)  # units per key already counted in base
    _pending: float = field(default=0.0, repr=False)  # units the anchor covers that no file held yet
    _sizes: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if (self.per_file is None) == (self.size_regex is None):
            raise ProbeConfigError(f"probe {self.name!r} (files): give exactly one of `per_file` (env steps "
                                   f"per file) or `size_regex` (a regex capturing the size in the file name)")
        self._rx = _compile(self.size_regex, f"probe {self.name!r}") if self.size_regex else None
        self._key_rx = _compile(self.key_regex, f"probe {self.name!r} key_regex") if self.key_regex else None

    def start(self, base: int = 0) -> None:
        """Remember what exists now (it belongs to earlier attempts) and the resume step."""
        self.base, self._pending = int(base), 0.0
        self._offset = self._units() if self.since_start else {}

    def rebase(self, step: int) -> None:
        """A checkpoint holding env step `step` was just written: count from it (since_start only).
        The steps it covers that no file holds yet (a partial chunk flushed after the checkpoint,
        or written only when full) are remembered as pending, so their file is not counted again
        on top of `step`."""
        if not self.since_start:
            return
        units = self._units()
        grown = sum(max(0, v - self._offset.get(k, 0)) for k, v in units.items())
        covered = (int(step) - self.base) / self._steps_per_unit()
        self._pending = max(0.0, covered - (grown - self._pending))
        self.base, self._offset = int(step), units

    def _size(self, path: str) -> int:
        if path not in self._sizes:
            if self._rx is None:
                self._sizes[path] = 1
            else:
                m = self._rx.search(os.path.basename(path))
                self._sizes[path] = int(m.group(1)) if m else 0
        return self._sizes[path]

    def _units(self) -> dict[str, int]:
        """Size units per key (per file without key_regex) of the files matching now."""
        by_key: dict[str, int] = {}
        for p in _glob_names(self.glob, self.base_dir):
            m = self._key_rx.search(os.path.basename(p)) if self._key_rx else None
            k = m.group(1) if m else p
            by_key[k] = max(by_key.get(k, 0), self._size(p))
        return by_key

    def read(self) -> int | None:
        grown = sum(max(0, v - self._offset.get(k, 0)) for k, v in self._units().items())
        if not grown:
            return self.base if self.since_start and self.base else None
        if not self.since_start:
            return int(grown * self._steps_per_unit())
        return self.base + int(max(0.0, grown - self._pending) * self._steps_per_unit())

    def _steps_per_unit(self) -> float:
        """Env steps per counted unit (a file with per_file, else one unit of the captured size)."""
        return (self.per_file if self.per_file is not None else 1.0) * self.scale


@dataclass
class StdoutProbe:
    """The number the first group of `pattern` captures in the newest matching stdout line."""

    name: str
    pattern: str
    scale: float = 1.0
    value: int | None = None

    def __post_init__(self) -> None:
        self._rx = _compile(self.pattern, f"probe {self.name!r}")

    def feed(self, line: str) -> None:
        m = self._rx.search(line)
        if m:
            v = _as_number(m.group(1))
            if v is not None:
                self.value = int(v * self.scale)

    def read(self) -> int | None:
        return self.value


Probe = JsonlProbe | FilesProbe | StdoutProbe


def build_probes(decls: Iterable[Mapping[str, Any]], base_dir: Path | None = None) -> list[Probe]:
    """Probes from the task config's `probes:` list (globs are already rendered)."""
    out: list[Probe] = []
    for i, d in enumerate(decls):
        d = dict(d)
        name = str(d.pop("name", f"probe{i}"))
        kind = d.pop("type", None)
        scale = float(d.pop("scale", 1.0))
        try:
            if kind == "jsonl":
                out.append(JsonlProbe(name, glob=str(d.pop("glob")), key=str(d.pop("key")), scale=scale,
                                      base_dir=base_dir))
            elif kind == "files":
                out.append(FilesProbe(name, glob=str(d.pop("glob")), per_file=d.pop("per_file", None),
                                      size_regex=d.pop("size_regex", None), scale=scale,
                                      since_start=bool(d.pop("since_start", True)),
                                      key_regex=d.pop("key_regex", None), base_dir=base_dir))
            elif kind == "stdout":
                out.append(StdoutProbe(name, pattern=str(d.pop("pattern")), scale=scale))
            else:
                raise ProbeConfigError(f"probe {name!r}: type {kind!r} is not one of {_PROBE_TYPES}. "
                                       f"Fix: set `type:` to jsonl, files or stdout.")
        except KeyError as e:
            raise ProbeConfigError(f"probe {name!r} ({kind}): missing required field {e.args[0]!r}") from None
        if d:
            raise ProbeConfigError(f"probe {name!r} ({kind}): unknown field(s) {sorted(d)}; "
                                   f"see conf/task/external.yaml for the fields each type takes")
    return out


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class FoundCheckpoint:
    path: Path
    mtime: float
    size: int
    step: int | None  # None: the file does not say; the caller uses the probed step at write time


def checkpoint_step(path: Path, *, pickle_key: str | None = None, json_key: str | None = None,
                    name_regex: str | None = None) -> int | None:
    """The env step a checkpoint file holds, read the declared way; None if it cannot be read
    (being rewritten, foreign format). SafeDreamer's `checkpoint.ckpt` is a pickle of a dict whose
    `step` entry is the step counter."""
    try:
        if name_regex:
            m = re.search(name_regex, path.name)
            return int(m.group(1)) if m else None
        if json_key:
            n = _as_number(_lookup(json.loads(path.read_text()), json_key))
            return None if n is None else int(n)
        if pickle_key:
            with open(path, "rb") as f:
                doc = pickle.load(f)  # the user's own checkpoint of the user's own script
            n = _as_number(_lookup(doc, pickle_key)) if isinstance(doc, Mapping) else None
            return None if n is None else int(n)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError):
        return None
    return None


def find_checkpoint(pattern: str, base_dir: Path | None = None, scale: float = 1.0,
                    **step_how: Any) -> FoundCheckpoint | None:
    """The newest file matching `pattern`, with its env step (the step it holds x `scale`, e.g. an
    action repeat) when the declaration says how to read it."""
    path = _newest(expand_glob(pattern, base_dir))
    if path is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    step = checkpoint_step(path, **step_how)
    return FoundCheckpoint(path, st.st_mtime, st.st_size, None if step is None else int(step * scale))


# ----------------------------------------------------------------------------- results


def read_episodes(paths: Iterable[Path], fmt: str, keys: Mapping[str, str],
                  records: str | None = None) -> list[dict]:
    """Evaluation episodes from result files, mapped onto the store's episode schema.

    `keys` maps our names (`return`, `cost`, `length`) to the script's (`episode/score`, ...).
    jsonl: every row that has the `return` key is one episode. json: the document (or the list at
    the dotted path `records`) is a list of episode rows, or a single row."""
    if "return" not in keys:
        raise ProbeConfigError("eval.results.keys must map at least `return` (e.g. return: episode/score)")
    rows: list[dict] = []
    for p in paths:
        if fmt == "jsonl":
            rows.extend(tail_jsonl(p, max_bytes=1 << 40))
        elif fmt == "json":
            try:
                doc = json.loads(Path(p).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if records:
                doc = _lookup(doc, records) if isinstance(doc, Mapping) else None
            rows.extend(r for r in (doc if isinstance(doc, list) else [doc]) if isinstance(r, dict))
        else:
            raise ProbeConfigError(f"eval.results.format {fmt!r} is not jsonl or json")
    episodes = []
    for row in rows:
        ret = _as_number(_lookup(row, keys["return"]))
        if ret is None:
            continue
        ep: dict[str, float | int | None] = {"return": ret}
        for ours in ("cost", "length"):
            theirs = keys.get(ours)
            v = _as_number(_lookup(row, theirs)) if theirs else None
            # An undeclared or missing cost stays None (unknown), never 0: "no cost" is a claim.
            ep[ours] = (int(v) if ours == "length" else v) if v is not None else None
        episodes.append(ep)
    return episodes


# ----------------------------------------------------------------------------- training curves


@dataclass
class CurveMirror:
    """Copies the script's metrics rows into the run dir's metrics.jsonl as `{"env_step", ...}` rows
    with our key names (`keys`: ours -> theirs, e.g. episode_return: episode/score), so the report
    draws learning curves for external runs too. Reads only what was appended since the last call;
    a torn last line waits for the next call. Rows are mirrored in increasing env_step only."""

    glob: str
    step_key: str
    keys: Mapping[str, str]
    scale: float = 1.0
    base_dir: Path | None = None
    last_step: int = -1
    _path: Path | None = None
    _offset: int = 0

    def skip_existing(self) -> None:
        """At the start of an attempt: what the files hold now belongs to earlier attempts (mirrored
        then, or past the checkpoint and about to be redone); read only what is appended from here."""
        path = _newest(expand_glob(self.glob, self.base_dir))
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path, self._offset = path, path.stat().st_size

    def new_rows(self) -> list[dict]:
        path = _newest(expand_glob(self.glob, self.base_dir))
        if path is None:
            return []
        if path != self._path:  # a new attempt's log dir: start reading it from its beginning
            self._path, self._offset = path, 0
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(row, dict):
                continue
            step = _as_number(_lookup(row, self.step_key))
            if step is None or int(step * self.scale) <= self.last_step:
                continue
            mapped = {ours: v for ours, theirs in self.keys.items()
                      if (v := _as_number(_lookup(row, theirs))) is not None}
            if not mapped:
                continue
            self.last_step = int(step * self.scale)
            out.append({"env_step": self.last_step, **mapped})
        return out
