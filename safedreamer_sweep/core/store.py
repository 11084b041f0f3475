"""The run store: one directory per run identity, the single source of truth.

    <root>/runs/<config>/seed_<seed>/<hash8>/     (an app without a seed: <root>/runs/<label>/<hash8>/)
                          a run directory: spec, state, progress, curves, checkpoints, results (core/run_dir.py)
    <root>/index.sqlite   identity hash -> run directory, a cache rebuilt from runs/ (core/index.py)
    <root>/sweeps/        one manifest per sweep: which cells it asked for (holes stay visible)
    <root>/manifests/     the doctor's preflight records (commands/doctor.py)

A cell is found by its identity wherever it is (Store.locate): the `<config>` folder is the label of
the command line that first ran it, presentation only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.files import StoreError, atomic_write_json, read_json
from safedreamer_sweep.core.index import RunIndex
from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir, lease_from_env
from safedreamer_sweep.core.store_format import check_readable, record_if_new

# The built-in trainer (trainer/*.py) imports RunDir, EVAL_KINDS and StoreError from here, as it did
# before run_dir.py and files.py were split out. Its files' bytes are its code fingerprint (1dfe4cfbfeb1,
# unchanged since 3619e38): an edit there, even of an import line, makes every stored built-in cell plan
# as `code-changed` after an upgrade. So these names stay importable here until the trainer changes for
# a reason of its own (tests/test_fingerprint.py pins the fingerprint).
__all__ = ["EVAL_KINDS", "RunDir", "Store", "StoreError", "label_base"]


class Store:
    """A fixed root holding run directories; independent of Hydra's timestamped sweep dirs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        check_readable(self.root)  # a store of a newer format is refused here, before anything reads it
        self.index = RunIndex(self.root)  # identity hash -> run directory (a cache, core/index.py)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, config: str, seed: int | None, hash8: str) -> RunDir:
        """runs/<config>/seed_<seed>/<hash8>, or runs/<label>/<hash8> for an app without a seed."""
        path = self.runs_dir / config / hash8 if seed is None else self.runs_dir / config / f"seed_{int(seed)}" / hash8
        return RunDir(path, lease_from_env(path))  # fenced by $SDS_LEASE when this process is that cell

    def locate(self, config: str, seed: int | None, hash8: str, run_config: dict | None = None) -> RunDir:
        """The run directory of identity `hash8` wherever it is under runs/, whatever swept keys its
        label was first stored with (they are presentation, kept from the first run); else the label
        path runs/<config>/... where a new cell goes. Found through the store index (one query, no walk
        of the tree), each hit checked against its spec.json: same hash, same seed, same label base
        (the `config` choice or the app's job name: two apps with equal configs are two cells) and,
        given `run_config`, the same resolved run config (an 8-hex hash may collide). Several directories
        of one identity (stored twice by an older version): the oldest finished one, else the oldest."""
        fallback = self.run_dir(config, seed, hash8)
        base = label_base(config)
        found: list[Path] = []
        paths = self.index.lookup(hash8)
        indexed = set(paths)
        if fallback.path not in indexed:
            paths.append(fallback.path)  # a run dir the index missed (written by an older version)
        for path in paths:
            try:
                spec = read_json(path / "spec.json")
            except StoreError:
                continue  # corrupt: not evidence of this identity (planning at its label path says so)
            if spec is None:
                if path in indexed:
                    self.index.drop(path)  # moved or deleted since it was indexed
                continue
            if spec.get("hash") != hash8 or spec.get("seed") != seed or label_base(str(spec.get("config"))) != base or (
                    run_config is not None and spec.get("run_config") != run_config):
                continue
            if path not in indexed:
                self.index.add(path, hash8, path.parent.name if seed is None else path.parent.parent.name, seed)
            found.append(path)
        if not found:
            return fallback
        return _pick_run_dir(found)

    def find(self, config: str, seed: int | None) -> list[RunDir]:
        """Every run directory for (config, seed), whatever its identity hash."""
        d = self.runs_dir / config if seed is None else self.runs_dir / config / f"seed_{int(seed)}"
        if not d.is_dir():
            return []
        return [RunDir(p) for p in sorted(d.iterdir()) if p.is_dir() and (p / "spec.json").exists()]

    def iter_runs(self) -> Iterator[RunDir]:
        if not self.runs_dir.is_dir():
            return
        specs = [*self.runs_dir.glob("*/seed_*/*/spec.json"), *self.runs_dir.glob("*/*/spec.json")]
        for spec in sorted(specs):
            yield RunDir(spec.parent)

    def manifests_dir(self) -> Path:
        d = self.root / "manifests"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- sweep manifests: which cells were asked for (so holes are visible even with no run dir)
    @property
    def sweeps_dir(self) -> Path:
        return self.root / "sweeps"

    def write_sweep_manifest(self, sweep_id: str, doc: dict) -> Path:
        """`doc` holds at least `cells`: [{config, seed, hash, overrides}], plus launcher settings."""
        path = self.sweeps_dir / f"{sweep_id}.json"
        atomic_write_json(path, {"id": sweep_id, **doc})
        record_if_new(self.root, created=path)  # a new store records its format (core/store_format.py)
        return path

    def read_sweep_manifests(self) -> list[dict]:
        """Every sweep manifest, oldest first."""
        if not self.sweeps_dir.is_dir():
            return []
        docs = [read_json(p) for p in sorted(self.sweeps_dir.glob("*.json"))]
        return sorted((d for d in docs if d), key=lambda d: d.get("created_at", 0))

    def expected_cells(self) -> list[dict]:
        """The matrix: one entry per cell identity (hash and seed) that any sweep on this store asked
        for, plus every run directory on disk, however many command lines asked for it and under
        whichever labels: it carries the label of its run directory (the label it was first stored
        under), else the first label it was asked under. For one (label, seed) the newest sweep's hash
        wins (a new variant replaces the old one in the matrix). Sorted by config then seed."""
        # An app without a seed has one cell per label and hash: its key carries the hash.
        cells: dict[tuple[str, int, str], dict] = {}

        def key_of(config: str, seed: Any, hash8: Any) -> tuple[str, int, str]:
            return (config, -1, str(hash8)) if seed is None else (config, int(seed), "")

        stored: dict[tuple[str, str, int | None], list[tuple[RunDir, dict]]] = {}  # identity: base, hash, seed
        for rd in self.iter_runs():
            spec = rd.read_spec() or {}
            if spec.get("config") is None:
                continue
            seed = None if spec.get("seed") is None else int(spec["seed"])
            stored.setdefault((label_base(str(spec["config"])), str(spec.get("hash")), seed), []).append((rd, spec))
        on_disk: dict[tuple[str, str, int | None], dict] = {}
        for (base, hash8, seed), found in stored.items():
            rd = _pick_run_dir([r.path for r, _ in found])
            spec = next(sp for r, sp in found if r.path == rd.path)
            on_disk[(base, hash8, seed)] = {"config": str(spec["config"]), "seed": seed, "hash": spec.get("hash"),
                                      "done_when": spec.get("done_when")}
        labels: dict[tuple[str, str, int | None], str] = {k: c["config"] for k, c in on_disk.items()}
        for doc in self.read_sweep_manifests():
            for c in doc.get("cells", []):
                seed = None if c.get("seed") is None else int(c["seed"])
                label = c["config"] if not c.get("hash") else labels.setdefault(
                    (label_base(c["config"]), str(c["hash"]), seed), c["config"])
                cells[key_of(label, seed, c.get("hash"))] = {"config": label, "seed": seed, "hash": c.get("hash"),
                                                             "done_when": c.get("done_when")}
        asked = {(label_base(c["config"]), str(c["hash"]), c["seed"]) for c in cells.values() if c["hash"]}
        for ident, cell in on_disk.items():
            key = key_of(cell["config"], cell["seed"], cell["hash"])
            if key not in cells and ident not in asked:
                cells[key] = cell
        return [cells[k] for k in sorted(cells)]


def label_base(label: str) -> str:
    """The first part of a cell label (`v2_baseline` of `v2_baseline,agent.lr=0.001`): the `config`
    choice of the built-in app or the job name of any other app, part of what the cell is."""
    return label.split(",", 1)[0]


def _pick_run_dir(paths: list[Path]) -> RunDir:
    """Of several run directories holding one identity (stored twice by an older version, under two
    labels): the oldest finished one (by its spec.json's time), else the oldest."""
    def age(p: Path) -> float:
        try:
            return (p / "spec.json").stat().st_mtime
        except OSError:
            return float("inf")

    ordered = sorted(paths, key=lambda p: (age(p), str(p))) if len(paths) > 1 else list(paths)
    done = [p for p in ordered if RunDir(p).finished()] if len(ordered) > 1 else []
    path = (done or ordered)[0]
    return RunDir(path, lease_from_env(path))
