"""Tidy pandas frames read from the run store (never from Hydra's JobReturns, which miss skipped
cells): one row per expected cell, per evaluation episode, per seed, and per curve point.

The matrix is `Store.expected_cells()`: every (config, seed) any sweep manifest asked for plus
every run directory on disk, so a cell that never started is still a row (a hole), not an absence.
A cell its study's pruner stopped is a hole of its own kind: status `pruned` (train and evaluations),
cause `pruned` with who and when as its evidence; never `failed`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.observe import pruned_by_of, pruned_text

# Per-seed metrics the tables report: name -> (label, higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "id_return": ("ID return", True),
    "id_cost": ("ID cost", False),
    "ood_return": ("OOD return", True),
    "ood_cost": ("OOD cost", False),
    "id_violation_rate": ("ID violation rate", False),
    "ood_violation_rate": ("OOD violation rate", False),
    "risk_penalty": ("risk penalty", False),
}

_CELL_COLUMNS = ["config", "seed", "hash", "run_dir", "phase", "train_status", "trained", "trained_steps",
                "attempts", "last_cause", "last_evidence", "device", "useful_h", "wasted_h", "pending_h", "pruned_h",
                "device_hours"]
_EVAL_STATUS_COLUMNS = ["config", "seed", "hash", "kind", "status", "env_id", "checkpoint_step", "episodes",
                       "return_mean", "cost_mean", "violation_rate", "cost_limit", "path"]
_EVAL_COLUMNS = ["config", "seed", "hash", "kind", "env_id", "checkpoint_step", "episode", "return", "cost",
                "length", "cost_limit", "violation"]
_SEED_COLUMNS = ["config", "seed", "hash", *METRICS, "final_train_return", "final_train_cost", "final_env_step"]


_CORRUPT: dict = {"corrupt": True}  # sentinel: the file exists but does not parse


class NotAStoreError(StoreError):
    """The path given to the report is not a run store."""


@dataclass
class Frames:
    """Everything the report knows, as tidy frames (all read from the store)."""

    store_root: Path
    cells: pd.DataFrame        # one row per expected cell
    eval_status: pd.DataFrame  # one row per expected evaluation (cell x {id, ood})
    evals: pd.DataFrame        # one row per evaluation episode
    seeds: pd.DataFrame        # one row per expected cell: its final metrics (NaN where missing)
    curves: pd.DataFrame       # one row per curve point; `source` is "train" or "eval"
    specs: dict                # (config, seed) -> spec.json document
    states: dict               # (config, seed) -> state.json document (missing cells: phase "missing")
    ood_proxy: list[str]       # distinct OOD proxy statements found in eval/ood.json
    cost_limits: list[float]   # distinct cost limits found in eval JSONs (or specs)
    extra_run_dirs: list[str]  # run dirs on disk that are not the matrix's chosen identity
    corrupt: list[str]         # store files that could not be parsed (shown as holes, named in warnings)
    cost_available: bool       # safedreamer_sweep.report.cost exists and priced every cell


def _open_store(store_root: str | Path) -> Store:
    """The Store at `store_root`, or NotAStoreError naming the path and the fix."""
    root = Path(store_root).expanduser()
    if not root.exists():
        raise NotAStoreError(f"{root}: no such directory; give the store root (the directory holding "
                             f"runs/ and sweeps/, i.e. store.root of the sweep).")
    if not root.is_dir():
        raise NotAStoreError(f"{root}: is a file, not a run store; give the store root directory.")
    if not (root / "runs").is_dir() and not (root / "sweeps").is_dir():
        raise NotAStoreError(f"{root}: not a run store (it has neither runs/ nor sweeps/); give the "
                             f"store root, i.e. store.root of the sweep (e.g. `experiments`).")
    return Store(root)


def _cost_module():
    try:
        return importlib.import_module("safedreamer_sweep.report.cost")
    except ImportError:
        return None


def _choose_run_dir(store: Store, cell: dict) -> tuple[RunDir | None, list[RunDir]]:
    """The run dir of the matrix's identity for a cell, and any other identities found for it."""
    found = store.find(cell["config"], cell["seed"])
    chosen = None
    if cell.get("hash"):
        chosen = next((rd for rd in found if rd.path.name == cell["hash"]), None)
        if chosen is None:  # stored under another label: found by its identity
            located = store.locate(cell["config"], cell["seed"], cell["hash"])
            chosen = located if located.spec_path.exists() else None
    elif found:
        chosen = found[-1]
    return chosen, [rd for rd in found if rd is not chosen and rd != chosen]


def is_pruned(state: dict) -> bool:
    """Stopped by its study's pruner: phase `pruned`, or its newest attempt closed as pruned (as observe reads it)."""
    attempts = state.get("attempts") or []
    last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
    return state.get("phase") == "pruned" or last.get("outcome") == "pruned"


def _pruned_cause(state: dict) -> tuple[str, str]:
    """A pruned cell's hole: cause `pruned`, and who pruned it when as the evidence."""
    a: dict = next((x for x in reversed(state.get("attempts") or []) if x.get("outcome") == "pruned"), {})
    return "pruned", pruned_text(pruned_by_of(a.get("pruned_by")), a.get("pruned_at")) + \
        "; stopped early on purpose (not failed), checkpoint kept"


def _train_status(rd: RunDir | None, state: dict) -> str:
    if rd is None:
        return "missing"
    if state.get("phase") == "corrupt":
        return "corrupt"
    if state.get("trained"):
        return "done"
    if is_pruned(state):
        return "pruned"
    phase = state.get("phase", "new")
    if phase in ("failed", "interrupted"):
        return phase
    if phase in ("running", "eval-id", "eval-ood"):
        return "running"
    return "pending"


def _eval_status(rd: RunDir | None, state: dict, doc: dict | None, kind: str) -> str:
    if doc is not None:
        return "done"
    if rd is None:
        return "missing"
    phase = state.get("phase", "new")
    if is_pruned(state):
        return "pruned"
    if phase == f"eval-{kind}":
        return "running"
    if phase in ("failed", "interrupted"):
        return phase
    return "pending"


def _num(x: object) -> float:
    """A number from a JSON field; None (e.g. no episode finished inside a logging window) is NaN."""
    return math.nan if x is None else float(x)  # type: ignore[arg-type]


def _episode_rows(base: dict, doc: dict, cost_limit: float) -> list[dict]:
    rows = []
    for i, ep in enumerate(doc.get("episodes") or []):
        cost = _num(ep.get("cost"))
        rows.append({**base, "episode": i, "return": _num(ep.get("return")), "cost": cost,
                     "length": _num(ep.get("length")), "cost_limit": cost_limit,
                     "violation": bool(cost > cost_limit) if math.isfinite(cost_limit) else None})
    return rows


def _eval_summary(doc: dict, cost_limit: float) -> dict:
    """return/cost/violation means, from the episodes when present (the truth), else the summary."""
    eps = doc.get("episodes") or []
    if eps:
        r = np.array([_num(e.get("return")) for e in eps])
        c = np.array([_num(e.get("cost")) for e in eps])
        viol = float(np.mean(c > cost_limit)) if math.isfinite(cost_limit) else math.nan
        return {"return_mean": float(np.mean(r)), "cost_mean": float(np.mean(c)), "violation_rate": viol,
                "episodes": len(eps)}
    s = doc.get("summary") or {}
    return {"return_mean": _num(s.get("return_mean")), "cost_mean": _num(s.get("cost_mean")),
            "violation_rate": _num(s.get("violation_rate")), "episodes": int(s.get("episodes", 0))}


def _spec_cost_limit(spec: dict) -> float:
    try:
        return float(spec["run_config"]["agent"]["lagrangian"]["cost_limit"])
    except (KeyError, TypeError, ValueError):
        return math.nan


_NO_COST = {"device": None, "useful_h": math.nan, "wasted_h": math.nan, "pending_h": math.nan,
            "pruned_h": math.nan, "device_hours": math.nan}
_NO_SUMMARY = {"return_mean": math.nan, "cost_mean": math.nan, "violation_rate": math.nan, "episodes": 0}


def load_frames(store_root: str | Path) -> Frames:
    """Read every expected cell of the store into tidy frames. Holes become rows with NaN values
    and a `missing`/`failed`/... status; nothing here raises on a hole. A corrupt JSON file is a
    hole with its name in `Frames.corrupt` (the report cannot silently drop evidence)."""
    store = _open_store(store_root)
    reader = _StoreReader(store)
    for cell in store.expected_cells():
        reader.read_cell(cell)
    return reader.frames()


class _StoreReader:
    """Accumulates the frames' rows, one expected cell at a time (load_frames drives it)."""

    def __init__(self, store: Store):
        self.store = store
        self.cost_mod = _cost_module()
        self.priced = self.cost_mod is not None
        self.cells: list[dict] = []
        self.eval_status: list[dict] = []
        self.evals: list[dict] = []
        self.seeds: list[dict] = []
        self.curves: list[dict] = []
        self.specs: dict = {}
        self.states: dict = {}
        self.proxies: list[str] = []
        self.limits: list[float] = []
        self.spec_limits: list[float] = []
        self.extra: list[str] = []
        self.corrupt: list[str] = []

    def _safe(self, read, default):
        """A corrupt file is a hole with a name, not a crash: the report must still be written."""
        try:
            return read()
        except StoreError as e:
            self.corrupt.append(str(e))
            return default

    def read_cell(self, cell: dict) -> None:
        config, seed = cell["config"], int(cell["seed"])
        rd, others = _choose_run_dir(self.store, cell)
        self.extra.extend(str(o.path) for o in others)
        spec = (self._safe(rd.read_spec, None) if rd else None) or {}
        state = (self._safe(rd.read_state, {"phase": "corrupt", "attempts": []}) if rd
                 else {"phase": "missing", "attempts": []})
        h = spec.get("hash") or cell.get("hash")
        self.specs[(config, seed)] = spec
        self.states[(config, seed)] = state
        attempts = state.get("attempts") or []
        last: dict = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        train_status = _train_status(rd, state)
        cause, evidence = _pruned_cause(state) if train_status == "pruned" else (last.get("cause"), last.get("evidence"))
        self.cells.append({
            "config": config, "seed": seed, "hash": h, "run_dir": str(rd.path) if rd else None,
            "phase": "pruned" if train_status == "pruned" else state.get("phase", "new"), "train_status": train_status,
            "trained": bool(state.get("trained", False)), "trained_steps": state.get("trained_steps"),
            "attempts": len(attempts), "last_cause": cause, "last_evidence": evidence,
            **self._cost(rd, state),
        })
        spec_limit = _spec_cost_limit(spec)
        ids = {"config": config, "seed": seed, "hash": h}
        seed_row = dict(ids)
        for kind in EVAL_KINDS:
            seed_row.update(self._read_eval(rd, state, kind, ids, spec_limit))
        seed_row.update(self._read_curves(rd, ids))
        self.seeds.append(seed_row)
        if math.isfinite(spec_limit):
            self.spec_limits.append(spec_limit)

    def _cost(self, rd: RunDir | None, state: dict) -> dict:
        """The cell's device hours; a cost we cannot compute is unavailable, never guessed."""
        if self.cost_mod is None or rd is None:
            return dict(_NO_COST)
        try:
            c = self.cost_mod.cell_cost(state)
            return {"device": c.get("device"), "useful_h": float(c["useful_h"]), "wasted_h": float(c["wasted_h"]),
                    "pending_h": float(c.get("pending_h", 0.0)), "pruned_h": float(c.get("pruned_h", 0.0)),
                    "device_hours": float(c["total_h"])}
        except (KeyError, TypeError, ValueError):
            self.priced = False
            return dict(_NO_COST)

    def _read_eval(self, rd: RunDir | None, state: dict, kind: str, ids: dict, spec_limit: float) -> dict:
        """One evaluation (id or ood) of a cell: its status row, its episode rows, and the seed
        row's `{kind}_return/cost/violation_rate` (returned)."""
        doc = self._safe(lambda: rd.read_eval(kind), _CORRUPT) if rd else None
        if rd is not None and doc is _CORRUPT:
            self.eval_status.append({**ids, "kind": kind, "status": "corrupt", "env_id": None,
                                     "checkpoint_step": None, **_NO_SUMMARY, "cost_limit": spec_limit,
                                     "path": str(rd.eval_path(kind))})
            return {f"{kind}_{what}": math.nan for what in ("return", "cost", "violation_rate")}
        limit = float(doc.get("cost_limit", spec_limit)) if doc else spec_limit
        if doc is not None and math.isfinite(limit):
            self.limits.append(limit)
        if doc is not None and kind == "ood" and doc.get("ood_proxy"):
            self.proxies.append(" ".join(str(doc["ood_proxy"]).split()))
        summ = _eval_summary(doc, limit) if doc else dict(_NO_SUMMARY)
        base = {**ids, "kind": kind, "env_id": doc.get("env_id") if doc else None,
                "checkpoint_step": doc.get("checkpoint_step") if doc else None}
        self.eval_status.append({**base, "status": _eval_status(rd, state, doc, kind), **summ, "cost_limit": limit,
                                 "path": str(rd.eval_path(kind)) if rd else None})
        if doc:
            self.evals.extend(_episode_rows(base, doc, limit))
        return {f"{kind}_return": summ["return_mean"], f"{kind}_cost": summ["cost_mean"],
                f"{kind}_violation_rate": summ["violation_rate"]}

    def _read_curves(self, rd: RunDir | None, ids: dict) -> dict:
        """The cell's training and evaluation curves, and the seed row's final training metrics (returned)."""
        metrics = rd.read_metrics() if rd else []
        final = metrics[-1] if metrics else {}
        for source, rows in (("train", metrics), ("eval", rd.read_eval_curve() if rd else [])):
            self.curves.extend({**ids, "source": source, **r} for r in rows)
        return {"risk_penalty": _num(final.get("risk_penalty")) if final else math.nan,
                "final_train_return": _num(final.get("episode_return")) if final else math.nan,
                "final_train_cost": _num(final.get("episode_cost")) if final else math.nan,
                "final_env_step": final.get("env_step") if final else None}

    def frames(self) -> Frames:
        curves = pd.DataFrame.from_records(self.curves) if self.curves else pd.DataFrame(
            columns=["config", "seed", "hash", "source", "env_step"])
        for col in ("config", "seed", "hash", "source", "env_step"):
            if col not in curves:
                curves[col] = pd.Series(dtype=object)
        return Frames(
            store_root=self.store.root,
            cells=pd.DataFrame(self.cells, columns=_CELL_COLUMNS),
            eval_status=pd.DataFrame(self.eval_status, columns=_EVAL_STATUS_COLUMNS),
            evals=pd.DataFrame(self.evals, columns=_EVAL_COLUMNS),
            seeds=pd.DataFrame(self.seeds, columns=_SEED_COLUMNS),
            curves=curves,
            specs=self.specs,
            states=self.states,
            ood_proxy=sorted(set(self.proxies)),
            cost_limits=sorted(set(self.limits or self.spec_limits)),
            extra_run_dirs=self.extra,
            corrupt=self.corrupt,
            cost_available=self.priced and bool(self.cells),
        )


def parquet_ready(df: pd.DataFrame) -> pd.DataFrame:
    """A copy Parquet can store: object columns with mixed types (e.g. None and ints) become strings
    or numbers, so pyarrow never guesses a type from the first row."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            non_null = out[col].dropna()
            if len(non_null) and all(isinstance(v, (bool, np.bool_)) for v in non_null):
                out[col] = out[col].astype("boolean")
            elif len(non_null) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                       for v in non_null):
                out[col] = pd.to_numeric(out[col], errors="coerce")
            else:
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                        else str(v)).astype("string")
    return out
