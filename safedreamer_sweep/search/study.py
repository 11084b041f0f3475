"""A study in the store: its identity, its directory, and opening it (create, resume, refuse, supersede).

    <store>/studies/<name>/journal.log   Optuna's JournalStorage file: the study (optuna-dashboard opens it)
                          /study.json    what the sweeper knows of it (format 1), replaced atomically
                          /ask.lock      filelock: count-then-ask is atomic across invocations

A study's identity is a 12-hex hash of what makes its trials comparable: the search space, the sampler
(class and kwargs, seed included), the objective(s) and directions, the constraint, the command line's
fixed overrides, the app, the tuning seeds and their aggregate. Not in it: `n_trials` (raising the
total continues the study), the pruner and `prune` settings (a pruner only decides when a trial stops
early; a finished trial's value is the same under any pruner, so changing it on resume is allowed and
recorded in study.json), `test` (re-runs after the study), `n_jobs`, `max_failure_rate` and `storage`.

Re-opening with the same identity resumes the study; a different one is refused by key (each differing
key with its old and new value), the old study kept, unless `hydra.sweeper.new_study=true`: then the
old directory is renamed aside (`<name>.superseded-<YYYYmmdd-HHMMSS>`) and a fresh study made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

from safedreamer_sweep.core.files import atomic_write_json, read_json
from safedreamer_sweep.search.settings import SearchError, SearchSettings, build_pruner, build_sampler
from safedreamer_sweep.search.space import Space

STUDY_FORMAT = 1
SUPERSEDED = ".superseded-"
IDENTITY_KEYS = ("space", "sampler", "objective", "constraint", "fixed", "app", "seeds", "aggregate")


def study_identity(settings: SearchSettings, space: Space, *, app: str | None,
                   fixed: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """(12-hex identity, its keys): sha256 of the keys' canonical JSON (sorted, compact), so equal
    studies hash equal whatever their dicts' order."""
    keys: dict[str, Any] = {
        "space": space.describe(),
        "sampler": {"target": settings.sampler["_target_"],
                    "kwargs": {k: v for k, v in sorted(settings.sampler.items()) if k != "_target_"}},
        "objective": {"metrics": settings.objective, "directions": list(settings.directions)},
        "constraint": settings.constraint,
        "fixed": dict(sorted((fixed or {}).items())),
        "app": app,
        "seeds": settings.seeds,
        "aggregate": settings.aggregate,
    }
    keys = json.loads(json.dumps(keys, sort_keys=True, default=str))
    blob = json.dumps(keys, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12], keys


def default_study_name(job_name: str | None) -> str:
    """The study's name when hydra.sweeper.study_name is null: the app's job name, made a folder name."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (job_name or "study")).strip(".")
    return name or "study"


class StudyDir:
    """One study's directory, <store>/studies/<name>."""

    def __init__(self, store_root: Path, name: str) -> None:
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise SearchError(f"hydra.sweeper.study_name={name!r}: a study's name is a folder name under the store's "
                              f"studies/ (not empty, no '/'). Fix: hydra.sweeper.study_name=lr-search")
        self.store_root = Path(store_root)
        self.name = name
        self.path = self.store_root / "studies" / name

    def __repr__(self) -> str:
        return f"StudyDir({self.path})"

    @property
    def journal(self) -> Path:
        return self.path / "journal.log"

    @property
    def json_path(self) -> Path:
        return self.path / "study.json"

    @property
    def superseded(self) -> bool:
        return SUPERSEDED in self.name

    def document(self) -> dict[str, Any] | None:
        """study.json, or None before the study was made."""
        return read_json(self.json_path)

    def ask_lock(self) -> FileLock:
        """The lock that makes count-then-ask atomic across invocations (and opening the study)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / "ask.lock"))

    def storage(self, given: str | None = None) -> optuna.storages.BaseStorage:
        """Where the study's trials are: the journal here, or `given` (hydra.sweeper.storage: a journal
        file path, or an Optuna storage URL such as sqlite:///x.db)."""
        if given is None:
            return optuna.storages.JournalStorage(JournalFileBackend(str(self.journal)))
        if "://" in given:
            return optuna.storages.RDBStorage(given) if not given.startswith("redis") else _redis(given)
        return optuna.storages.JournalStorage(JournalFileBackend(given))


def _redis(url: str) -> optuna.storages.BaseStorage:
    return optuna.storages.JournalStorage(JournalRedisBackend(url))


def _quiet() -> None:
    """Optuna's per-trial INFO lines would flood the sweep's terminal; warnings still show."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(store_root: Path, settings: SearchSettings, space: Space, *, app: str | None,
               fixed: Mapping[str, str] | None = None, sweep_id: str | None = None,
               default_name: str | None = None) -> tuple[optuna.Study, StudyDir, bool]:
    """(the study, its directory, whether it was created now). Created on first use (study.json first,
    then the journal); resumed when its identity is the stored one (study.json's n_trials and pruning
    settings updated); refused by key when it differs, unless settings.new_study (the old directory is
    then renamed aside). Done under the study's ask lock, so two invocations agree."""
    _quiet()
    sd = StudyDir(store_root, settings.study_name or default_study_name(default_name or app))
    ident, keys = study_identity(settings, space, app=app, fixed=fixed)
    sampler, pruner = build_sampler(settings, space), build_pruner(settings)  # refused before anything is written
    _check_fresh_name(sd)
    doc = sd.document()
    if _refuse_if_differs(sd, doc, ident, keys, settings) or doc is None:  # before the lock: a refusal leaves no lock file
        _refuse_taken_storage(sd, settings)
    for _ in range(3):  # a directory moved aside takes its lock file along: the fresh one is locked anew
        with sd.ask_lock():
            doc = sd.document()
            if not _moved_aside(sd, doc, ident, keys, settings):
                return _write_and_create(sd, settings, ident, keys, sweep_id, doc, sampler, pruner), sd, doc is None
    raise SearchError(f"study {sd.name!r} in {sd.path} was replaced by other invocations while this one opened it. "
                      f"Fix: run one search per study name at a time with different settings")


def _moved_aside(sd: StudyDir, doc: dict[str, Any] | None, ident: str, keys: dict[str, Any], s: SearchSettings) -> bool:
    """Whether the study's directory was moved aside (settings.new_study and a different study there);
    SearchError when it differs and new_study is not set. Nothing is written unless it is moved."""
    if not _refuse_if_differs(sd, doc, ident, keys, s):
        return False
    _move_aside(sd)
    return True


def _refuse_if_differs(sd: StudyDir, doc: dict[str, Any] | None, ident: str, keys: dict[str, Any],
                       s: SearchSettings) -> bool:
    """Whether a different study is in the directory (a journal without study.json counts as one);
    SearchError, naming what differs, unless settings.new_study."""
    if doc is None and sd.journal.exists() and sd.journal.stat().st_size > 0:
        _refuse_foreign(sd, s)
        return True
    if doc is not None and doc.get("format", STUDY_FORMAT) > STUDY_FORMAT:
        raise SearchError(f"{sd.json_path} has format {doc.get('format')}, newer than this version reads ({STUDY_FORMAT}). "
                          f"It is kept. Fix: upgrade safedreamer-sweep, or another hydra.sweeper.study_name")
    if doc is None or doc.get("identity") == ident:
        return False
    if not s.new_study:
        raise SearchError(_differs_message(sd, doc, keys))
    return True


def _write_and_create(sd: StudyDir, s: SearchSettings, ident: str, keys: dict[str, Any], sweep_id: str | None,
                      doc: dict[str, Any] | None, sampler: optuna.samplers.BaseSampler,
                      pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """study.json written (first, or when what may change on resume changed), then the study created or loaded."""
    storage = sd.storage(s.storage)
    new_doc = _document(sd, s, ident, keys, sweep_id, doc)
    if new_doc != doc:
        atomic_write_json(sd.json_path, new_doc)
    study = optuna.create_study(storage=storage, study_name=sd.name, sampler=sampler, pruner=pruner,
                                directions=list(s.directions), load_if_exists=True)  # type: ignore[arg-type]
    if s.objective and study.metric_names is None:
        with warnings.catch_warnings():  # set_metric_names is experimental in Optuna 5
            warnings.simplefilter("ignore")
            study.set_metric_names(list(s.objective))
    return study


def _refuse_taken_storage(sd: StudyDir, s: SearchSettings) -> None:
    """A study about to be made in a storage given (hydra.sweeper.storage) that already holds one by its name:
    not this store's to replace (create_study would silently load it)."""
    if s.storage is not None and sd.name in optuna.get_all_study_names(sd.storage(s.storage)):
        raise SearchError(f"hydra.sweeper.storage={s.storage} already holds a study named {sd.name!r} that this store "
                          f"has no study.json for (another store's, or one superseded here): it is kept. "
                          f"Fix: another hydra.sweeper.study_name, or hydra.sweeper.storage=null (the store's journal)")


def _check_fresh_name(sd: StudyDir) -> None:
    if sd.superseded:
        raise SearchError(f"hydra.sweeper.study_name={sd.name!r} names a superseded study, kept as it was. "
                          f"Fix: another study name (superseded studies are read, never continued)")


def _refuse_foreign(sd: StudyDir, settings: SearchSettings) -> None:
    """A journal without study.json was not made by this sweeper (or is a wreck): kept unless new_study."""
    if not settings.new_study:
        raise SearchError(f"{sd.journal} has no study.json beside it: it was not made by this sweeper, so whether "
                          f"it is the same study cannot be told. It is kept. Fix: hydra.sweeper.new_study=true (it is "
                          f"moved aside to {sd.name}{SUPERSEDED}<time>), or another hydra.sweeper.study_name")


def _move_aside(sd: StudyDir) -> Path:
    """Rename the study's directory aside (kept, listed as superseded); return where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = sd.path.with_name(f"{sd.name}{SUPERSEDED}{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = sd.path.with_name(f"{sd.name}{SUPERSEDED}{stamp}-{n}")
    sd.path.rename(aside)
    return aside


def _document(sd: StudyDir, s: SearchSettings, ident: str, keys: dict[str, Any], sweep_id: str | None,
              old: dict[str, Any] | None) -> dict[str, Any]:
    """study.json (format 1): the identity and its keys, and what may change on resume (the total, the
    pruner and its settings, the test), with when and by which sweep it was made."""
    pruner = None if s.pruner is None else {"name": s.pruner_name,
                                            **{k: v for k, v in s.pruner.items() if k != "_target_"},
                                            "target": s.pruner["_target_"]}
    return {
        "format": STUDY_FORMAT, "name": sd.name, "identity": ident, "keys": keys,
        "n_trials": s.n_trials, "directions": list(s.directions), "objective": s.objective,
        "constraint": s.constraint, "seeds": s.seeds, "aggregate": s.aggregate,
        "pruner": pruner or {"name": None},
        "prune": {"metric": s.prune.metric, "warmup_steps": s.prune.warmup_steps,
                  "cost_warmup_steps": s.prune.cost_warmup_steps},
        "test": s.test, "storage": s.storage,
        "created_at": old["created_at"] if old else time.time(),
        "created_by": old.get("created_by") if old else sweep_id,
    }


def _differs_message(sd: StudyDir, doc: dict[str, Any], keys: dict[str, Any]) -> str:
    lines = identity_diff(doc.get("keys") or {}, keys)
    return (f"study {sd.name!r} in {sd.path} was made with a different search; its trials are not comparable "
            f"with this one:\n" + "".join(f"  {line}\n" for line in lines)
            + f"The old study is kept as it is (nothing was written). Fix: hydra.sweeper.new_study=true starts a new "
              f"study (the old one is moved aside to {sd.name}{SUPERSEDED}<time>), or give this search another "
              f"name: hydra.sweeper.study_name=<name>; or re-run with the study's own settings to resume it")


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per differing identity key: `space: agent.lr interval(0.0001,0.01) -> interval(0.001,0.1)`
    (a mapping key's entries each on its own line; `(none)` for one that is not there)."""
    out = []
    for key in IDENTITY_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub, _MISSING) != b.get(sub, _MISSING):
                    out.append(f"{key}: {sub} {_shown(a.get(sub, _MISSING))} -> {_shown(b.get(sub, _MISSING))}")
        else:
            out.append(f"{key}: {_shown(a)} -> {_shown(b)}")
    return out


_MISSING = object()


def _shown(v: Any) -> str:
    if v is _MISSING:
        return "(none)"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def load_study(study_dir: StudyDir) -> optuna.Study:
    """The stored study, read only (its journal is never created or written here)."""
    _quiet()
    doc = study_dir.document()
    given = (doc or {}).get("storage")
    if given is None and not study_dir.journal.exists():
        from safedreamer_sweep.core.files import StoreError

        raise StoreError(f"{study_dir.journal}: no journal; the study {study_dir.name!r} was never started or its "
                         f"file was removed. Fix: run the search again to create it, or remove {study_dir.path}")
    return optuna.load_study(study_name=study_dir.name if doc is None else doc["name"], storage=study_dir.storage(given))


def list_studies(store_root: Path, include_superseded: bool = False) -> list[StudyDir]:
    """The store's studies (directories under studies/ with a study.json or a journal), by name."""
    root = Path(store_root) / "studies"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or not ((p / "study.json").exists() or (p / "journal.log").exists()):
            continue
        if SUPERSEDED in p.name and not include_superseded:
            continue
        with contextlib.suppress(SearchError):
            out.append(StudyDir(store_root, p.name))
    return out
