"""The numbers, from the store: tidy frames, statistics, tables, warnings and the decision (no
file is written and nothing is drawn here).

    aggregate.py  tidy frames: cells, evaluations, per-seed metrics, curves
    stats.py      t intervals, Holm, IQM and P(improvement) (rliable), seeds needed
    tables.py     coverage, main results, ablation vs the baseline (tidy frames)
    decision.py   warnings and the configurable recommendation rule
    returns.py    the results table of any app (cells whose task returns its result)
"""
