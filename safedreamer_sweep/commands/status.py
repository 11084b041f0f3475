"""`safedreamer-sweep status STORE`: where the sweep stands, with the evidence for every cell.

The answer is built from the run directories and the scheduler only (observe.observe_store), never
from a log line's timestamp. On top sits one verdict line, in one of these shapes:

    DONE 20/20
    RUNNING 12/20 (ETA 14 min; 6 running; 2 queued)
    STALLED 1: v2_full seed 3, no progress for 14 min (pid 1234 alive, stopped (SIGSTOP), 0% CPU)
    INCOMPLETE: 3 cells never run: v2_full seeds 2 3, v2_u_only seed 1; 1 failed: v2_full seed 4 (error)

`collect` gathers it (a plain dict, also the `--json` document, see docs/status-json.md);
`render` turns it into rich tables for a human at 3 a.m.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.durations import format_duration, format_hours
from safedreamer_sweep.core.store import RunDir, Store, StoreError, host, read_json
from safedreamer_sweep.report.cost import cell_cost, store_cost
from safedreamer_sweep.sweep.claim import holder_alive
from safedreamer_sweep.sweep.failures import bad_nodes_of_store, bad_nodes_text
from safedreamer_sweep.sweep.observe import observe_store

SCHEMA = "safedreamer-sweep/status/1"
DEFAULT_STALL_AFTER_S = 600.0
# Fields every cell of the JSON document carries (docs/status-json.md); tests check them.
CELL_FIELDS = ("config", "seed", "hash", "run_dir", "phase", "env_step", "total_steps", "steps_per_s",
               "eta_s", "progress_age_s", "host", "pid", "pid_alive", "job_id", "job_state", "attempts",
               "cause", "evidence", "detail", "last_outcome", "claimed_by", "trained", "eval_id", "eval_ood",
               "proc_status", "cpu_percent", "other_identities", "cost", "stale_eval")


class StatusError(Exception):
    """The store cannot be read (missing, not a store). The message names the path and the fix."""


# ----------------------------------------------------------------------------- evidence


def _slurm_backend(store: Store) -> bool:
    """Does anything in the store say its jobs are Slurm jobs (manifest launcher or a claim)?"""

    for doc in store.read_sweep_manifests():
        launcher = doc.get("launcher")
        if isinstance(launcher, dict) and launcher.get("backend") == "slurm":
            return True
    for rd in store.iter_runs():  # seeded cells and those of an app without a seed
        try:
            if (read_json(rd.claim_path) or {}).get("backend") == "slurm":
                return True
        except StoreError:
            continue
    return False


def slurm_job_state() -> Callable[[str], str | None]:
    """`job_id -> Slurm state` (squeue, then sacct; cached): the supervisor's own lookup, so status
    and supervision read the scheduler the same way."""
    from safedreamer_sweep.sweep.backends.slurm import slurm_state_lookup

    return slurm_state_lookup()


def _process_evidence(cells: list[dict], sample_s: float = 0.3) -> None:
    """Add `proc_status` and `cpu_percent` to running/stalled cells whose pid lives on this host:
    a stalled pid at 0% CPU and `stopped` is a different story from one spinning at 100%."""
    import psutil

    procs = []
    for c in cells:
        c.setdefault("proc_status", None)
        c.setdefault("cpu_percent", None)
        if c["phase"] in ("running", "stalled") and c.get("pid_alive") and c.get("host") == host():
            try:
                p = psutil.Process(int(c["pid"]))
                p.cpu_percent(None)
                procs.append((c, p))
            except (psutil.Error, ValueError):
                pass
    if not procs:
        return
    time.sleep(sample_s)
    for c, p in procs:
        try:
            c["cpu_percent"] = round(p.cpu_percent(None), 1)
            c["proc_status"] = p.status()
        except psutil.Error:
            pass


def _last_outcome(run_dir: str | None) -> str | None:
    """The newest attempt's outcome (`submitted` = queued by a launcher, not started yet)."""
    if not run_dir:
        return None

    try:
        attempts = RunDir(Path(run_dir)).read_state().get("attempts") or []
    except StoreError:
        return None
    return attempts[-1].get("outcome") if attempts else None


def _live_claim(run_dir: str | None, stall_after: float, job_state) -> str | None:
    """`sweep <id>: <evidence>` when a live sweep holds the cell's claim (it will run it), else None."""
    if not run_dir:
        return None

    rd = RunDir(Path(run_dir))
    try:
        claim = read_json(rd.claim_path)
    except StoreError:
        return None
    if not claim or claim.get("released_at"):
        return None
    alive, why = holder_alive(claim, rd, stall_after=stall_after, job_state=job_state)
    return f"sweep {claim.get('sweep_id')}: {why}" if alive else None


def _other_identities(store: Store, v: Any) -> list[dict[str, Any]]:
    """Run directories of the same config and seed under another identity hash (an older variant,
    or a config edited since): evidence that a `never run` cell has history on disk."""
    out = []
    for rd in store.find(v.config, v.seed):
        if rd.path.name == v.hash or str(rd.path) == v.run_dir:
            continue
        try:
            phase = rd.read_state().get("phase")
        except StoreError:
            phase = "corrupt"
        out.append({"hash": rd.path.name, "phase": phase, "run_dir": str(rd.path)})
    return out


def _stall_after_from(store: Store) -> float:
    """The newest sweep manifest's `launcher.stall_after`, else the default."""
    for doc in reversed(store.read_sweep_manifests()):
        v = (doc.get("launcher") or {}).get("stall_after") if isinstance(doc.get("launcher"), dict) else None
        if v:
            return float(v)
    return DEFAULT_STALL_AFTER_S


def _cost_settings(store: Store) -> tuple[float | None, str | None]:
    for doc in reversed(store.read_sweep_manifests()):
        c = doc.get("cost")
        if isinstance(c, dict) and c.get("per_gpu_hour") is not None:
            return float(c["per_gpu_hour"]), c.get("currency")
    return None, None


# ----------------------------------------------------------------------------- verdict


def _labels(cells: Iterable[dict], max_groups: int = 6) -> str:
    """`v2_full seeds 2 3, v2_u_only seed 1`: one group per exact config name; past `max_groups`
    configs the line says how many more (the table below lists every cell)."""
    groups: dict[str, list[int]] = {}
    for c in cells:  # an app without a seed: its cells are listed by label alone
        seeds = groups.setdefault(c["config"], [])
        if c["seed"] is not None:
            seeds.append(int(c["seed"]))
    shown = [f"{cfg} seed{'s' if len(s) > 1 else ''} {' '.join(map(str, sorted(s)))}" if s else cfg
             for cfg, s in list(groups.items())[:max_groups]]
    rest = len(groups) - max_groups
    return ", ".join(shown) + (f" and {rest} more config{'s' if rest > 1 else ''}" if rest > 0 else "")


def _alive_text(c: dict) -> str:
    if c.get("pid") and c.get("pid_alive") is not None:
        bits = [f"pid {c['pid']} {'alive' if c['pid_alive'] else 'gone'}"]
        if c.get("proc_status") == "stopped":
            bits.append("stopped (SIGSTOP)")
        if c.get("cpu_percent") is not None:
            bits.append(f"{c['cpu_percent']:.0f}% CPU")
        return ", ".join(bits)
    if c.get("job_id"):
        return f"job {c['job_id']} {c.get('job_state') or 'state unknown'}"
    if c.get("pid"):
        return f"pid {c['pid']} on {c.get('host')}, not checkable from {host()}"
    return "no process recorded"


def _never_run(c: dict) -> bool:
    return c["phase"] == "pending" and not c.get("attempts")


def _queued(c: dict) -> bool:
    """Waiting to run: submitted and not started yet, or claimed by a live sweep that has not
    submitted it yet (a free slot, an array throttle)."""
    return c["phase"] == "pending" and (c.get("last_outcome") == "submitted" or bool(c.get("claimed_by")))


def queued_text(queued: list[dict]) -> str:
    """`8 queued: 6 QOSMaxGRESPerUser, 2 Resources` (the scheduler's reasons, most frequent first)."""
    reasons = Counter(c.get("queue_reason") or "no reason given" for c in queued)
    if set(reasons) == {"no reason given"}:
        return f"{len(queued)} queued"
    return f"{len(queued)} queued: " + ", ".join(f"{k} {r}" for r, k in reasons.most_common())


def _sweep_eta(cells: list[dict], running: list[dict], queued: list[dict]) -> float | None:
    """Seconds until the running and queued cells are trained: the longest running ETA, or all
    remaining env steps over the summed throughput of the running cells (same concurrency), if longer."""
    etas = [c["eta_s"] for c in running if c.get("eta_s") is not None]
    rate = sum(float(c.get("steps_per_s") or 0.0) for c in running)
    known = [int(c["total_steps"]) for c in cells if c.get("total_steps")]
    remaining = 0.0
    for c, started in [(c, True) for c in running] + [(c, False) for c in queued]:
        total = c.get("total_steps") or (max(known) if known else None)
        if total is None:
            return max(etas) if etas else None
        remaining += max(0, int(total) - int(c.get("env_step") or 0)) if started else int(total)
    pooled = remaining / rate if rate > 0 else None
    cands = [x for x in (max(etas) if etas else None, pooled) if x is not None]
    return max(cands) if cands else None


def _short_why(c: dict) -> str:
    """The cause recorded for the cell; for a lost cell nobody classified yet, what observation saw."""
    if c.get("cause"):
        return str(c["cause"])
    if c["phase"] == "lost" and c.get("detail"):
        return str(c["detail"])
    return str(c.get("state_phase") or "?")


def verdict(cells: list[dict]) -> str:
    """The one line on top (see module doc). Pure over the cell dicts of `collect`."""
    n = len(cells)
    if n == 0:
        return "EMPTY: no cells in this store (no sweep manifest, no run directory)"
    done = sum(c["phase"] == "done" for c in cells)
    if done == n:
        return f"DONE {n}/{n}"
    by = {p: [c for c in cells if c["phase"] == p] for p in ("running", "stalled", "failed", "lost")}
    queued = [c for c in cells if _queued(c)]
    never = [c for c in cells if _never_run(c) and c not in queued]
    unfinished = [c for c in cells if c["phase"] == "pending" and c not in never and c not in queued]
    if by["stalled"]:
        first = by["stalled"][0]
        line = (f"STALLED {len(by['stalled'])}: {first['config']} seed {first['seed']}, no progress for "
                f"{format_duration(first.get('progress_age_s'))} ({_alive_text(first)})")
        if len(by["stalled"]) > 1:
            line += f"; also {_labels(by['stalled'][1:])}"
        return line
    extras = []
    for name, group in (("failed", by["failed"]), ("lost", by["lost"]), ("not started", never),
                        ("unfinished", unfinished)):
        if group:
            extras.append(f"{len(group)} {name}")
    if by["running"] or queued:
        eta_s = _sweep_eta(cells, by["running"], queued)
        eta = f"ETA {format_duration(eta_s)}" if eta_s is not None else "ETA unknown"
        parts = [eta, f"{len(by['running'])} running"] + ([queued_text(queued)] if queued else []) + extras
        return f"RUNNING {done}/{n} ({'; '.join(parts)})"
    parts = []
    if never:
        parts.append(f"{len(never)} cell{'s' if len(never) > 1 else ''} never run: {_labels(never)}")
    for name, group in (("failed", by["failed"]), ("lost", by["lost"]), ("unfinished", unfinished)):
        if group:
            why = "; ".join(f"{c['config']} seed {c['seed']} ({_short_why(c)})"
                            for c in group[:5]) + (" ..." if len(group) > 5 else "")
            parts.append(f"{len(group)} {name}: {why}")
    return f"INCOMPLETE: {'; '.join(parts)}"


# ----------------------------------------------------------------------------- collect


def collect(store_root: str | Path, *, stall_after: float | None = None, now: float | None = None,
            job_state: Callable[[str], str | None] | None = None, per_gpu_hour: float | None = None,
            currency: str | None = None, sample_cpu: bool = True) -> dict[str, Any]:
    """The status document of a store (what `--json` prints). Reads only; raises StatusError when
    `store_root` is not a store."""
    root = Path(store_root).expanduser()
    if root.exists() and not root.is_dir():
        raise StatusError(f"{root}: is a file, not a store directory. Fix: pass the directory given as "
                          f"store.root when the sweep was launched.")
    if not root.is_dir():
        raise StatusError(f"{root}: no such store directory. Fix: pass the store.root of your sweep "
                          f"(e.g. `safedreamer-sweep status experiments`), or launch a sweep first.")
    store = Store(root)
    if not store.runs_dir.is_dir() and not store.sweeps_dir.is_dir():
        raise StatusError(f"{store.root}: not a safedreamer-sweep store (no runs/ and no sweeps/ inside). "
                          f"Fix: pass the directory given as store.root when the sweep was launched.")
    t = time.time() if now is None else now
    stall = float(stall_after) if stall_after is not None else _stall_after_from(store)
    if job_state is None and _slurm_backend(store):
        job_state = slurm_job_state()
    views = observe_store(store, stall_after=stall, now=t, job_state=job_state)
    cm_rate, cm_cur = _cost_settings(store)
    cost = store_cost(store, per_gpu_hour=per_gpu_hour if per_gpu_hour is not None else cm_rate,
                      currency=currency or cm_cur, now=t)
    cells = []
    for v in views:
        d = v.to_dict()
        d["last_outcome"] = _last_outcome(v.run_dir)
        d["claimed_by"] = _live_claim(v.run_dir, stall, job_state) if v.phase == "pending" else None
        d["other_identities"] = _other_identities(store, v)
        c = cost["cells"].get(f"{v.config}/seed_{v.seed}")
        d["cost"] = None if c is None else {k: c[k] for k in ("device", "useful_h", "wasted_h", "pending_h", "total_h")}
        cells.append(d)
    if sample_cpu:
        _process_evidence(cells)
    else:
        for d in cells:
            d.setdefault("proc_status", None)
            d.setdefault("cpu_percent", None)
    counts = {p: sum(c["phase"] == p for c in cells) for p in ("pending", "running", "stalled", "done", "failed", "lost")}
    return {
        "schema": SCHEMA,
        "store": str(store.root),
        "generated_at": t,
        "stall_after_s": stall,
        "verdict": verdict(cells),
        "all_done": bool(cells) and counts["done"] == len(cells),
        "counts": {"cells": len(cells), **counts},
        "cells": cells,
        "cost": {"total": cost["total"], "configs": cost["configs"], "money": cost["money"]},
        # nodes that ended an attempt with a node fault: the node, its first evidence, the cells it cost
        "bad_nodes": bad_nodes_of_store(store),
    }


def exit_code(doc: dict) -> int:
    """0 when every cell is done, 1 otherwise."""
    return 0 if doc.get("all_done") else 1


# ----------------------------------------------------------------------------- render

_PHASE_STYLE = {"done": "green", "running": "cyan", "pending": "dim", "stalled": "bold yellow",
                "failed": "bold red", "lost": "bold magenta"}


def _verdict_style(v: str) -> str:
    return ("bold green" if v.startswith("DONE") else "bold cyan" if v.startswith("RUNNING")
            else "bold yellow" if v.startswith("STALLED") else "bold red")


def _eval_text(summary: dict | None) -> str:
    if not summary:
        return "-"
    r, c = summary.get("return_mean"), summary.get("cost_mean")
    fmt = (lambda x: f"{x:.1f}" if isinstance(x, (int, float)) else "?")
    return f"R {fmt(r)} C {fmt(c)}"


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


def render(doc: dict):
    """A rich renderable: verdict, config x seed matrix, per-cell evidence, device-hours."""
    from rich.console import Group
    from rich.text import Text

    cells = doc["cells"]
    # An app's cells (done = its task function returned) have no ID / OOD results and count steps of
    # their own heartbeat, not env steps.
    evals = any(c.get("done_when") != "return" for c in cells)
    parts: list[Any] = [Text(doc["verdict"], style=_verdict_style(doc["verdict"])),
                        Text(f"store {doc['store']}  ·  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc['generated_at']))}"
                             f"  ·  stalled after {format_duration(doc['stall_after_s'])} without "
                             f"{'env-step' if evals else 'heartbeat'} progress",
                             style="dim")]
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
            label = "queued" if _queued(c) else c["phase"]
            if c["phase"] in ("running", "stalled") and c.get("env_step") is not None and c.get("total_steps"):
                label += f" {100 * c['env_step'] / c['total_steps']:.0f}%"
            row.append(Text(label, style=_PHASE_STYLE.get(c["phase"], "")))
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
            Text("queued" if _queued(c) else c["phase"], style=_PHASE_STYLE.get(c["phase"], "")),
            _step_text(c),
            f"{sps:.0f}" if isinstance(sps, (int, float)) else "-",
            format_duration(c["eta_s"]) if c.get("eta_s") is not None and c["phase"] == "running" else "-",
            format_duration(c["progress_age_s"]) if c.get("progress_age_s") is not None and c["phase"] != "done" else "-",
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
                      "pending: cell not finished yet", caption_justify="left")
    for col in ("scope", "device", "useful", "wasted", "pending", "total"):
        t.add_column(col, justify="right" if col not in ("scope", "device") else "left")
    hours = ("useful_h", "wasted_h", "pending_h", "total_h")
    for cfg, devs in cost["configs"].items():
        for dev, b in devs.items():
            t.add_row(cfg, _dev(dev), *(format_hours(b[k]) for k in hours))
    for dev, b in cost["total"].items():
        t.add_row(Text("total", style="bold"), _dev(dev), *(format_hours(b[k]) for k in hours))
    money = cost.get("money")
    if money:
        cur = money.get("currency") or ""
        t.add_row(Text("money", style="bold"), f"@{money['per_gpu_hour']:g} {cur}/GPU-h",
                  *(f"{money[k]:.2f} {cur}" for k in ("useful", "wasted", "pending", "total")))
    return t


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


def render_cell(hist: dict[str, Any]):
    """Attempt by attempt: when, where, outcome, cause with evidence, hours and their class, the
    traceback tail of the newest failure, and where the logs are."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c = hist["cell"]
    head = Text(f"{c['config']} seed {c['seed']} [{c.get('hash')}]: {c['phase']}", style=_PHASE_STYLE.get(c["phase"], ""))
    parts: list[Any] = [head, Text(f"run dir {c.get('run_dir') or '(none: never run)'}", style="dim")]
    t = Table(title="attempts", title_justify="left")
    for col in ("n", "outcome", "started", "ended", "where", "resources", "device-h", "class", "cause / evidence"):
        t.add_column(col, overflow="fold")
    fmt = (lambda x: time.strftime("%m-%d %H:%M:%S", time.localtime(x)) if x else "-")
    for a in hist["attempts"]:
        cost = a.get("cost") or {}
        res = a.get("resources") or {}
        bits = (a.get("host"), a.get("node"), f"job {a['job_id']}" if a.get("job_id") else None,
                f"pid {a['pid']}" if a.get("pid") else None)
        where = " ".join(str(x) for x in dict.fromkeys(bits) if x)
        t.add_row(str(a.get("n")), str(a.get("outcome")), fmt(a.get("started_at")), fmt(a.get("ended_at")), where or "-",
                  ", ".join(f"{k}={v}" for k, v in res.items() if v not in (None, {}, [], "")) or "-",
                  format_hours(cost["hours"]) if cost else "-", str(cost.get("class", "-")),
                  f"{a.get('cause')}: {a.get('evidence') or ''}" if a.get("cause") else "")
    parts.append(t)
    tails = [a for a in hist["attempts"] if a.get("traceback_tail")]
    if tails:
        parts.append(Text(f"traceback tail of attempt {tails[-1].get('n')}:", style="bold red"))
        parts.append(Text(tails[-1]["traceback_tail"].rstrip()[-2000:]))
    if hist["logs"]:
        parts.append(Text("logs: " + "  ".join(hist["logs"]), style="dim"))
    return Group(*parts)


def _dev(dev: str) -> str:
    return "GPU-h" if dev == "gpu" else "CPU-core-h"
