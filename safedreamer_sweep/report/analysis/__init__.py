"""The numbers: tidy frames read from the store, then pure functions over them and plain data (no
file is written and nothing is drawn here; only aggregate.py and returns.py read the store).

    aggregate.py  tidy frames read from the store: cells, evaluations, per-seed metrics, curves
    stats.py      t intervals, Holm, IQM and P(improvement) (rliable), seeds needed
    tables.py     coverage, main results, ablation vs the baseline (tidy frames), complete seeds
    caveats.py    the caveats the report says before any number
    decision.py   the configurable recommendation rule: the decision per config and its headline
    returns.py    the results table of any app, read from the store (cells whose task returns its result)
"""

__all__ = ["aggregate", "caveats", "decision", "returns", "stats", "tables"]
