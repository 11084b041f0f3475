"""One cell in depth (`status STORE --cell CONFIG:SEED`): its attempt history with the hours of
each (`cell_history`, also the `--cell --json` document) and its rich view (`cell_view`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from safedreamer_sweep.commands.status.view import PHASE_STYLE
from safedreamer_sweep.core.durations import format_hours
from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.report.cost import cell_cost
from safedreamer_sweep.sweep.observe import pruned_by_of, pruned_text


def cell_history(doc: dict, config: str, seed: int) -> dict[str, Any]:
    """One cell of a status document plus its attempt history (state.json) and log paths: what
    `status STORE --cell CONFIG:SEED` shows. KeyError when the store has no such cell."""

    for c in doc["cells"]:
        if c["config"] == config and str(c["seed"]) == str(seed):
            break
    else:
        have = ", ".join(f"{c['config']}:{c['seed']}" for c in doc["cells"]) or "none"
        raise KeyError(f"no cell {config}:{seed} in {doc['store']} (cells: {have})")
    out = {"cell": c, "attempts": [], "logs": []}
    if c.get("run_dir"):
        rd = RunDir(Path(c["run_dir"]))
        state = rd.read_state()
        try:
            progress = rd.read_progress()
        except StoreError:
            progress = None
        costs = {a["n"]: a for a in cell_cost(state, now=doc["generated_at"], progress=progress)["attempts"]}
        for i, a in enumerate(state.get("attempts") or []):
            out["attempts"].append({**a, "cost": costs.get(a.get("n", i + 1))})
        if rd.logs_dir.is_dir():
            out["logs"] = [str(p) for p in sorted(rd.logs_dir.iterdir())]
    return out


def _clock(t: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cell_view(hist: dict[str, Any]):
    """Attempt by attempt: when, where, outcome, cause with evidence, hours and their class, the
    traceback tail of the newest failure, and where the logs are."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c = hist["cell"]
    head = Text(f"{c['config']} seed {c['seed']} [{c.get('hash')}]: {c['phase']}", style=PHASE_STYLE.get(c["phase"], ""))
    parts: list[Any] = [head, Text(f"run dir {c.get('run_dir') or '(none: never run)'}", style="dim")]
    t = Table(title="attempts", title_justify="left")
    for col in ("n", "outcome", "started", "ended", "where", "resources", "device-h", "class", "cause / evidence"):
        t.add_column(col, overflow="fold")
    for a in hist["attempts"]:
        cost = a.get("cost") or {}
        res = a.get("resources") or {}
        bits = (a.get("host"), a.get("node"), f"job {a['job_id']}" if a.get("job_id") else None,
                f"pid {a['pid']}" if a.get("pid") else None)
        where = " ".join(str(x) for x in dict.fromkeys(bits) if x)
        t.add_row(str(a.get("n")), str(a.get("outcome")), _clock(a.get("started_at")), _clock(a.get("ended_at")),
                  where or "-", ", ".join(f"{k}={v}" for k, v in res.items() if v not in (None, {}, [], "")) or "-",
                  format_hours(cost["hours"]) if cost else "-", str(cost.get("class", "-")),
                  f"{a.get('cause')}: {a.get('evidence') or ''}" if a.get("cause") else
                  pruned_text(pruned_by_of(a.get("pruned_by")), a.get("pruned_at")) if a.get("outcome") == "pruned" else "")
    parts.append(t)
    tails = [a for a in hist["attempts"] if a.get("traceback_tail")]
    if tails:
        parts.append(Text(f"traceback tail of attempt {tails[-1].get('n')}:", style="bold red"))
        parts.append(Text(tails[-1]["traceback_tail"].rstrip()[-2000:]))
    if hist["logs"]:
        parts.append(Text("logs: " + "  ".join(hist["logs"]), style="dim"))
    return Group(*parts)
