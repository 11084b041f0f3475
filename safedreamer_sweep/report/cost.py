"""What the compute bought: device-hours per attempt, cell, config and sweep, split into useful and
wasted work, and money when `cost.per_gpu_hour` is set.

Every attempt in state.json records `started_at`, `ended_at` and the `resources` it held
({gpus, cpus, mem_gb}). An attempt's device-hours are its wall hours times the devices it held:
GPU-hours if it held GPUs, else CPU-core-hours (the two are never added together).

Useful work is the chain of attempts that led to a finished cell: the final successful attempt and,
walking back, the attempts whose checkpoints it resumed from. Everything else is wasted: failed work
nobody resumed from, attempts that ran at the same time as the chain (duplicates), attempts after
the cell was already done, and work redone because an attempt restarted from scratch or from an
older checkpoint. Work on a cell that has not finished yet is `pending`: its fate is still open.
Work on a cell its study's pruner stopped (phase `pruned`) is `pruned`, a bucket of its own: the
chain of attempts that led to the pruned attempt (walked back as for a finished cell) bought the
evidence the pruner acted on, so it is neither useful nor wasted; what is left over (failed work
nobody resumed from) is wasted. A pruned cell promoted later and finished makes its pruned attempt
part of the useful chain. "What pruning saved" compares the pruned hours with the finished ones.

When attempts carry `start_step` (the env step they resumed from, 0 = from scratch) and `end_step`
(the last env step they reached), the split is exact down to the redone steps; without them every
earlier attempt that ended before the next one started is assumed resumed from (the cell task
always resumes from the newest checkpoint).

An attempt nobody closed (the process died with no end marker) is billed until its last heartbeat
(progress.json from the same pid), not until now; a SIGSTOPped process is therefore under-billed by
its stall until the supervisor kills it and closes the attempt.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from typing import Any

# Attempts that never started (queued, cancelled before start) held nothing.
_NOT_STARTED = ("submitted",)
# Slack when deciding whether one attempt ended before the next began (clock granularity, NFS).
_OVERLAP_SLACK_S = 1.0


def _attempt_device(attempt: Mapping[str, Any]) -> tuple[str, float]:
    """('gpu', n) if the attempt held GPUs (a packed cell 1/runs_per_gpu of one), else ('cpu', cores);
    1 CPU core when nothing was recorded."""
    res = attempt.get("resources") or {}
    gpus = float(res.get("gpus") or 0)
    if gpus > 0:
        return "gpu", gpus
    return "cpu", max(1, int(res.get("cpus") or 1))


def _interval(attempt: Mapping[str, Any], now: float) -> tuple[float, float] | None:
    start = attempt.get("started_at")
    if start is None or attempt.get("outcome") in _NOT_STARTED:
        return None
    end = attempt.get("ended_at")
    if end is None:  # still open: it holds its resources until now (or until it was last seen alive)
        end = min(now, float(attempt.get("last_seen_at") or now))
    return float(start), max(float(start), float(end))


def _with_last_seen(state: Mapping[str, Any], progress: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Mark the open attempt with its last heartbeat, so a process that died without closing its
    attempt is not billed until now. Only a heartbeat from that attempt's own pid counts."""
    attempts = list(state.get("attempts") or [])
    if not progress or not attempts or attempts[-1].get("ended_at") is not None:
        return state
    last = attempts[-1]
    seen = progress.get("updated_at")
    if seen and last.get("pid") and progress.get("pid") == last.get("pid") \
            and float(seen) >= float(last.get("started_at") or 0):
        attempts[-1] = {**last, "last_seen_at": float(seen)}
        return {**state, "attempts": attempts}
    return state


def attempt_hours(attempt: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """{'device': 'gpu'|'cpu', 'units': n, 'wall_h': h, 'hours': device-hours, 'open': bool}."""
    now = time.time() if now is None else now
    device, units = _attempt_device(attempt)
    iv = _interval(attempt, now)
    wall = (iv[1] - iv[0]) / 3600.0 if iv else 0.0
    return {"device": device, "units": units, "wall_h": wall, "hours": wall * units,
            "open": iv is not None and attempt.get("ended_at") is None}


def _finished(state: Mapping[str, Any]) -> bool:
    return state.get("phase") == "done"


def _pruned(state: Mapping[str, Any]) -> bool:
    """Stopped by its study's pruner: phase `pruned`, or its newest attempt closed as pruned."""
    attempts = state.get("attempts") or []
    return state.get("phase") == "pruned" or bool(attempts and attempts[-1].get("outcome") == "pruned")


def _useful_fractions(attempts: list[Mapping[str, Any]], now: float, outcome: str = "done") -> dict[int, float]:
    """Index -> fraction of that attempt's hours that the finished cell used (missing index = 0); with
    outcome `pruned`, that the pruned attempt's chain used."""
    # The first attempt that finished the cell; any later one (even ending `done`) was redundant. A
    # pruned cell: its newest pruned attempt (a cell pruned, resumed and pruned again ends there).
    ends = [i for i, a in enumerate(attempts) if a.get("outcome") == outcome]
    final = (min(ends) if outcome == "done" else max(ends)) if ends else None
    if final is None:
        return {}
    useful = {final: 1.0}
    cur = final
    while True:
        cur_iv = _interval(attempts[cur], now)
        need = attempts[cur].get("start_step")
        if cur_iv is None or (need is not None and int(need) <= 0):
            break  # started from scratch: nothing earlier was used
        # The predecessor: the latest attempt that had ended before this one started.
        prev = None
        for j in range(cur - 1, -1, -1):
            iv = _interval(attempts[j], now)
            if iv is not None and iv[1] <= cur_iv[0] + _OVERLAP_SLACK_S:
                prev = j
                break
        if prev is None:
            break
        a = attempts[prev]
        frac = 1.0
        s0, s1 = a.get("start_step"), a.get("end_step")
        if need is not None and s0 is not None and s1 is not None and int(s1) > int(s0):
            # Only the steps the next attempt resumed from were used; the rest was redone.
            frac = min(1.0, max(0.0, (int(need) - int(s0)) / (int(s1) - int(s0))))
        useful[prev] = frac
        cur = prev
    return useful


_BUCKETS = ("useful_h", "wasted_h", "pending_h", "pruned_h")


def _empty() -> dict[str, float]:
    return dict.fromkeys(_BUCKETS, 0.0)


def _split(bucket: dict[str, float], hours: float, frac: float, kept: str) -> str:
    """Book `hours` as `kept` (useful or pruned) for `frac` of them and wasted for the rest; the class."""
    bucket[f"{kept}_h"] += hours * frac
    bucket["wasted_h"] += hours * (1.0 - frac)
    return kept if frac >= 1.0 else "wasted" if frac <= 0.0 else f"{kept} {frac:.0%}"


def cell_cost(state: Mapping[str, Any], now: float | None = None,
              progress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Device-hours of one cell from its state.json (and progress.json: an attempt still open is
    billed until its last heartbeat, since a dead process holds nothing).

    Returns {'useful_h', 'wasted_h', 'pending_h', 'pruned_h', 'total_h', 'device', 'by_device': {dev:
    {...}}, 'attempts': [{'n', 'device', 'hours', 'class'}]} where the top-level hours are in the cell's
    main device (GPU if any attempt held a GPU) and `by_device` keeps GPU- and CPU-hours apart.
    """
    now = time.time() if now is None else now
    state = _with_last_seen(state, progress)
    attempts = list(state.get("attempts") or [])
    finished = _finished(state)
    pruned = not finished and _pruned(state)
    fractions = _useful_fractions(attempts, now, "done" if finished else "pruned") if finished or pruned else {}
    by_device: dict[str, dict[str, float]] = {}
    rows = []
    for i, a in enumerate(attempts):
        h = attempt_hours(a, now)
        bucket = by_device.setdefault(h["device"], _empty())
        if finished:
            cls = _split(bucket, h["hours"], fractions.get(i, 0.0), "useful")
        elif pruned and not h["open"]:
            cls = _split(bucket, h["hours"], fractions.get(i, 0.0), "pruned")
        elif state.get("phase") == "failed" and not h["open"]:
            bucket["wasted_h"] += h["hours"]  # a terminally failed cell bought nothing (yet)
            cls = "wasted"
        else:
            bucket["pending_h"] += h["hours"]
            cls = "pending"
        rows.append({"n": a.get("n", i + 1), "device": h["device"], "hours": h["hours"], "class": cls,
                     "outcome": a.get("outcome"), "cause": a.get("cause")})
    device = "gpu" if "gpu" in by_device else "cpu"
    main = by_device.get(device, _empty())
    for b in by_device.values():
        b["total_h"] = sum(b[k] for k in _BUCKETS)
    return {"device": device, **{k: main[k] for k in _BUCKETS}, "total_h": sum(main[k] for k in _BUCKETS),
            "by_device": by_device, "attempts": rows}


def _add(into: dict[str, dict[str, float]], by_device: Mapping[str, Mapping[str, float]]) -> None:
    for dev, b in by_device.items():
        tgt = into.setdefault(dev, {**_empty(), "total_h": 0.0})
        for k in (*_BUCKETS, "total_h"):
            tgt[k] += float(b.get(k, 0.0))


def _seed(seed: Any) -> int | None:
    """A cell's seed; None for an app without one."""
    return None if seed is None else int(seed)


def cell_key(config: str, seed: int | None, hash8: str | None = None) -> str:
    """A cell's key in sweep_cost's `cells`: `<config>/seed_<seed>` (every identity of a seeded cell
    is that one cell), or `<config>/<hash8>` for an app without a seed, whose every hash is a cell
    of its own (runs/<config>/<hash8>, as Store.expected_cells counts it)."""
    if seed is None and hash8 is not None:
        return f"{config}/{hash8}"
    return f"{config}/seed_{seed}"


def _cells(states: Any) -> Iterable[tuple[str, int | None, str | None, Mapping]]:
    """(config, seed, hash or None, state) of each cell of sweep_cost's `states`."""
    if isinstance(states, Mapping):
        for (config, seed), st in states.items():
            yield str(config), _seed(seed), None, st
        return
    for item in states:
        if isinstance(item, Mapping):
            yield str(item["config"]), _seed(item["seed"]), item.get("hash"), item["state"]
        elif len(item) == 4:
            config, seed, hash8, st = item
            yield str(config), _seed(seed), hash8, st
        else:
            config, seed, st = item
            yield str(config), _seed(seed), None, st


def sweep_cost(states, per_gpu_hour: float | None = None, currency: str | None = None,
               now: float | None = None) -> dict[str, Any]:
    """Cost of a sweep. `states`: {(config, seed): state} or an iterable of (config, seed, state),
    (config, seed, hash, state) or {'config', 'seed', 'state'} (and optionally 'hash'): a seedless
    cell is told apart from another of its config by its hash.

    Returns {'cells': {cell_key: cell_cost}, 'configs': {config: {dev: hours}},
    'total': {dev: {'useful_h', 'wasted_h', 'pending_h', 'pruned_h', 'total_h'}}, 'money': None or
    {'per_gpu_hour', 'currency', 'useful', 'wasted', 'pending', 'pruned', 'total'}}. Money prices GPU-hours
    only: CPU-core-hours are reported, never priced.
    """
    now = time.time() if now is None else now
    cells: dict[str, dict] = {}
    configs: dict[str, dict[str, dict[str, float]]] = {}
    total: dict[str, dict[str, float]] = {}
    for config, seed, hash8, st in _cells(states):
        c = cell_cost(st, now)
        cells[cell_key(config, seed, hash8)] = c
        _add(configs.setdefault(config, {}), c["by_device"])
        _add(total, c["by_device"])
    money = None
    if per_gpu_hour is not None:
        gpu = total.get("gpu", {})
        money = {"per_gpu_hour": float(per_gpu_hour), "currency": currency,
                 **{k: float(per_gpu_hour) * gpu.get(f"{k}_h", 0.0) for k in ("useful", "wasted", "pending", "pruned", "total")}}
    return {"cells": cells, "configs": configs, "total": total, "money": money}


def queue_wait(states) -> dict[str, Any]:
    """Time attempts waited from their submission to their start (a scheduler's queue, a busy slot's
    worker): wall time, not device-hours, since a waiting job holds nothing. `states` as sweep_cost's.
    Returns {'attempts', 'total_h', 'median_s', 'max_s', 'max_cell'}; attempts that never started
    (or record no submission) are not counted."""
    waits: list[tuple[float, str]] = []
    for config, seed, hash8, st in _cells(states):
        for a in st.get("attempts") or []:
            sub, start = a.get("submitted_at"), a.get("started_at")
            if isinstance(sub, (int, float)) and isinstance(start, (int, float)) and start >= sub:
                waits.append((float(start) - float(sub), f"{cell_key(config, seed, hash8)} attempt {a.get('n', '?')}"))
    if not waits:
        return {"attempts": 0, "total_h": 0.0, "median_s": None, "max_s": None, "max_cell": None}
    secs = [w for w, _ in waits]
    longest = max(waits)
    return {"attempts": len(secs), "total_h": sum(secs) / 3600.0, "median_s": statistics.median(secs),
            "max_s": longest[0], "max_cell": longest[1]}


def store_cost(store, per_gpu_hour: float | None = None, currency: str | None = None,
               now: float | None = None) -> dict[str, Any]:
    """`sweep_cost` over every run directory of a `Store` (all identities of a cell are counted:
    an abandoned identity's hours were spent too). A run directory whose spec or state is corrupt
    is left out (its hours cannot be known)."""
    from safedreamer_sweep.core.files import StoreError

    items = []
    for rd in store.iter_runs():
        try:
            spec = rd.read_spec() or {}
            state = _with_last_seen(rd.read_state(), rd.read_progress())
        except StoreError:  # a corrupt file: status shows it as `corrupt`; its hours are unknown
            continue
        items.append((spec.get("config", rd.path.parent.parent.name), _seed(spec.get("seed", -1)),
                      spec.get("hash", rd.path.name), state))
    # Several identities of one cell (cell_key) are merged by summing their attempts' hours.
    merged: dict[str, tuple[str, int | None, str | None, dict]] = {}
    for config, seed, hash8, st in items:
        key = cell_key(config, seed, hash8)
        if key not in merged:
            merged[key] = (config, seed, hash8, dict(st))
        else:  # keep the done identity's classification, add the other's attempts as wasted
            a, b = merged[key][3], st
            done, other = (a, b) if a.get("phase") == "done" else (b, a)
            extra = [{**x, "outcome": x.get("outcome") if x.get("outcome") != "done" else "superseded"}
                     for x in other.get("attempts", [])]
            merged[key] = (config, seed, hash8, {**done, "attempts": list(done.get("attempts", [])) + extra})
    return sweep_cost(merged.values(), per_gpu_hour=per_gpu_hour, currency=currency, now=now)
