"""The results table of any app: one row per cell whose task function's return value is its result
(spec done_when "return"), with the cell's phase, cause and the value, from the store only.

    label, seed, hash, phase, attempts, cause, evidence, then `value` (a scalar return) or one
    `value.<key>` column per key of a dict return (report/build.py writes it as results.csv,
    results.md and the page report.html).

The package's own tasks (evaluations in eval/) are reported by build_report; this table is for
every other app, so a sweep of any Hydra app ends with current tables too.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.identity import flatten
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.observe import observe_run

COLUMNS = ("label", "seed", "hash", "phase", "attempts", "cause", "evidence")


def _value_columns(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {f"value.{k}": (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                for k, v in flatten(value).items()}
    if hasattr(value, "item"):  # numpy / jax scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    return {"value": value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)}


def results_frame(store: Store, stall_after: float = 600.0) -> pd.DataFrame:
    """One row per `done_when: return` cell of the store, sorted by label then seed."""
    rows = []
    for rd in store.iter_runs():
        try:
            spec = rd.read_spec() or {}
        except StoreError:
            continue
        if spec.get("done_when") != "return":
            continue
        v = observe_run(rd, stall_after=stall_after, spec=spec)
        row: dict[str, Any] = {"label": spec.get("config"), "seed": spec.get("seed"), "hash": spec.get("hash"),
                               "phase": v.phase, "attempts": v.attempts,
                               "cause": v.cause if v.phase != "done" else None,
                               "evidence": (v.evidence or "")[:300] if v.phase != "done" else None}
        if v.phase == "pruned":  # stopped by its study's pruner: cause pruned, who and when as its evidence
            row.update(cause="pruned", evidence=(v.detail or "")[:300])
        if v.phase == "done":
            try:
                row.update(_value_columns(rd.read_result()))
            except StoreError as e:
                row.update(phase="failed", cause="corrupt", evidence=str(e)[:300])
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else list(COLUMNS))
    if len(df):
        df = df.sort_values(["label", "seed"], key=lambda c: c.astype(str), kind="stable").reset_index(drop=True)
    return df
