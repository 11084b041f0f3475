"""The rich view of a status document (`status_view`), for a human at 3 a.m.: the headline, the
config x seed matrix, the evidence of every cell, bad nodes and device-hours."""

from __future__ import annotations

import time
from typing import Any

from safedreamer_sweep.commands.status.headline import is_queued, study_line
from safedreamer_sweep.core.durations import format_duration, format_hours
from safedreamer_sweep.sweep.failures import bad_nodes_text

PHASE_STYLE = {"done": "green", "running": "cyan", "pending": "dim", "stalled": "bold yellow",
               "failed": "bold red", "lost": "bold magenta", "pruned": "blue"}
PRUNED_MARK = "✂"  # a cell its study's pruner stopped: neither done nor failed


def phase_label(c: dict) -> str:
    """A cell's phase as the tables show it: `queued`, `running 40%`, `✂ pruned 25%` (where its pruner
    stopped it), else the phase."""
    label = "queued" if is_queued(c) else c["phase"]
    if c["phase"] == "pruned":
        label = f"{PRUNED_MARK} pruned"
    if c["phase"] in ("running", "stalled", "pruned") and c.get("env_step") is not None and c.get("total_steps"):
        label += f" {100 * c['env_step'] / c['total_steps']:.0f}%"
    return label


def _headline_style(line: str) -> str:
    return ("bold green" if line.startswith("DONE") else "bold cyan" if line.startswith("RUNNING")
            else "bold yellow" if line.startswith("STALLED") else "bold red")


def _one_decimal(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, (int, float)) else "?"


def _eval_text(summary: dict | None) -> str:
    if not summary:
        return "-"
    return f"R {_one_decimal(summary.get('return_mean'))} C {_one_decimal(summary.get('cost_mean'))}"


def _step_text(c: dict) -> str:
    if c.get("env_step") is None:
        return "-"
    tot = c.get("total_steps")
    pct = f" {100 * c['env_step'] / tot:.0f}%" if tot else ""
    return f"{c['env_step']}/{tot if tot else '?'}{pct}"


def _where(c: dict) -> str:
    who = []
    if c.get("host"):
        who.append(str(c["host"]))
    if c.get("job_id"):
        who.append(f"job {c['job_id']}" + (f" {c['job_state']}" if c.get("job_state") else ""))
    if c.get("pid"):
        alive = {True: "", False: " (gone)", None: ""}[c.get("pid_alive")]
        who.append(f"pid {c['pid']}{alive}")
    return " ".join(who) or "-"


def _why(c: dict) -> str:
    bits = []
    if c.get("stale_eval"):  # the numbers shown are not those of the trained policy
        bits.append(f"STALE: {c['stale_eval']}")
    if c.get("cause"):
        bits.append(f"{c['cause']}: {c.get('evidence') or ''}".strip())
    if c.get("detail") and c["phase"] != "done" and c.get("run_dir"):
        bits.append(c["detail"])
    if c.get("other_identities") and not c.get("run_dir"):
        bits.append("this identity never ran; on disk: " + ", ".join(
            f"{o['hash']} ({o['phase']})" for o in c["other_identities"]))
    if c.get("claimed_by"):
        bits.append(f"waiting for a slot in {c['claimed_by']}")
    if c.get("proc_status") == "stopped":
        bits.append("process stopped (SIGSTOP)")
    text = "; ".join(bits)
    # Long tracebacks live in state.json / --json; say so rather than cut a number in half silently.
    return text if len(text) <= 300 else text[:299] + "…"


def status_view(doc: dict):
    """A rich renderable: headline, config x seed matrix, per-cell evidence, device-hours."""
    from rich.console import Group
    from rich.text import Text

    cells = doc["cells"]
    # An app's cells (done = its task function returned) have no ID / OOD results and count steps of
    # their own heartbeat, not env steps.
    evals = any(c.get("done_when") != "return" for c in cells)
    parts: list[Any] = [Text(doc["verdict"], style=_headline_style(doc["verdict"])),
                        Text(f"store {doc['store']}  ·  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc['generated_at']))}"
                             f"  ·  stalled after {format_duration(doc['stall_after_s'])} without "
                             f"{'env-step' if evals else 'heartbeat'} progress",
                             style="dim")]
    # one line per study, under the verdict
    parts[1:1] = [Text(study_line(s), style="bold") for s in doc.get("studies") or []]
    if not cells:
        return Group(*parts)
    parts += [_matrix_table(cells, evals), _detail_table(cells, evals)]
    for node in doc.get("bad_nodes") or []:
        parts.append(Text(f"bad node {bad_nodes_text(node)}", style="bold red"))
    cost = doc.get("cost") or {}
    if cost.get("total"):
        parts.append(_cost_table(cost))
    return Group(*parts)


def _matrix_table(cells: list[dict], evals: bool):
    """One row per config, one column per seed (an app without a seed: one column, its phase), then
    how many seeds have ID / OOD results."""
    from rich.table import Table
    from rich.text import Text

    seeds = sorted({c["seed"] for c in cells}, key=lambda s: (s is None, s))
    configs = list(dict.fromkeys(c["config"] for c in cells))
    matrix = Table(title="config x seed" if seeds != [None] else "cells", title_justify="left", show_lines=False)
    matrix.add_column("config" if seeds != [None] else "cell", style="bold")
    for s in seeds:
        matrix.add_column("phase" if s is None and len(seeds) == 1 else f"seed {s}", justify="center")
    if evals:
        matrix.add_column("ID eval", justify="right")
        matrix.add_column("OOD eval", justify="right")
    index = {(c["config"], c["seed"]): c for c in cells}
    for cfg in configs:
        row: list[Any] = [cfg]
        mine = [c for c in cells if c["config"] == cfg]
        for s in seeds:
            c = index.get((cfg, s))
            if c is None:
                row.append(Text("·", style="dim"))
                continue
            row.append(Text(phase_label(c), style=PHASE_STYLE.get(c["phase"], "")))
        if evals:
            row.append(f"{sum(c['eval_id'] is not None for c in mine)}/{len(mine)}")
            row.append(f"{sum(c['eval_ood'] is not None for c in mine)}/{len(mine)}")
        matrix.add_row(*row)
    return matrix


def _detail_table(cells: list[dict], evals: bool):
    """One row per cell: its evidence (step, speed, ETA, last progress, where, attempts, cost, cause)."""
    from rich.table import Table
    from rich.text import Text

    detail = Table(title="cells (evidence)", title_justify="left")
    # Numbers never wrap (a number split over two lines misleads); text columns may.
    columns: list[tuple[str, dict[str, Any]]] = [
        ("cell", {"style": "bold", "no_wrap": True}), ("phase", {}),
        ("env step" if evals else "step", {"justify": "right", "no_wrap": True}), ("steps/s", {"justify": "right"}),
        ("ETA", {"justify": "right"}), ("moved ago", {"justify": "right"}), ("where", {}), ("att", {"justify": "right"}),
        *([("ID", {}), ("OOD", {})] if evals else []),
        ("device-h", {"justify": "right", "no_wrap": True}), ("cause / evidence", {"overflow": "fold"})]
    for col, kw in columns:
        detail.add_column(col, **kw)
    for c in cells:
        sps = c.get("steps_per_s")
        cost = c.get("cost") or {}
        detail.add_row(
            f"{c['config']}" + ("" if c['seed'] is None else f" s{c['seed']}"),  # no seed: the label alone
            Text(phase_label(c), style=PHASE_STYLE.get(c["phase"], "")),
            _step_text(c),
            f"{sps:.0f}" if isinstance(sps, (int, float)) else "-",
            format_duration(c["eta_s"]) if c.get("eta_s") is not None and c["phase"] == "running" else "-",
            format_duration(c["progress_age_s"]) if c.get("progress_age_s") is not None
            and c["phase"] not in ("done", "pruned") else "-",
            _where(c),
            str(c.get("attempts") or 0),
            *((_eval_text(c.get("eval_id")), _eval_text(c.get("eval_ood"))) if evals else ()),
            f"{format_hours(cost['total_h'])} {cost['device']}" if cost else "-",
            _why(c),
        )
    return detail


def _cost_table(cost: dict):
    """Device-hours by config and device (useful, wasted, pending), the totals, and money if priced."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="device-hours", title_justify="left",
              caption="useful: led to a finished cell · wasted: failed, duplicated or redone work · "
                      "pending: cell not finished yet · pruned: spent on cells a study's pruner stopped",
              caption_justify="left")
    for col in ("scope", "device", "useful", "wasted", "pending", "pruned", "total"):
        t.add_column(col, justify="right" if col not in ("scope", "device") else "left")
    hours = ("useful_h", "wasted_h", "pending_h", "pruned_h", "total_h")
    for cfg, devs in cost["configs"].items():
        for dev, b in devs.items():
            t.add_row(cfg, _dev(dev), *(format_hours(b.get(k, 0.0)) for k in hours))
    for dev, b in cost["total"].items():
        t.add_row(Text("total", style="bold"), _dev(dev), *(format_hours(b.get(k, 0.0)) for k in hours))
    money = cost.get("money")
    if money:
        cur = money.get("currency") or ""
        t.add_row(Text("money", style="bold"), f"@{money['per_gpu_hour']:g} {cur}/GPU-h",
                  *(f"{money.get(k, 0.0):.2f} {cur}" for k in ("useful", "wasted", "pending", "pruned", "total")))
    return t


def _dev(dev: str) -> str:
    return "GPU-h" if dev == "gpu" else "CPU-core-h"
