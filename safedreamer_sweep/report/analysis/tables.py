"""Tables composed from the tidy frames: coverage, main results, ablation against the baseline.
Each is a pure function returning a tidy DataFrame (one row per config and metric);
safedreamer_sweep/report/render/text.py turns them into Markdown and LaTeX."""

from __future__ import annotations

import pandas as pd

from safedreamer_sweep.report.analysis import stats
from safedreamer_sweep.report.analysis.aggregate import METRICS
from safedreamer_sweep.report.settings import ReportSettings

# Coverage symbols: one per part (train, ID eval, OOD eval) of a cell.
SYMBOLS = {"done": "✓", "failed": "✗", "interrupted": "✗", "corrupt": "!", "running": "…", "pending": "–", "missing": "–",
           "pruned": "✂"}  # pruned: stopped by its study's pruner, a hole but not a failure
PARTS = ("train", "id", "ood")


def coverage_long(cells: pd.DataFrame, eval_status: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, seed, part) with the part's status: the coverage matrix, tidy."""
    train = cells[["config", "seed", "train_status"]].rename(columns={"train_status": "status"}).assign(part="train")
    ev = eval_status[["config", "seed", "kind", "status"]].rename(columns={"kind": "part"})
    out = pd.concat([train, ev], ignore_index=True)
    out["part"] = pd.Categorical(out["part"], categories=list(PARTS), ordered=True)
    return out.sort_values(["config", "seed", "part"]).reset_index(drop=True)[["config", "seed", "part", "status"]]


def coverage_matrix(cov: pd.DataFrame) -> pd.DataFrame:
    """config x seed, each entry three symbols (train, ID eval, OOD eval), e.g. "✓✓–"."""
    if cov.empty:
        return pd.DataFrame()
    sym = cov.assign(s=cov["status"].map(lambda s: SYMBOLS.get(s, "?")))
    cell = sym.groupby(["config", "seed"], observed=True)["s"].agg("".join).reset_index()
    m = cell.pivot(index="config", columns="seed", values="s").fillna("   ")
    m.columns = [f"seed {c}" for c in m.columns]
    return m


def holes(cov: pd.DataFrame) -> pd.DataFrame:
    """The parts that are not done, one row each."""
    return cov[cov["status"] != "done"].reset_index(drop=True)


def main_table(seeds: pd.DataFrame, settings: ReportSettings) -> pd.DataFrame:
    """Per config and metric: n seeds, mean, std, IQM and the Student t CI of the mean (NaN below
    stats.MIN_SEEDS_FOR_INTERVAL seeds)."""
    rows = []
    for config, g in seeds.groupby("config", sort=True):
        for metric, (label, _) in METRICS.items():
            s = stats.summarize(g[metric].to_numpy(dtype=float), confidence=settings.confidence)
            rows.append({"config": config, "metric": metric, "label": label, **s})
    return pd.DataFrame(rows, columns=["config", "metric", "label", "n", "mean", "std", "iqm", "ci_low", "ci_high"])


def ablation_table(seeds: pd.DataFrame, settings: ReportSettings) -> pd.DataFrame:
    """Every config against the baseline, per metric: difference of means (config - baseline) with
    its Welch t CI (NaN when either side has fewer than stats.MIN_SEEDS_FOR_INTERVAL seeds) and the
    probability of improvement (lower is better for costs)."""
    cols = ["config", "metric", "label", "n", "n_baseline", "diff", "ci_low", "ci_high", "prob_improvement"]
    base = seeds[seeds["config"] == settings.baseline]
    rows = []
    for config, g in seeds.groupby("config", sort=True):
        if config == settings.baseline:
            continue
        for metric, (label, higher) in METRICS.items():
            c = stats.compare(g[metric].to_numpy(dtype=float), base[metric].to_numpy(dtype=float),
                              higher_is_better=higher, confidence=settings.confidence)
            rows.append({"config": config, "metric": metric, "label": label, **c})
    return pd.DataFrame(rows, columns=cols)


def complete_seeds(cov: pd.DataFrame) -> pd.Series:
    """Per config: how many seeds have train, ID eval and OOD eval all done."""
    if cov.empty:
        return pd.Series(dtype=int)
    done = cov.assign(ok=cov["status"] == "done").groupby(["config", "seed"], observed=True)["ok"].all()
    return done.groupby(level="config").sum().astype(int)
