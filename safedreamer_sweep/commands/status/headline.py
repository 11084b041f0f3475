"""The headline: the one line on top of `status`, a pure function of the status document's cells.

    DONE 20/20
    DONE 18/24, 6 pruned (study lr-search)
    RUNNING 12/20 (ETA 14 min; 6 running; 2 queued)
    STALLED 1: v2_full seed 3, no progress for 14 min (pid 1234 alive, stopped (SIGSTOP), 0% CPU)
    INCOMPLETE: 3 cells never run: v2_full seeds 2 3, v2_u_only seed 1; 1 failed: v2_full seed 4 (error)

A cell its study's pruner stopped (phase `pruned`) is neither done nor failed: the line counts it apart,
with the studies that pruned it, and never claims DONE n/n while one is pruned.

It is the `verdict` key of the `--json` document (docs/status-json.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from safedreamer_sweep.core.durations import format_duration
from safedreamer_sweep.core.run_dir import host


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


def is_queued(c: dict) -> bool:
    """Waiting to run: submitted and not started yet, or claimed by a live sweep that has not
    submitted it yet (a free slot, an array throttle)."""
    return c["phase"] == "pending" and (c.get("last_outcome") == "submitted" or bool(c.get("claimed_by")))


def _queued_text(queued: list[dict]) -> str:
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


def _pruned_text(pruned: list[dict]) -> str:
    """`6 pruned (study lr-search)`: how many cells their study's pruner stopped, and which studies."""
    studies = sorted({str((c.get("pruned_by") or {}).get("study")) for c in pruned
                      if (c.get("pruned_by") or {}).get("study") is not None})
    named = f" (stud{'ies' if len(studies) > 1 else 'y'} {', '.join(studies)})" if studies else ""
    return f"{len(pruned)} pruned{named}"


def _stalled_line(stalled: list[dict]) -> str:
    first = stalled[0]
    line = (f"STALLED {len(stalled)}: {first['config']} seed {first['seed']}, no progress for "
            f"{format_duration(first.get('progress_age_s'))} ({_alive_text(first)})")
    if len(stalled) > 1:
        line += f"; also {_labels(stalled[1:])}"
    return line


def headline(cells: list[dict]) -> str:
    """The one line on top (see module doc). Pure over the cell dicts of `collect`."""
    n = len(cells)
    if n == 0:
        return "EMPTY: no cells in this store (no sweep manifest, no run directory)"
    done = sum(c["phase"] == "done" for c in cells)
    by = {p: [c for c in cells if c["phase"] == p] for p in ("running", "stalled", "failed", "lost", "pruned")}
    if done + len(by["pruned"]) == n:
        return f"DONE {n}/{n}" if done == n else f"DONE {done}/{n}, {_pruned_text(by['pruned'])}"
    queued = [c for c in cells if is_queued(c)]
    never = [c for c in cells if _never_run(c) and c not in queued]
    unfinished = [c for c in cells if c["phase"] == "pending" and c not in never and c not in queued]
    if by["stalled"]:
        return _stalled_line(by["stalled"])
    extras = []
    for name, group in (("failed", by["failed"]), ("lost", by["lost"]), ("not started", never),
                        ("unfinished", unfinished)):
        if group:
            extras.append(f"{len(group)} {name}")
    if by["pruned"]:
        extras.append(_pruned_text(by["pruned"]))
    if by["running"] or queued:
        eta_s = _sweep_eta(cells, by["running"], queued)
        eta = f"ETA {format_duration(eta_s)}" if eta_s is not None else "ETA unknown"
        parts = [eta, f"{len(by['running'])} running"] + ([_queued_text(queued)] if queued else []) + extras
        return f"RUNNING {done}/{n} ({'; '.join(parts)})"
    parts = []
    if never:
        parts.append(f"{len(never)} cell{'s' if len(never) > 1 else ''} never run: {_labels(never)}")
    for name, group in (("failed", by["failed"]), ("lost", by["lost"]), ("unfinished", unfinished)):
        if group:
            why = "; ".join(f"{c['config']} seed {c['seed']} ({_short_why(c)})"
                            for c in group[:5]) + (" ..." if len(group) > 5 else "")
            parts.append(f"{len(group)} {name}: {why}")
    if by["pruned"]:
        parts.append(_pruned_text(by["pruned"]))
    return f"INCOMPLETE: {'; '.join(parts)}"


def _value(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


def study_line(s: dict) -> str:
    """`study lr-search: 8/12 trials (6 done, 1 pruned, 1 running); best feasible 12.3 (trial 7,
    agent.lr=0.003)`, from one entry of the document's `studies` (report/study.py StudyView.to_dict)."""
    if s.get("error") and not s.get("trials"):
        return f"study {s['name']}: not readable: {s['error']}"
    counts = [f"{s['complete']} done", f"{s['pruned']} pruned"] + [
        f"{s[k]} {k}" for k in ("failed", "running") if s[k] or k == "running"]
    total = f"{s['trials']}/{s['n_trials']}" if s.get("n_trials") else str(s["trials"])
    line = f"study {s['name']}: {total} trials ({', '.join(counts)})"
    b = s.get("best")
    if b is None:
        return line + ("; no feasible trial yet" if s["complete"] else "")
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (b.get("params") or {}).items())
    what = "best feasible" if len(s.get("directions") or []) < 2 else f"feasible front of {len(s.get('front') or [])}, best"
    return line + f"; {what} {_value(b.get('value'))} (trial {b['number']}{', ' + params if params else ''})"
