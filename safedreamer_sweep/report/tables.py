"""Tables composed from the tidy frames: coverage, main results, ablation against the baseline.
Each is a pure function returning a DataFrame; `to_markdown` / `to_latex` render them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from safedreamer_sweep.report import stats
from safedreamer_sweep.report.aggregate import METRICS
from safedreamer_sweep.report.settings import ReportSettings

# Coverage symbols: one per part (train, ID eval, OOD eval) of a cell.
SYMBOLS = {"done": "✓", "failed": "✗", "interrupted": "✗", "corrupt": "!", "running": "…", "pending": "–", "missing": "–"}
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


# ----------------------------------------------------------------------------- rendering


def fmt(x: float, digits: int = 2) -> str:
    """A number for a table: fixed digits, "n/a" for NaN/None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}f}"


def main_wide(main: pd.DataFrame) -> pd.DataFrame:
    """The main table as one row per config: "mean ± std (IQM) [CI] n=" per metric; below
    stats.MIN_SEEDS_FOR_INTERVAL seeds the CI is replaced by "no interval (...)"."""
    if main.empty:
        return pd.DataFrame()

    def cell(r: pd.Series) -> str:
        if r["n"] == 0:
            return "n/a (n=0)"
        ci = (f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if r["n"] >= stats.MIN_SEEDS_FOR_INTERVAL
              else stats.no_interval_text(int(r["n"])))
        return f"{fmt(r['mean'])} ± {fmt(r['std'])} (IQM {fmt(r['iqm'])}) {ci} n={int(r['n'])}"

    w = main.assign(text=main.apply(cell, axis=1)).pivot(index="config", columns="label", values="text")
    order = [lab for lab, _ in METRICS.values() if lab in w.columns]
    return w[order]


def ablation_wide(abl: pd.DataFrame) -> pd.DataFrame:
    """The ablation table as one row per config: "diff [CI] P(impr.)" per metric; the CI is replaced
    by "no interval (...)" when either side has fewer than stats.MIN_SEEDS_FOR_INTERVAL seeds."""
    if abl.empty:
        return pd.DataFrame()

    def cell(r: pd.Series) -> str:
        if not math.isfinite(r["diff"]):
            return f"n/a (n={int(r['n'])} vs {int(r['n_baseline'])})"
        n, nb = int(r["n"]), int(r["n_baseline"])
        ci = (f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if min(n, nb) >= stats.MIN_SEEDS_FOR_INTERVAL
              else stats.no_interval_text(n, nb))
        return f"{r['diff']:+.2f} {ci} P(impr.)={fmt(r['prob_improvement'])}"

    w = abl.assign(text=abl.apply(cell, axis=1)).pivot(index="config", columns="label", values="text")
    order = [lab for lab, _ in METRICS.values() if lab in w.columns]
    return w[order]


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """GitHub Markdown (tabulate); an empty frame renders as a sentence, not a broken table."""
    if df.empty:
        return "_(no rows)_\n"
    return df.to_markdown(index=index, floatfmt=".3f") + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table of numeric columns, three decimals."""
    if df.empty:
        return f"% {caption}: no rows\n"
    # escape="latex": config names and column names carry underscores.
    sty = (df.style.format(precision=3, na_rep="--", escape="latex")
           .format_index(escape="latex", axis=1).hide(axis="index"))
    return sty.to_latex(caption=caption, label=label, hrules=True, position="ht") + "\n"
