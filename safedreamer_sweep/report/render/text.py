"""Tables a person reads: the tidy main and ablation frames as one row per config, each cell the
number with its interval when it has one, a caveat that holds for the whole table said once in a
note under it (Markdown) or in the caption (LaTeX), and the metrics split into two groups so that
a table fits a page (about 110 characters of Markdown; a LaTeX text width at \\small).

    main:      | config | n | ID return | ...      cells "32.0 [29.8, 34.2]", or "32.0" below 3 seeds
    ablation:  | config | n | ID return | ...      cells "+20.0 [18.1, 21.9]"; n is "5 vs 5"
    P(improvement) is a point estimate, in a table of its own.

n is the config's number of seeds, in its own column; a metric backed by fewer seeds than its row's
n (an evaluation missing for some seeds) carries its own "(n=k)" in the cell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from safedreamer_sweep.report.analysis.aggregate import METRICS
from safedreamer_sweep.report.analysis.stats import MIN_SEEDS_FOR_INTERVAL

# Two groups of metrics: one table of each fits a page where seven columns would not.
_METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "return and cost": ("id_return", "id_cost", "ood_return", "ood_cost"),
    "violations and risk": ("id_violation_rate", "ood_violation_rate", "risk_penalty"),
}


def fmt(x: float, digits: int = 2) -> str:
    """A number for a table: fixed digits, "n/a" for NaN/None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}f}"


def num(x: float, signed: bool = False) -> str:
    """A compact number: 3 significant figures, at most 2 decimals ("1234", "32.0", "0.25")."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x)
    a = abs(x)
    digits = 0 if a >= 100 else 1 if a >= 10 else 2
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


@dataclass
class TextTable:
    """A table to render: its frame (string cells), its title, and the notes that hold for all of it."""

    title: str
    frame: pd.DataFrame
    notes: list[str]


def _no_interval_note(ns: list[int], paired: bool = False) -> str:
    low = [str(n) for n in sorted({n for n in ns if n < MIN_SEEDS_FOR_INTERVAL})]
    seeds = " or ".join(low) + (" seed" if low == ["1"] else " seeds")
    side = " on a side" if paired else ""
    return (f"Cells without brackets have no interval: they rest on {seeds}{side}, and an honest "
            f"interval needs at least {MIN_SEEDS_FOR_INTERVAL} (at n = 2 a Student t interval spans about "
            f"±9 standard deviations; a narrower one would be false comfort).")


def _by_metric_group(table: pd.DataFrame) -> Iterator[tuple[str, tuple[str, ...], pd.DataFrame]]:
    """(group, its metrics, the rows of `table` for them) per metric group that has rows."""
    for group, metrics in _METRIC_GROUPS.items():
        g = table[table["metric"].isin(metrics)]
        if not g.empty:
            yield group, metrics, g


def main_tables(main: pd.DataFrame, confidence: float = 0.95) -> list[TextTable]:
    """The main table as one TextTable per metric group: rows configs, cells "mean [CI]"."""
    if main.empty:
        return []
    pct = round(confidence * 100)
    out = []
    for group, metrics, g in _by_metric_group(main):
        rows, low_ns = [], []
        for config, c in g.groupby("config", sort=True):
            n_row = int(c["n"].max())
            row: dict[str, str] = {"config": config, "n": str(n_row)}
            for r in c.itertuples():
                n = int(r.n)
                if n == 0:
                    text = "n/a"
                elif n >= MIN_SEEDS_FOR_INTERVAL and math.isfinite(r.ci_low):
                    text = f"{num(r.mean)} [{num(r.ci_low)}, {num(r.ci_high)}]"
                else:
                    text = num(r.mean)
                    low_ns.append(n)
                if 0 < n < n_row:
                    text += f" (n={n})"
                row[r.label] = text
            rows.append(row)
        cols = ["config", "n", *[METRICS[m][0] for m in metrics if m in set(g["metric"])]]
        notes = [(f"Each cell: the mean over seeds and, in brackets, the {pct}% Student t CI of the mean; n = seeds "
                 f"behind the numbers (std and IQM: main.csv).")]
        if low_ns:
            notes.append(_no_interval_note(low_ns))
        out.append(TextTable(f"Main results: {group}", pd.DataFrame(rows, columns=cols).fillna("n/a"), notes))
    return out


def ablation_tables(abl: pd.DataFrame, baseline: str, confidence: float = 0.95) -> list[TextTable]:
    """The ablation table per metric group (cells "diff [Welch t CI]") and one table of the
    probability of improvement (a point estimate, every metric)."""
    if abl.empty:
        return []
    pct = round(confidence * 100)
    out = []
    for group, metrics, g in _by_metric_group(abl):
        rows, low_ns = [], []
        for config, c in g.groupby("config", sort=True):
            n_row, nb_row = int(c["n"].max()), int(c["n_baseline"].max())
            row: dict[str, str] = {"config": config, "n": f"{n_row} vs {nb_row}"}
            for r in c.itertuples():
                n, nb = int(r.n), int(r.n_baseline)
                if not math.isfinite(r.diff):
                    text = "n/a"
                elif min(n, nb) >= MIN_SEEDS_FOR_INTERVAL and math.isfinite(r.ci_low):
                    text = f"{num(r.diff, signed=True)} [{num(r.ci_low)}, {num(r.ci_high)}]"
                else:
                    text = num(r.diff, signed=True)
                    low_ns.append(min(n, nb))
                if (n, nb) != (n_row, nb_row) and math.isfinite(r.diff):
                    text += f" (n={n} vs {nb})"
                row[r.label] = text
            rows.append(row)
        cols = ["config", "n", *[METRICS[m][0] for m in metrics if m in set(g["metric"])]]
        notes = [(f"Each cell: the difference of means, config − {baseline}, and, in brackets, its {pct}% Welch t "
                 f"CI; n = seeds of the config vs of the baseline.")]
        if low_ns:
            notes.append(_no_interval_note(low_ns, paired=True))
        out.append(TextTable(f"Against {baseline}: {group}", pd.DataFrame(rows, columns=cols).fillna("n/a"), notes))
    for group, metrics in _METRIC_GROUPS.items():
        p = abl[abl["metric"].isin(metrics)].pivot(index="config", columns="label", values="prob_improvement")
        if p.empty:
            continue
        p = p[[METRICS[m][0] for m in metrics if METRICS[m][0] in p.columns]].map(fmt).reset_index()
        p.columns.name = None
        out.append(TextTable(f"Probability of improvement over {baseline}: {group}", p, [
            ("P(a random seed of the config beats a random seed of the baseline); for cost, violations and "
            "risk lower is better. A point estimate that describes these seeds, not a test.")]))
    return out


def to_markdown(df: pd.DataFrame, index: bool = True, as_text: bool = False) -> str:
    """GitHub Markdown (tabulate); an empty frame renders as a sentence, not a broken table.
    `as_text`: cells are already formatted (keep "+2.0" and "10.50" as written)."""
    if df.empty:
        return "_(no rows)_\n"
    if as_text:
        align = ["left"] * (1 + index) + ["right"] * (df.shape[1] - 1)
        return df.to_markdown(index=index, disable_numparse=True, colalign=align) + "\n"
    return df.to_markdown(index=index, floatfmt=".3f") + "\n"


def tables_markdown(tables: list[TextTable], level: int = 3) -> str:
    """Each table under its title, its notes once below it."""
    if not tables:
        return "_(no rows)_\n"
    parts = []
    for t in tables:
        parts.append(f"{'#' * level} {t.title}\n\n{to_markdown(t.frame, index=False, as_text=True)}\n"
                     + "".join(f"{note}\n" for note in t.notes))
    return "\n".join(parts)


def _to_latex(df: pd.DataFrame, caption: str, label: str, index: bool = False) -> str:
    """A booktabs LaTeX table at \\small (pandas Styler; config names and headers escaped); the
    config and n columns left-aligned, the numbers right-aligned."""
    if df.empty:
        return f"% {caption}: no rows\n"
    sty = df.style.format(precision=3, na_rep="--", escape="latex").format_index(escape="latex", axis=1)
    if not index:
        sty = sty.hide(axis="index")
    sty = sty.set_table_styles([{"selector": "small", "props": ":;"}], overwrite=False)
    cols = "".join("l" if c in ("config", "n") else "r" for c in df.columns)
    return sty.to_latex(caption=caption, label=label, hrules=True, position="ht", position_float="centering",
                        column_format=("l" if index else "") + cols) + "\n"


def _latex_caption(text: str) -> str:
    return (text.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_").replace("&", "\\&")
            .replace("#", "\\#").replace("±", "$\\pm$").replace("−", "$-$"))


_CELL = re.compile(r"^(?P<num>\S+)(?: (?P<ci>\[[^\]]*\]))?(?P<rest>.*)$")


def _interval_rows(df: pd.DataFrame, keep: tuple[str, ...] = ("config", "n")) -> pd.DataFrame:
    """Each row as two: the numbers, then their intervals under them (the `keep` columns blank), so
    a column is as wide as "[-2.43, 2.93]" rather than "+0.25 [-2.43, 2.93]"; rows without any
    interval stay one row."""
    out = []
    for row in df.to_dict(orient="records"):
        top, below = {}, {}
        for col, v in row.items():
            m = _CELL.match(str(v)) if col not in keep else None
            if m is None:
                top[col], below[col] = v, ""
            else:
                top[col], below[col] = m["num"] + m["rest"], m["ci"] or ""
        out.append(top)
        if any(below.values()):
            out.append(below)
    return pd.DataFrame(out, columns=df.columns)


def tables_latex(tables: list[TextTable], label: str) -> str:
    """One LaTeX table per TextTable, each interval under its number (_interval_rows: four metric
    columns fit a text width at \\small); the caption holds the title and the notes (said once)."""
    if not tables:
        return f"% {label}: no rows\n"
    parts = []
    for i, t in enumerate(tables):
        caption = _latex_caption(t.title + ". " + " ".join(t.notes))
        parts.append(_to_latex(_interval_rows(t.frame), caption, f"{label}{'' if i == 0 else f':{i + 1}'}"))
    return "\n".join(parts)
