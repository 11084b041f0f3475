"""The store's format: one integer in `<store>/store.json`, bumped by every change to an on-disk
document, so that a store outlives the version that wrote it.

    {"format": 3, "history": [{"from": 1, "to": 3, "at": ..., "by": "<code version>", "run_dirs": 4,
                               "steps": ["1-2", "2-3"]}],
     "pending": ["runs/app,lr=0.01/seed_0/15f33050", ...]}

A store without store.json but with run directories or sweep manifests was written before the format
was recorded: format 1 (the changelog in docs/architecture.md says what that covers). A store of an
older format is brought forward by core/migrations.py; one of a newer format is refused by name by every
reader and writer (`check_readable`): this version never half-reads or rewrites it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import StoreError, atomic_write_json, read_json

__all__ = ["FORMAT", "FORMAT_FILE", "LEGACY_FORMAT", "StoreFormatError", "check_readable", "read_format",
           "read_format_doc", "record_if_new", "write_format_doc"]

FORMAT = 3          # what this version writes and reads; every change to an on-disk document bumps it
LEGACY_FORMAT = 1   # a store written before store.json existed
FORMAT_FILE = "store.json"


class StoreFormatError(StoreError):
    """The store was written by a newer format than this version reads."""


def read_format_doc(root: str | os.PathLike) -> dict[str, Any] | None:
    """store.json, or None when it is missing."""
    return read_json(Path(root) / FORMAT_FILE)


def read_format(root: str | os.PathLike) -> int | None:
    """The store's format: store.json's, else LEGACY_FORMAT for a store that holds run directories or
    sweep manifests, else None (nothing stored yet: a new store takes this version's format)."""
    root = Path(root)
    doc = read_format_doc(root)
    if doc is not None:
        try:
            return int(doc["format"])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{root / FORMAT_FILE}: no integer `format` ({e!r}); the file is corrupt. Fix: restore it "
                             f"from {root}/migrations/ or a backup, or delete it to have the store read as format "
                             f"{LEGACY_FORMAT} and migrated again") from e
    if (root / "runs").is_dir() or (root / "sweeps").is_dir():
        return LEGACY_FORMAT
    return None


def check_readable(root: str | os.PathLike) -> int | None:
    """The store's format, after refusing one this version cannot read (a newer one)."""
    fmt = read_format(root)
    if fmt is not None and fmt > FORMAT:
        raise StoreFormatError(
            f"{Path(root)}: written by store format {fmt}; this version of safedreamer-sweep reads up to format "
            f"{FORMAT}. Nothing was read or written. Fix: upgrade safedreamer-sweep (pip install -U "
            f"safedreamer-sweep, or check out a newer commit) before using this store")
    return fmt


def write_format_doc(root: str | os.PathLike, *, history: list[dict] | None = None,
                     pending: list[str] | None = None) -> None:
    """Record this version's format in store.json (atomically), keeping the history of migrations."""
    root = Path(root)
    doc = read_format_doc(root) or {}
    atomic_write_json(root / FORMAT_FILE, {"format": FORMAT, "history": [*doc.get("history", []), *(history or [])],
                                           "pending": sorted(pending or []),
                                           "created_at": doc.get("created_at", time.time())})


def record_if_new(root: str | os.PathLike, created: Path | None = None) -> None:
    """Record this version's format in a store that has none yet and holds nothing but `created` (the
    run directory or manifest just written): a store of an older format holds more, and is left to
    core/migrations.py. Costs one stat when store.json exists."""
    root = Path(root)
    if (root / FORMAT_FILE).exists():
        return
    created = Path(created).resolve() if created is not None else None
    for pattern in ("runs/*/seed_*/*/spec.json", "runs/*/*/spec.json", "sweeps/*.json"):
        for p in root.glob(pattern):
            if created is None or (p.resolve() != created and p.parent.resolve() != created):
                return
    write_format_doc(root)
