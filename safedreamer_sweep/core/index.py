"""The store index: identity hash -> run directory, in `<store>/index.sqlite` (stdlib sqlite3).

A cell is its identity (the hash of its resolved run config), not the label a command line happens
to give it: the planner finds a cell's run directory by its hash wherever it sits under runs/, so a
narrowed or widened sweep, reordered overrides or a second config group reaching the same config all
find the same directory. The index is a cache, never the source of truth:

- it is built from the directories (one glob of runs/, no file read) when it is missing, unreadable,
  of another schema version, when a writer could not register a new run directory (it leaves the
  marker `index.stale`), or when runs/ holds a label folder the index does not list (a store copied
  in, or written by an older version of this package);
- every hit is checked against the run directory's own spec.json (an entry whose directory was moved
  or deleted is dropped), and a caller's miss still looks at the label path itself (Store.locate);
- RunDir.ensure_spec registers each run directory it creates (register_run).

A lookup is one indexed query: it never walks the tree (bench/store_lookup.py measures it).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

INDEX_NAME = "index.sqlite"
STALE_MARKER = "index.stale"
_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (path TEXT PRIMARY KEY, hash TEXT NOT NULL, label TEXT NOT NULL, seed INTEGER);
CREATE INDEX IF NOT EXISTS runs_by_hash ON runs (hash);
"""


def _scan_runs(runs_dir: Path) -> Iterable[tuple[str, str, str, int | None]]:
    """(path relative to runs/, hash, label, seed) of every run directory, read from the layout alone:
    runs/<label>/seed_<seed>/<hash8>/spec.json and runs/<label>/<hash8>/spec.json (no seed)."""
    if not runs_dir.is_dir():
        return
    for spec in runs_dir.glob("*/seed_*/*/spec.json"):
        label, seed_dir, hash8 = spec.parent.relative_to(runs_dir).parts
        if seed_dir[5:].isdigit():
            yield f"{label}/{seed_dir}/{hash8}", hash8, label, int(seed_dir[5:])
    for spec in runs_dir.glob("*/*/spec.json"):
        label, hash8 = spec.parent.relative_to(runs_dir).parts
        yield f"{label}/{hash8}", hash8, label, None


class RunIndex:
    """The index of one store root. Opened lazily, one connection per process."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME
        self.runs_dir = self.root / "runs"
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._checked = False
        self.rebuilt = 0  # how many times this object rebuilt the index (the tests and the bench read it)

    # --- connection
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self._conn.executescript(_SCHEMA)
            except (OSError, sqlite3.OperationalError):
                # a store this process cannot write (a read-only mount): an index in memory, built
                # from the directories, serves this process's lookups
                self._conn = sqlite3.connect(":memory:", isolation_level=None)
                self._conn.executescript(_SCHEMA)
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    # --- freshness
    def _stale(self, conn: sqlite3.Connection) -> str | None:
        """Why the index must be rebuilt, or None when it is fresh."""
        row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is None:
            return "no index yet"
        if row[0] != _VERSION:
            return f"index version {row[0]}, this code reads {_VERSION}"
        if (self.root / STALE_MARKER).exists():
            return f"a writer could not register a run directory ({STALE_MARKER})"
        on_disk = {e.name for e in os.scandir(self.runs_dir) if e.is_dir()} if self.runs_dir.is_dir() else set()
        known = {r[0] for r in conn.execute("SELECT DISTINCT label FROM runs")}
        if on_disk - known:
            return f"runs/ holds {len(on_disk - known)} folder(s) the index does not list"
        return None

    def ensure_fresh(self) -> sqlite3.Connection:
        """The connection, after a rebuild if the index is stale (checked once per object and process).
        A corrupt index file is replaced; one this process cannot write gives way to an index in memory."""
        if self._checked and self._conn is not None and self._pid == os.getpid():
            return self._conn
        for _attempt in range(3):
            try:
                conn = self._connect()
                if self._stale(conn):
                    self.rebuild()
                self._checked = True
                return conn
            except sqlite3.OperationalError:  # locked for 30 s or read-only: serve from memory
                self.close()
                self._conn = sqlite3.connect(":memory:", isolation_level=None)
                self._conn.executescript(_SCHEMA)
                self._pid = os.getpid()
            except sqlite3.DatabaseError:  # not a database any more: it is only a cache, build it again
                self.close()
                with contextlib.suppress(OSError):
                    self.path.unlink()
        raise sqlite3.DatabaseError(f"{self.path}: the store index could not be built in 3 attempts")

    def rebuild(self) -> int:
        """Build the index from the directories (one glob of runs/). Returns the number of run dirs."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / STALE_MARKER).unlink()  # before the scan: a registration failing during it re-marks
        rows = list(_scan_runs(self.runs_dir))
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM runs")
            conn.executemany("INSERT OR REPLACE INTO runs (path, hash, label, seed) VALUES (?, ?, ?, ?)", rows)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?)", (_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.rebuilt += 1
        return len(rows)

    # --- queries
    def lookup(self, hash8: str) -> list[Path]:
        """Every run directory the index holds for `hash8` (absolute paths)."""
        conn = self.ensure_fresh()
        rows = conn.execute("SELECT path FROM runs WHERE hash=? ORDER BY path", (hash8,)).fetchall()
        return [self.runs_dir / r[0] for r in rows]

    def add(self, path: Path, hash8: str, label: str, seed: int | None) -> None:
        self._write("INSERT OR REPLACE INTO runs (path, hash, label, seed) VALUES (?, ?, ?, ?)",
                    (Path(path).relative_to(self.runs_dir).as_posix(), hash8, label, seed))

    def drop(self, path: Path) -> None:
        self._write("DELETE FROM runs WHERE path=?", (Path(path).relative_to(self.runs_dir).as_posix(),))

    def _write(self, sql: str, args: tuple) -> None:
        """One change; when it cannot be written, the marker `index.stale` makes the next lookup rebuild."""
        try:
            self._connect().execute(sql, args)
        except sqlite3.Error:
            with contextlib.suppress(OSError):
                (self.root / STALE_MARKER).touch()

    def count(self) -> int:
        return int(self.ensure_fresh().execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def store_root_of(run_path: Path, seed: int | None) -> Path | None:
    """The store root of a run directory laid out as runs/<label>/seed_<seed>/<hash8> (or
    runs/<label>/<hash8> without a seed), None for a directory outside that layout."""
    runs = run_path.parents[2] if seed is not None else run_path.parents[1]
    return runs.parent if runs.name == "runs" else None


def register_run(run_path: Path, hash8: str, seed: int | None) -> None:
    """Add a new run directory to its store's index. Never fails the write it follows: when the index
    cannot be written it leaves the marker `index.stale`, and the next lookup rebuilds it."""
    run_path = Path(run_path)
    root = store_root_of(run_path, seed)
    label = (run_path.parents[1] if seed is not None else run_path.parent).name
    if root is None or not (root / INDEX_NAME).exists():
        return  # no index yet: the first lookup builds it from the directories, this one included
    idx = RunIndex(root)
    try:
        idx.add(run_path, hash8, label, seed)
    finally:
        idx.close()
