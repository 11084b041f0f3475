"""Figures: functions from tidy frames to a matplotlib Figure (seaborn styling, slide-sized fonts).

Each function returns the Figure and writes nothing; `figure_png` turns one into PNG bytes so the
report can write every artifact atomically at the end.
"""

from __future__ import annotations

import io
import math
import sys
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:
    # No display needed: the report runs on cluster nodes and in CI. In a notebook the inline
    # backend stays, so the figures show in the cells.
    matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from safedreamer_sweep.report.analysis import stats
from safedreamer_sweep.report.analysis.tables import PARTS, SYMBOLS

# "talk" context: fonts readable when the PNG fills a slide.
_THEME = {"context": "talk", "style": "whitegrid", "font_scale": 0.8}
_STATUS_CODES = {"done": 0, "running": 1, "pending": 2, "missing": 3, "failed": 4, "interrupted": 4, "corrupt": 4,
                 "pruned": 5}
_STATUS_COLORS = ["#4c9a2a", "#f2c14e", "#d9d9d9", "#bdbdbd", "#c0392b", "#5b8bd0"]  # pruned: blue, never red


def _theme() -> None:
    sns.set_theme(**_THEME)


def _palette(configs: list[str]) -> dict[str, tuple]:
    return dict(zip(configs, sns.color_palette("colorblind", max(len(configs), 1))))


def _empty(fig: Figure, text: str) -> Figure:
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=16)
    return fig


def learning_curves(curves: pd.DataFrame, cost_limit: float = math.nan, *, source: str = "train",
                    confidence: float = 0.95) -> Figure:
    """Return and cost vs env steps, one line per config (mean over seeds) with a Student t CI
    band (stats.curve_bands: none where fewer than 3 seeds reached a point), and the cost limit
    drawn on the cost panel."""
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    ycols = ("episode_return", "episode_cost") if source == "train" else ("return_mean", "cost_mean")
    data = curves[curves["source"] == source] if len(curves) else curves
    if not len(data) or not all(c in data for c in ycols):
        plt.close(fig)
        return _empty(plt.figure(figsize=(14, 5.5)), "no training curves in the store yet")
    configs = sorted(data["config"].unique())
    pal = _palette(configs)
    for ax, col, title in zip(axes, ycols, ("return", "cost")):
        for config in configs:
            g = data[data["config"] == config]
            wide = g.pivot_table(index="seed", columns="env_step", values=col, aggfunc="last")
            n = wide.shape[0]
            m, lo, hi = stats.curve_bands(wide.to_numpy(), confidence=confidence)
            x = wide.columns.to_numpy(dtype=float)
            ax.plot(x, m, color=pal[config], label=f"{config} (n={n})", lw=2)
            ax.fill_between(x, lo, hi, color=pal[config], alpha=0.2, lw=0)
        if title == "cost" and math.isfinite(cost_limit):
            ax.axhline(cost_limit, color="black", ls="--", lw=1.5, label=f"cost limit {cost_limit:g}")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"episode {title}")
        ax.set_title(f"{'training' if source == 'train' else 'eval'} {title}, mean and {int(confidence * 100)}% CI")
    axes[1].legend(fontsize="x-small", loc="best")
    return fig


def id_ood_bars(seeds: pd.DataFrame, cost_limit: float = math.nan) -> Figure:
    """ID vs OOD return and cost per config: bars are means, every seed is a point."""
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    rows = []
    for kind in ("id", "ood"):
        for what in ("return", "cost"):
            col = f"{kind}_{what}"
            if col in seeds:
                part = seeds[["config", "seed", col]].rename(columns={col: "value"})
                rows.append(part.assign(kind=kind.upper(), what=what))
    long = pd.concat(rows, ignore_index=True).dropna(subset=["value"]) if rows else pd.DataFrame()
    if long.empty:
        plt.close(fig)
        return _empty(plt.figure(figsize=(14, 5.5)), "no ID/OOD evaluations in the store yet")
    order = sorted(long["config"].unique())
    for ax, what in zip(axes, ("return", "cost")):
        d = long[long["what"] == what]
        sns.barplot(data=d, x="config", y="value", hue="kind", order=order, hue_order=["ID", "OOD"],
                    errorbar=None, alpha=0.6, ax=ax)
        # seaborn jitters with numpy's global generator: seed it for this call only, so the same
        # store gives the same PNG, and restore the caller's state.
        state = np.random.get_state()
        np.random.seed(0)
        try:
            sns.stripplot(data=d, x="config", y="value", hue="kind", order=order, hue_order=["ID", "OOD"],
                          dodge=True, palette="dark:black", size=7, jitter=0.15, ax=ax, legend=False)
        finally:
            np.random.set_state(state)
        if what == "cost" and math.isfinite(cost_limit):
            ax.axhline(cost_limit, color="black", ls="--", lw=1.5, label=f"cost limit {cost_limit:g}")
        ax.set_xlabel("")
        ax.set_ylabel(f"episode {what}")
        ax.set_title(f"final {what}: ID vs OOD (bar = mean, dot = seed)")
        ax.tick_params(axis="x", labelrotation=20)
        ax.legend(fontsize="x-small")
    return fig


def per_seed(curves: pd.DataFrame, *, metric: str = "episode_return", gap_ratio: float = 2.0) -> Figure:
    """One panel per config, one line per seed, coloured by its final value and labelled at its
    end: seeds that bifurcate (some collapse, some succeed) show up as separate bundles instead of
    hiding in a mean; a panel whose final values split (stats.bimodal_split) says so in its title."""
    _theme()
    data = curves[curves["source"] == "train"] if len(curves) else curves
    if not len(data) or metric not in data:
        return _empty(plt.figure(figsize=(14, 5)), "no training curves in the store yet")
    configs = sorted(data["config"].unique())
    ncol = min(len(configs), 4)
    nrow = math.ceil(len(configs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 1, 4.2 * nrow), sharey=True, squeeze=False,
                             constrained_layout=True)
    for ax, config in zip(axes.flat, configs):
        g = data[data["config"] == config]
        wide = g.pivot_table(index="env_step", columns="seed", values=metric, aggfunc="last")
        final = wide.ffill().iloc[-1] if len(wide) else pd.Series(dtype=float)
        # Colour by final value so the two bundles of a bifurcation get different colours.
        lo, hi = (np.nanmin(final), np.nanmax(final)) if len(final) and np.isfinite(final).any() else (0, 1)
        cmap = plt.get_cmap("viridis")
        x = wide.index.to_numpy(dtype=float)
        label_each = wide.shape[1] <= 12
        colours = [cmap(0.5 if hi == lo or not np.isfinite(final[s]) else (final[s] - lo) / (hi - lo))
                   for s in wide.columns]
        # One LineCollection for all seeds: a thousand separate plot() calls cost seconds.
        segs = [np.column_stack([x, wide[s].to_numpy(dtype=float)]) for s in wide.columns]
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=1.8 if label_each else 0.6,
                                         alpha=0.9 if label_each else 0.4))
        ax.autoscale_view()
        for s, seg in zip(wide.columns, segs) if label_each else ():
            ok = np.flatnonzero(np.isfinite(seg[:, 1]))
            if len(ok):
                ax.annotate(f"s{s}", tuple(seg[ok[-1]]), xytext=(3, 0), textcoords="offset points",
                            fontsize="xx-small", va="center")
        split = stats.bimodal_split(final.to_numpy(dtype=float), gap_ratio)
        ax.set_title(f"{config} ({wide.shape[1]} seeds)" + ("\nBIFURCATING SEEDS" if split else ""),
                     color="#c0392b" if split else "black")
        ax.set_xlabel("env steps")
        ax.set_ylabel(metric.replace("_", " "))
    for ax in list(axes.flat)[len(configs):]:
        ax.set_visible(False)
    return fig


def coverage_heatmap(cov: pd.DataFrame) -> Figure:
    """Rows (config, part), columns seeds: green done, yellow running, grey missing/pending, red
    failed, blue pruned by a study; small matrices carry the status symbol in every square."""
    _theme()
    if cov.empty:
        return _empty(plt.figure(figsize=(8, 3)), "the store has no expected cells")
    labels = {"train": "train", "id": "ID eval", "ood": "OOD eval"}
    codes = cov.assign(code=cov["status"].map(lambda s: _STATUS_CODES.get(s, 3)),
                       sym=cov["status"].map(lambda s: SYMBOLS.get(s, "?")),
                       row=cov["config"].astype(str) + " · " + cov["part"].map(labels).astype(str))
    row_order = [f"{c} · {labels[p]}" for c in sorted(cov["config"].unique()) for p in PARTS]
    grid = codes.pivot(index="row", columns="seed", values="code").reindex(index=row_order)
    annotate = grid.shape[1] <= 30  # beyond that the colours carry it; symbols would be illegible
    annot = codes.pivot(index="row", columns="seed", values="sym").reindex(index=row_order).fillna("")
    fig, ax = plt.subplots(figsize=(min(22, max(8, 0.6 * grid.shape[1] + 5)), 1.2 + 0.42 * len(grid)),
                           constrained_layout=True)
    sns.heatmap(grid, ax=ax, cmap=ListedColormap(_STATUS_COLORS), vmin=-0.5, vmax=len(_STATUS_COLORS) - 0.5,
                annot=annot.to_numpy() if annotate else False, fmt="", cbar=False,
                linewidths=1 if annotate else 0, linecolor="white", annot_kws={"fontsize": "small"},
                xticklabels="auto")
    for k in range(1, len(row_order) // len(PARTS)):  # a rule between configs
        ax.axhline(k * len(PARTS), color="black", lw=2)
    ax.set_xlabel("seed")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize="x-small")
    n_done = int((cov["status"] == "done").sum())
    ax.set_title(f"coverage: {n_done} of {len(cov)} parts done\n"
                 f"green done · yellow running · grey missing/pending · red failed"
                 + (" · blue pruned" if (cov["status"] == "pruned").any() else ""), fontsize="small")
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def returned_values(results: pd.DataFrame, max_panels: int = 6) -> Figure | None:
    """An app's returned values (results.csv's `value` / `value.<key>` columns that are numbers):
    one panel per value, one column per label, a dot per seed and a bar at the mean. None when no
    cell returned a number."""
    done = results[results["phase"] == "done"] if "phase" in results else results
    cols = [c for c in results.columns if (c == "value" or c.startswith("value."))
            and pd.to_numeric(done[c], errors="coerce").notna().any()][:max_panels]
    if not cols:
        return None
    _theme()
    ncol = min(len(cols), 3)
    nrow = math.ceil(len(cols) / ncol)
    labels = sorted(done["label"].astype(str).unique())
    width = max(6.0, min(18.0, 1.2 * len(labels) + 3)) if ncol == 1 else 5.5 * ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, 4.8 * nrow), squeeze=False, constrained_layout=True)
    for ax, col in zip(axes.flat, cols):
        d = done.assign(label=done["label"].astype(str), v=pd.to_numeric(done[col], errors="coerce")).dropna(subset=["v"])
        sns.barplot(data=d, x="label", y="v", order=labels, errorbar=None, color="#9ecae1", ax=ax)
        state = np.random.get_state()  # deterministic jitter (as in id_ood_bars)
        np.random.seed(0)
        try:
            sns.stripplot(data=d, x="label", y="v", order=labels, color="black", size=7, jitter=0.15, ax=ax)
        finally:
            np.random.set_state(state)
        ax.set_xlabel("")
        ax.set_ylabel(col)
        ax.set_title(f"{col} (bar = mean, dot = seed)", fontsize="small")
        ax.tick_params(axis="x", labelrotation=25, labelsize="x-small")
    for ax in list(axes.flat)[len(cols):]:
        ax.set_visible(False)
    return fig


# ----------------------------------------------------------------------------- studies (report/study.py)


def study_history(view: Any) -> Figure:
    """A study's optimization history: the first objective per trial number (a dot per feasible
    complete trial, a red x for one that breaks the constraint), the best feasible value so far as a
    step line, pruned trials as grey triangles and failed ones as red bars on the bottom edge."""
    _theme()
    fig, ax = plt.subplots(figsize=(12, 5), constrained_layout=True)
    h = view.history
    if not len(h):
        plt.close(fig)
        return _empty(plt.figure(figsize=(12, 5)), f"study {view.name}: no trials yet")
    done = h[h["state"] == "complete"]
    ok, bad = done[done["feasible"] != False], done[done["feasible"] == False]  # noqa: E712
    ax.scatter(ok["number"], ok["value"], color="#1f77b4", s=60, zorder=3, label="complete (feasible)")
    if len(bad):
        ax.scatter(bad["number"], bad["value"], color="#c0392b", marker="x", s=80, zorder=3,
                   label="complete, breaks the cost limit")
    ax.step(h["number"], h["best_so_far"], where="post", color="black", lw=2, label="best feasible so far")
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction: marks on the bottom edge
    for state, marker, colour in (("pruned", "v", "#7f7f7f"), ("failed", "|", "#c0392b")):
        g = h[h["state"] == state]
        if len(g):
            ax.scatter(g["number"], [0.03] * len(g), transform=edge, marker=marker, s=90, color=colour,
                       clip_on=False, zorder=4, label=f"{state} ({len(g)})")
    ax.set_xlabel("trial number")
    ax.set_ylabel(view.objectives[0])
    ax.set_title(f"study {view.name}: {view.objectives[0]} per trial ({view.directions[0]})")
    ax.legend(fontsize="x-small", loc="best")
    return fig


def study_front(view: Any) -> Figure | None:
    """Return against cost, a dot per complete trial: feasible dots, a red x per trial that breaks
    the cost limit, the limit as a dashed vertical line, the feasible Pareto front ringed and joined,
    the best feasible trial starred, every point labelled with its trial number. None without costs."""
    pts = view.front()
    if not len(pts):
        return None
    _theme()
    fig, ax = plt.subplots(figsize=(10, 6), constrained_layout=True)
    ok, bad = pts[pts["feasible"] != False], pts[pts["feasible"] == False]  # noqa: E712
    ax.scatter(ok["cost"], ok["value"], color="#1f77b4", s=60, zorder=3, label="feasible")
    if len(bad):
        ax.scatter(bad["cost"], bad["value"], color="#c0392b", marker="x", s=90, zorder=3,
                   label="infeasible (breaks the cost limit)")
    front = pts[pts["on_front"]].sort_values("cost")
    if len(front):
        ax.plot(front["cost"], front["value"], color="#ff7f0e", lw=1.5, zorder=2)
        ax.scatter(front["cost"], front["value"], s=220, facecolors="none", edgecolors="#ff7f0e", lw=2, zorder=4,
                   label="feasible Pareto front")
    best = view.best_row
    if best is not None and best["number"] in set(pts["number"]):
        b = pts[pts["number"] == best["number"]].iloc[0]
        ax.scatter([b["cost"]], [b["value"]], marker="*", s=420, color="#2e7d32", zorder=5,
                   label=f"best feasible (trial {int(b['number'])})")
    for p in pts.itertuples():
        ax.annotate(str(int(p.number)), (p.cost, p.value), xytext=(5, 4), textcoords="offset points",
                    fontsize="xx-small")
    limit = (view.constraint or {}).get("limit")
    if isinstance(limit, (int, float)) and math.isfinite(limit):
        ax.axvline(float(limit), color="black", ls="--", lw=1.5, label=f"cost limit {float(limit):g}")
    ax.set_xlabel((view.constraint or {}).get("metric") or (view.objectives[1] if view.multi_objective else "cost"))
    ax.set_ylabel(view.objectives[0])
    ax.set_title(f"study {view.name}: return against cost, every complete trial")
    ax.legend(fontsize="x-small", loc="best")
    return fig


def study_importances(view: Any) -> Figure | None:
    """Optuna's parameter importances as horizontal bars (None when they were not computed)."""
    if not view.importances:
        return None
    _theme()
    names = list(view.importances)[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(names)), constrained_layout=True)
    ax.barh(names, [view.importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (Optuna, normalized to sum to 1)")
    ax.set_title(f"study {view.name}: parameter importances for {view.objectives[0]}")
    return fig
