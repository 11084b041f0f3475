"""The studies in a store, read for the report and for `status` (reads only; never writes a byte).

A study lives in `<store>/studies/<name>/` (docs/architecture.md): `journal.log` is Optuna's journal
file storage, `study.json` what the sds sweeper knows of it (objective names, the constraint, the
total asked for, the tuning and test seeds). Each trial carries `sds_*` user attributes: the value of
each tuning seed and their spread, the cost against the limit, the device-hours of its cells, the env
step a pruned trial stopped at, and test-seed re-runs. `read_studies` turns them into one
`StudyView` per study: a frame of trials, the best feasible trial(s), the optimization history,
Optuna's parameter importances (when there are enough trials) and what pruning saved.

The journal is opened through a backend whose `append_logs` refuses, so nothing here can write to
the store, and reading takes no lock (Optuna's JournalFileBackend reads without one; a line being
appended by a live sweep is skipped until it is whole).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

STUDIES_DIR = "studies"
JOURNAL = "journal.log"
META = "study.json"
# Parameter importances need this many complete trials (and one parameter that varies among them).
MIN_TRIALS_FOR_IMPORTANCES = 5
# A trial's state, as the report and status name it (Optuna's TrialState names, lower case).
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
TRIAL_COLUMNS = ("number", "state", "params", "value", "values", "n", "mean", "std", "ci_low", "ci_high", "seeds",
                 "seed_values", "cost", "limit", "constraint", "feasible", "device_hours", "pruned_at", "test")


@dataclass
class StudyView:
    """One study as the report shows it. `trials` has one row per trial (TRIAL_COLUMNS): `state` is
    complete / pruned / failed / running / waiting, `value` the first objective (NaN without one),
    `n, mean, std, ci_low, ci_high` its spread over the tuning seeds (sds_spread), `cost` the mean
    cost and `limit` the cost limit (sds_cost), `constraint` cost - limit as told to Optuna and
    `feasible` whether it is <= 0 (None without a constraint value), `device_hours` the trial's cells'
    (sds_device_hours), `pruned_at` the env step of the rung it was pruned at, `test` its test-seed
    re-run (sds_test) or None."""

    name: str
    path: Path
    meta: dict
    directions: list[str]
    objectives: list[str]
    constraint: dict | None  # {"metric", "limit"} from study.json, or None
    n_trials: int | None  # the total the study asks for (study.json), None when not known
    seeds: list
    trials: pd.DataFrame
    best: list[int] = field(default_factory=list)  # best feasible trial; multi-objective: the feasible Pareto front
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # number, state, value, feasible, best_so_far
    importances: dict[str, float] | None = None
    importances_why: str = ""  # why there are no importances (empty when there are)
    savings: dict = field(default_factory=dict)
    test: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per test-seed re-run
    error: str | None = None  # the study could not be read: the path, the cause and the fix

    @property
    def counts(self) -> dict[str, int]:
        """Trials per state (complete, pruned, failed, running, waiting) and in all (`trials`)."""
        states = list(self.trials["state"]) if len(self.trials) else []
        return {"trials": len(states), **{s: states.count(s) for s in STATES.values()}}

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    def trial(self, number: int) -> dict[str, Any] | None:
        """One trial's row as a dict (None when there is no such trial)."""
        rows = self.trials[self.trials["number"] == number] if len(self.trials) else self.trials
        return rows.iloc[0].to_dict() if len(rows) else None

    @property
    def best_row(self) -> dict[str, Any] | None:
        """The best feasible trial (single-objective), or the front's trial with the best first
        objective (multi-objective); None when no complete trial is feasible."""
        rows = [r for r in (self.trial(n) for n in self.best) if r is not None]
        if not rows:
            return None
        sign = -1.0 if self.directions[0] == "maximize" else 1.0
        return min(rows, key=lambda r: (sign * r["value"], r["number"]))

    def front(self) -> pd.DataFrame:
        """The return-vs-cost points: one row per complete trial with a value and a cost (number,
        value, cost, feasible, on_front). The cost is sds_cost's mean, else (a study over return and
        cost) the second objective. `on_front`: the trial is on the feasible Pareto front (Optuna's
        study.best_trials for a multi-objective study; higher value at lower cost among the feasible
        trials for a single objective)."""
        cols = ["number", "value", "cost", "feasible", "on_front"]
        if not len(self.trials):
            return pd.DataFrame(columns=cols)
        done = self.trials[self.trials["state"] == "complete"]
        cost = done["cost"]
        if self.multi_objective and cost.isna().all():
            cost = done["values"].map(lambda v: v[1] if v and len(v) > 1 else math.nan)
        pts = pd.DataFrame({"number": done["number"], "value": done["value"].astype(float),
                            "cost": cost.astype(float), "feasible": done["feasible"]}).dropna(subset=["value", "cost"])
        sign = 1.0 if self.directions[0] == "maximize" else -1.0
        if self.multi_objective:
            on = set(self.best)
        else:
            ok = pts[pts["feasible"] != False]  # noqa: E712 (None: no constraint, counts as feasible)
            on = {int(a.number) for a in ok.itertuples() if not any(
                (sign * b.value >= sign * a.value and b.cost <= a.cost and (sign * b.value > sign * a.value or b.cost < a.cost))
                for b in ok.itertuples())}
        return pts.assign(on_front=pts["number"].isin(on)).reset_index(drop=True)[cols]

    def to_dict(self) -> dict[str, Any]:
        """The study's summary for `status --json` and report.json (docs/status-json.md `studies`)."""
        c = self.counts
        b = self.best_row
        best = None if b is None else {
            "number": int(b["number"]), "value": _finite(b["value"]), "values": b["values"], "params": b["params"],
            "n": int(b["n"]), "ci_low": _finite(b["ci_low"]), "ci_high": _finite(b["ci_high"]), "seeds": b["seeds"],
            "cost": _finite(b["cost"]), "feasible": None if b["feasible"] is None else bool(b["feasible"])}
        return {"name": self.name, "path": str(self.path), "n_trials": self.n_trials, "trials": c["trials"],
                "complete": c["complete"], "pruned": c["pruned"], "failed": c["failed"],
                "running": c["running"] + c["waiting"], "directions": self.directions, "objective": self.objectives,
                "constraint": self.constraint, "best": best, "front": [int(n) for n in self.best],
                "savings": {k: _finite(v) for k, v in self.savings.items()}, "error": self.error}


def _finite(x: Any) -> Any:
    """A float for JSON: None for NaN/inf/None."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return x
    return f if math.isfinite(f) else None


def read_studies(store_root: str | Path, *, importances: bool = True) -> list[StudyView]:
    """Every study under `<store_root>/studies/`, sorted by name ([] when there is none).
    `importances=False` skips Optuna's importance evaluation (status needs only the counts and
    the best). A study that cannot be read comes back with `error` set, never raises."""
    root = Path(store_root).expanduser() / STUDIES_DIR
    if not root.is_dir():
        return []
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and ((p / JOURNAL).is_file() or (p / META).is_file()))
    return [read_study(d, importances=importances) for d in dirs]


def _read_meta(path: Path) -> tuple[dict, str | None]:
    """study.json (format 1), or {} and why it could not be read."""
    f = path / META
    if not f.is_file():
        return {}, None
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        return {}, f"{f}: unreadable ({e})"
    return (meta, None) if isinstance(meta, dict) else ({}, f"{f}: not a JSON object")


def _empty_view(path: Path, meta: dict, error: str | None) -> StudyView:
    """A view of a study without trials (its journal missing or unreadable: `error` says which)."""
    directions = [str(d) for d in meta.get("directions") or ["maximize"]]
    return StudyView(name=str(meta.get("name") or path.name), path=path, meta=meta, directions=directions,
                     objectives=_objective_names(meta, len(directions)), constraint=meta.get("constraint"),
                     n_trials=meta.get("n_trials"), seeds=list(meta.get("seeds") or []),
                     trials=pd.DataFrame(columns=list(TRIAL_COLUMNS)),
                     history=pd.DataFrame(columns=["number", "state", "value", "feasible", "best_so_far"]),
                     importances_why="the study has no trials yet", error=error)


def _objective_names(meta: dict, n: int) -> list[str]:
    names = meta.get("objective")
    names = [names] if isinstance(names, str) else list(names or [])
    return [str(x) for x in names][:n] + [f"value {i}" if n > 1 else "value" for i in range(len(names), n)]


def _load(journal: Path, name: str | None) -> Any:
    """The Optuna study in `journal` (the one named `name`, else the journal's only study), read
    through a backend that cannot append."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    class _ReadOnlyJournal(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            raise PermissionError(f"{journal}: the report only reads studies; nothing may be appended here.")

    storage = JournalStorage(_ReadOnlyJournal(str(journal)))
    names = optuna.get_all_study_names(storage)
    if name not in names:
        if len(names) != 1:
            raise ValueError(f"it holds {len(names)} studies ({', '.join(names) or 'none'}) and none named {name!r}")
        name = names[0]
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))


def read_study(path: str | Path, *, importances: bool = True) -> StudyView:
    """The study in the directory `path` (`<store>/studies/<name>`); see read_studies."""
    path = Path(path)
    meta, meta_error = _read_meta(path)
    journal = path / JOURNAL
    if not journal.is_file():
        return _empty_view(path, meta, meta_error or (
            f"{journal}: missing, so the study has no trials to show. Fix: re-run the sweep that created it "
            f"(it resumes the study), or remove {path} if the study is abandoned."))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = _load(journal, meta.get("name"))
            frozen = study.get_trials(deepcopy=False)
    except Exception as e:  # noqa: BLE001 (a damaged journal is shown in the report, not raised)
        return _empty_view(path, meta, f"{journal}: unreadable by Optuna ({type(e).__name__}: {e}). Fix: open it "
                                       f"with `optuna-dashboard {journal}` to see the damage; the report skips it.")
    directions = [d.name.lower() for d in study.directions]
    view = _empty_view(path, {**meta, "name": meta.get("name") or study.study_name}, meta_error)
    view.directions, view.objectives = directions, _objective_names(meta, len(directions))
    tests = dict(study.user_attrs.get("sds_test") or {})  # the best points re-run on test seeds, by trial number
    view.trials = pd.DataFrame([{**_trial_row(t, view), **({"test": tests[str(t.number)]} if str(t.number) in tests else {})}
                                for t in frozen], columns=list(TRIAL_COLUMNS))
    view.best = _best(study, view)
    view.history = _history(view)
    view.savings = _savings(view.trials)
    view.test = _test_table(view)
    if importances:
        view.importances, view.importances_why = _importances(study, view)
    else:
        view.importances_why = "not computed (status)"
    return view


def _spread(attrs: dict) -> dict:
    """The first objective's spread over the tuning seeds (sds_spread[0]), NaN where absent."""
    s = (attrs.get("sds_spread") or [None])[0] or {}
    return {k: _num(s.get(k)) for k in ("mean", "std", "ci_low", "ci_high")} | {"n": int(s.get("n") or 0)}


def _num(x: Any) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _trial_row(t: Any, view: StudyView) -> dict[str, Any]:
    """One trial's row (TRIAL_COLUMNS) from Optuna's FrozenTrial and its sds_* user attributes."""
    a = t.user_attrs
    cost = a.get("sds_cost") or {}
    limit = cost.get("limit", (view.constraint or {}).get("limit"))
    constraints = dict(t.constraints or {})
    feasible = all(v <= 0 for v in constraints.values()) if constraints else None
    cells = a.get("sds_cells") or []
    # A pruned trial's `values` in Optuna is its last intermediate value (a rung's curve metric), not
    # the objective: only a complete trial has a value.
    values = list(t.values) if t.values is not None and t.state.name == "COMPLETE" else None
    return {"number": int(t.number), "state": STATES.get(t.state.name, t.state.name.lower()),
            "params": dict(t.params), "value": values[0] if values else math.nan, "values": values,
            **_spread(a), "seeds": [c.get("seed") for c in cells] or list(view.seeds),
            "seed_values": (a.get("sds_seed_values") or [None])[0], "cost": _num(cost.get("mean")),
            "limit": _num(limit), "constraint": constraints.get("cost", next(iter(constraints.values()), None)),
            "feasible": feasible, "device_hours": _num(a.get("sds_device_hours")),
            "pruned_at": a.get("sds_pruned_at"), "test": a.get("sds_test")}


def _best(study: Any, view: StudyView) -> list[int]:
    """Optuna's best feasible trial (single-objective: study.best_trial) or feasible Pareto front
    (study.best_trials), as trial numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if view.multi_objective:
            return sorted(t.number for t in study.best_trials)
        try:
            return [study.best_trial.number]
        except (ValueError, RuntimeError):  # no complete trial, or none feasible
            return []


def _history(view: StudyView) -> pd.DataFrame:
    """Per trial by number: its state, first objective, feasibility and the best feasible value so
    far (NaN until the first feasible complete trial)."""
    maximize = view.directions[0] == "maximize"
    best, rows = math.nan, []
    for r in view.trials.sort_values("number").itertuples():
        better = not math.isfinite(best) or (r.value > best if maximize else r.value < best)
        if r.state == "complete" and r.feasible is not False and math.isfinite(r.value) and better:
            best = float(r.value)
        rows.append({"number": r.number, "state": r.state, "value": r.value, "feasible": r.feasible,
                     "best_so_far": best})
    return pd.DataFrame(rows, columns=["number", "state", "value", "feasible", "best_so_far"])


def _savings(trials: pd.DataFrame) -> dict[str, float]:
    """Device-hours of pruned, completed, failed and running trials, the pruned fraction of the
    finished (complete or pruned) trials, and an estimate of what the pruned trials would have used
    run to the end (the completed trials' mean each)."""
    h = {s: float(trials.loc[trials["state"] == s, "device_hours"].fillna(0.0).sum()) if len(trials) else 0.0
         for s in ("complete", "pruned", "failed", "running")}
    n_complete = int((trials["state"] == "complete").sum()) if len(trials) else 0
    n_pruned = int((trials["state"] == "pruned").sum()) if len(trials) else 0
    finished = n_complete + n_pruned
    mean_complete = h["complete"] / n_complete if n_complete else math.nan
    would = n_pruned * mean_complete if n_complete else math.nan
    return {"pruned_h": h["pruned"], "complete_h": h["complete"], "failed_h": h["failed"], "running_h": h["running"],
            "n_pruned": n_pruned, "n_complete": n_complete,
            "pruned_fraction": n_pruned / finished if finished else 0.0,
            "mean_complete_h": mean_complete, "saved_h": would - h["pruned"] if n_pruned and n_complete else math.nan}


def _test_table(view: StudyView) -> pd.DataFrame:
    """One row per trial re-run on test seeds (sds_test): its tuning value and spread beside the
    test value and spread, kept apart from the tuning seeds."""
    rows = []
    for r in view.trials.itertuples():
        t = r.test if isinstance(r.test, dict) else None
        if not t:
            continue
        s = (t.get("spread") or [None])[0] or {}
        rows.append({"number": r.number, "params": r.params, "tuning_value": r.value, "tuning_ci_low": r.ci_low,
                     "tuning_ci_high": r.ci_high, "tuning_seeds": r.seeds, "test_seeds": list(t.get("seeds") or []),
                     "test_value": _num(s.get("mean")), "test_std": _num(s.get("std")),
                     "test_ci_low": _num(s.get("ci_low")), "test_ci_high": _num(s.get("ci_high")),
                     "test_n": int(s.get("n") or 0)})
    return pd.DataFrame(rows)


def _importances(study: Any, view: StudyView) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances over the complete trials, or None and why not (fewer than
    MIN_TRIALS_FOR_IMPORTANCES complete trials, no parameter that varies, Optuna's own error)."""
    done = view.trials[view.trials["state"] == "complete"]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCES:
        return None, (f"not computed: {len(done)} complete trial(s), and parameter importances need at least "
                      f"{MIN_TRIALS_FOR_IMPORTANCES}")
    seen: dict[str, set] = {}
    for p in done["params"]:
        for k, v in p.items():
            seen.setdefault(k, set()).add(repr(v))
    varying = sorted(k for k, vs in seen.items() if len(vs) > 1)
    if not varying:
        return None, "not computed: no parameter takes more than one value among the complete trials"
    import optuna

    target = (lambda t: t.values[0]) if view.multi_objective else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, params=varying, target=target)
    except Exception as e:  # noqa: BLE001 (the report says why, it does not fail)
        return None, f"not computed: Optuna's importance evaluator failed ({type(e).__name__}: {e})"
    return {k: float(v) for k, v in imp.items()}, ""
