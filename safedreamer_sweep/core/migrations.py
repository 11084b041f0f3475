"""Bringing a store of an older format forward, in place: one step per format, each idempotent and
crash-safe, each backing up every document it rewrites under `<store>/migrations/<from>-<to>/`.

`migrate(root)` runs under the store's migration lock (`<store>/.migrate.lock`): two launchers opening
one old store at once migrate it once. A kill at any instant leaves a store the next `migrate` brings to
the same end as an uninterrupted run (tests/test_migrations.py kills it at every write): a step decides
what to do from what it finds, never from a record of how far it got, and store.json is written last.

Format 1 -> 2 (identities under today's definition). Two changes of the identity hash left run
directories that today's planner cannot find: ac4c02c excluded four `task.*` adapter keys from the hash,
and 5ebb97c made the app part of the hash of an app's cells (spec.json `app`). Both are recomputed from
the stored run config alone, `identity_hash(run_config(spec.run_config), app)`; the run directory is
renamed to its new hash (os.replace within its folder), spec.json records the hash it had
(`migrated[]`), the sweep manifests' hashes follow, and the store index is rebuilt. Which app a cell
of format 1 belongs to is not on disk (its spec.json holds no script path): it is the launching app's
when the cell's label is that app's job name (`app_label`), else the app of the recorded sweep command
that ran it (its manifest's `app_command`, a script that still exists), else the cell is left as it is,
listed in store.json `pending`, and migrated when its app's sweep opens the store. Work, attempts,
causes, checkpoints and evaluations are never touched.

Format 2 -> 3 (studies and pruned cells). Format 3 added `<store>/studies/<name>/` (an Optuna study's
journal.log and study.json) and the cell phase / attempt outcome `pruned`. A store of format 2 holds
neither, so the step rewrites nothing: it records the format (store.json, the one write), and a
reader of format 2 (which knows no `pruned`) is then refused by name instead of misreading a pruned
cell as one to run.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from safedreamer_sweep.core.app_identity import app_identity
from safedreamer_sweep.core.files import StoreError, atomic_write_json, read_json
from safedreamer_sweep.core.identity import config_hash, identity_hash, run_config
from safedreamer_sweep.core.index import STALE_MARKER
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store, label_base
from safedreamer_sweep.core.store_format import (
    FORMAT,
    LEGACY_FORMAT,
    check_readable,
    read_format_doc,
    write_format_doc,
)

__all__ = ["IDENTITY_FORMAT", "NEW_IN", "Migration", "migrate", "needs_migration"]

IDENTITY_FORMAT = 2  # the format whose step re-hashes identities (1 -> 2); spec.json `migrated[].to_format`
# What each format adds that needs no rewrite of an older store (its step only records the format).
NEW_IN = {3: "studies/<name>/ (Optuna journals) and the cell phase `pruned`"}
_LOCK_WAIT_S = 600.0  # another process migrating this store: wait for it (a large store takes a while)
# Tests kill a migration before its N-th write (SDS_MIGRATE_KILL_AT=N: SIGKILL, as a power cut would).
_WRITES = {"n": 0}


def _before_write() -> None:
    at = os.environ.get("SDS_MIGRATE_KILL_AT")
    _WRITES["n"] += 1
    if at and _WRITES["n"] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Migration:
    """What one `migrate` did: the formats, the run directories it brought forward, what it left."""

    root: Path
    from_format: int
    to_format: int
    migrated: list[str] = field(default_factory=list)   # run dirs (relative to the store), as they are now
    manifests: list[str] = field(default_factory=list)  # sweep manifests rewritten
    pending: list[str] = field(default_factory=list)    # app cells whose app is not known yet
    total: int = 0  # run dirs brought to this format so far, by this run and any killed before it

    def line(self) -> str:
        """The plan's line about it: "store format 1 -> 2: 4 run dirs migrated ..."."""
        head = (f"store format {self.from_format} -> {self.to_format}" if self.from_format != self.to_format
                else f"store format {self.to_format}")
        text = f"{head}: {len(self.migrated)} run dir(s) migrated"
        if self.manifests:
            text += f", {len(self.manifests)} sweep manifest(s) updated"
        if self.migrated or self.manifests:
            text += f" (originals in {self.root / 'migrations'})"
        for f in range(self.from_format + 1, self.to_format + 1):
            if f in NEW_IN:
                text += f"; format {f} adds {NEW_IN[f]}, nothing of it to rewrite"
        if self.pending:
            text += (f"; {len(self.pending)} app cell(s) of another app left as they are until that app's "
                     f"sweep opens the store: {', '.join(self.pending[:3])}{' ...' if len(self.pending) > 3 else ''}")
        return text

    @property
    def changed(self) -> bool:
        return bool(self.migrated or self.manifests or self.from_format != self.to_format)


def needs_migration(root: str | os.PathLike) -> bool:
    """Whether `migrate` has anything to do for this store (an older format, or pending app cells)."""
    fmt = check_readable(root)
    doc = read_format_doc(root) or {}
    return fmt is not None and (fmt < FORMAT or bool(doc.get("pending")))


def migrate(root: str | os.PathLike, *, held: Callable[[RunDir], str | None], app: str | None = None,
            app_label: str | None = None, say: Callable[[str], Any] | None = None) -> Migration | None:
    """Bring the store at `root` to this version's format (see the module docstring). `held(rd)` says
    why a live sweep holds a run dir (sweep/claim.py live_holder; core cannot ask the scheduler), None
    when none does: a held cell is not changed under its sweep. `app` and `app_label` are the launching
    app's identity and job name (None for the built-in app). Returns what was done, or None for a store
    with nothing stored yet (its first run dir or manifest records the format) or already current."""
    root = Path(root).expanduser().resolve()
    fmt = check_readable(root)
    if fmt is None:
        return None  # nothing stored yet: its first run dir or manifest records this version's format
    if fmt == FORMAT and not (app and (read_format_doc(root) or {}).get("pending")):
        return None
    with filelock.FileLock(str(root / ".migrate.lock"), timeout=_LOCK_WAIT_S):
        fmt = check_readable(root) or FORMAT  # another process may have migrated it meanwhile
        done = Migration(root, fmt, FORMAT)
        pending = set((read_format_doc(root) or {}).get("pending", []))
        # 1 -> 2 over every run dir of a format-1 store; later, only over the app cells it left pending
        if fmt < IDENTITY_FORMAT or pending:
            _rehash_identities(Store(root), done, held=held, app=app, app_label=app_label,
                               only=pending if fmt >= IDENTITY_FORMAT else None)
        # 2 -> 3: nothing to rewrite (a format-2 store has no studies/ and no pruned cell): recorded below
        # one line per migration, and one per later run that brought pending app cells forward
        history = [{"from": fmt if fmt < FORMAT else LEGACY_FORMAT, "to": FORMAT, "at": time.time(),
                    "by": _code_version(), "run_dirs": done.total,
                    "steps": [f"{f}-{f + 1}" for f in range(fmt, FORMAT)] if fmt < FORMAT else [],
                    **({} if fmt < FORMAT else {"pending_app_cells": True})}] if fmt < FORMAT or done.total else []
        _before_write()
        write_format_doc(root, history=history, pending=done.pending)
    if say is not None and done.changed:
        say(f"[sds] {done.line()}")
    return done


# ----------------------------------------------------------------------------- format 1 -> 2


def _rehash_identities(store: Store, done: Migration, *, held: Callable[[RunDir], str | None], app: str | None,
                       app_label: str | None, only: set[str] | None) -> None:
    """Every run directory (or those in `only`) under today's identity hash; manifests follow."""
    backup = store.root / "migrations" / f"{LEGACY_FORMAT}-{IDENTITY_FORMAT}"
    manifest_apps = _manifest_apps(store)
    renamed: dict[str, str] = {}  # old hash -> new, of this run and of a run killed before it
    for rd_path in _run_dirs(store, only):
        spec = read_json(rd_path / "spec.json")
        if not spec or spec.get("hash") is None:
            continue
        earlier = [m for m in spec.get("migrated", []) if m.get("to_format") == IDENTITY_FORMAT]
        done.total += bool(earlier)
        renamed.update({str(m["hash"]): str(spec["hash"]) for m in earlier if m.get("hash") != spec["hash"]})
        cell_app = spec.get("app") or _app_of(spec, app=app, app_label=app_label, manifest_apps=manifest_apps)
        if spec.get("done_when") == "return" and cell_app is None:
            done.pending.append(_rel(store, rd_path))
            continue
        old_hash = str(spec["hash"])
        if config_hash(spec.get("run_config") or {}) != old_hash:
            continue  # today's definition already (an app's hash covers its app), or not a hash of ours: untouched
        is_app = spec.get("done_when") == "return"
        rc = run_config(spec.get("run_config") or {})
        new_hash = identity_hash(rc, cell_app if is_app else None)
        if new_hash == old_hash and rd_path.name == new_hash and spec.get("run_config") == rc:
            continue
        if why := held(RunDir(rd_path)):
            raise StoreError(f"{rd_path}: {why}, so the store cannot be migrated under it; nothing was changed for "
                             f"this cell. Fix: let that sweep end (or stop it), then launch again")
        _backup(rd_path / "spec.json", backup / rd_path.relative_to(store.root).parent / old_hash / "spec.json")
        target = rd_path.parent / new_hash
        if rd_path != target:
            _before_write()
            (store.root / STALE_MARKER).touch()  # before the rename: the index is rebuilt even if we die next
            if target.exists():
                raise StoreError(f"{rd_path}: migrating it to hash {new_hash} would merge it into {target}, which "
                                 f"holds another run of that identity. Nothing was changed for this cell. Fix: move "
                                 f"one of the two out of {store.runs_dir} (keep the one whose work you want), then "
                                 f"run `safedreamer-sweep migrate {store.root}` again")
            _before_write()
            os.replace(rd_path, target)
        new_spec = {**spec, "hash": new_hash, "run_config": rc,
                    "migrated": [*spec.get("migrated", []),
                                 {"from_format": LEGACY_FORMAT, "to_format": IDENTITY_FORMAT, "hash": old_hash,
                                  "at": time.time()}]}
        if is_app:
            new_spec["app"] = cell_app
        _before_write()
        atomic_write_json(target / "spec.json", new_spec)
        renamed[old_hash] = new_hash
        done.total += 1
        done.migrated.append(_rel(store, target))
    done.manifests.extend(_rewrite_manifests(store, renamed, backup))


def _run_dirs(store: Store, only: set[str] | None) -> Iterable[Path]:
    """Every run dir, or those of `only` (store-relative paths as store.json `pending` lists them)."""
    if only is None:
        return [rd.path for rd in store.iter_runs()]
    return [p for rel in sorted(only) if (p := _pending_dir(store.root / rel)) is not None]


def _pending_dir(path: Path) -> Path | None:
    """A pending run dir where it is: at its path, or renamed to its new hash beside it by a migration
    killed before it rewrote spec.json or store.json (the spec then still holds, or records, the old hash)."""
    if (path / "spec.json").exists():
        return path
    for sibling in sorted(path.parent.iterdir()) if path.parent.is_dir() else []:
        spec = read_json(sibling / "spec.json") or {}
        if spec.get("hash") == path.name or any(m.get("hash") == path.name for m in spec.get("migrated", [])):
            return sibling
    return None


def _app_of(spec: dict, *, app: str | None, app_label: str | None,
            manifest_apps: dict[str, str]) -> str | None:
    """Which app a format-1 app cell belongs to: the launching app's when the cell's label is its job
    name, else the app of the recorded sweep command that ran it, else None (not known yet)."""
    if spec.get("done_when") != "return":
        return None
    if app and app_label and label_base(str(spec.get("config"))) == app_label:
        return app
    return manifest_apps.get(str(spec.get("hash")))


def _manifest_apps(store: Store) -> dict[str, str]:
    """old hash -> app, from the sweep manifests whose recorded command names a script that still exists."""
    out: dict[str, str] = {}
    for doc in store.read_sweep_manifests():
        command = doc.get("app_command") or []
        script = next((c for c in command[1:] if str(c).endswith(".py")), None)
        if not script or not Path(script).is_file():
            continue
        which = app_identity(str(Path(script).resolve()))
        for c in doc.get("cells", []):
            if c.get("done_when") == "return" and c.get("hash"):
                out.setdefault(str(c["hash"]), which)
    return out


def _rewrite_manifests(store: Store, renamed: dict[str, str], backup: Path) -> list[str]:
    """Each sweep manifest that names an old hash, with the new one (its cells and its job keys)."""
    changed = []
    for path in sorted(store.sweeps_dir.glob("*.json")) if store.sweeps_dir.is_dir() else []:
        doc = read_json(path)
        if not doc:
            continue
        cells = [{**c, "hash": renamed.get(str(c.get("hash")), c.get("hash"))} for c in doc.get("cells", [])]
        jobs = {_renamed_key(k, renamed): v for k, v in (doc.get("jobs") or {}).items()}
        if cells == doc.get("cells", []) and jobs == (doc.get("jobs") or {}):
            continue
        _backup(path, backup / "sweeps" / path.name)
        _before_write()
        atomic_write_json(path, {**doc, "cells": cells, **({"jobs": jobs} if "jobs" in doc else {})})
        changed.append(_rel(store, path))
    return changed


def _renamed_key(key: str, renamed: dict[str, str]) -> str:
    head, _, last = key.rpartition("/")
    return f"{head}/{renamed[last]}" if head and last in renamed else key


# ----------------------------------------------------------------------------- shared


def _backup(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` once: a later (resumed) run never replaces the original with a migrated copy."""
    if dest.exists() or not src.exists():
        return
    _before_write()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def _rel(store: Store, path: Path) -> str:
    return path.relative_to(store.root).as_posix()


def _code_version() -> str | None:
    from safedreamer_sweep.core.code_fingerprint import code_version

    return code_version()
