"""The chaos campaign (issue 7): a real sweep while a driver injects faults, then an audit of the
store. Runs on the local launcher and on the real Slurm.

    nice .venv/bin/python bench/chaos.py [--backend local|slurm|both] [--cells 8] [--kills 3] [--seed 0]

What the driver does, on the real launcher, cell task and trainer (tiny budgets):
  - launches the SAME sweep twice at once (two `python -m safedreamer_sweep -m ...` processes);
  - SIGKILLs `--kills` training processes at random env steps;
  - SIGSTOPs one (the supervisor must see the stall and kill it);
  - makes one exceed its memory limit: on Slurm a one-cell sweep with hydra.launcher.mem_gb=0.2
    (Slurm's OverMemoryKill ends it), locally by lowering RLIMIT_AS of the live training process to
    its current size with prlimit (the local launcher has no memory setting of its own);
  - kills one cell and truncates its newest checkpoint before the retry resumes;
  - fills the disk under a scratch store: a 64 MB ext4 image loop-mounted (needs root; otherwise this
    fault is reported as not run) holding a one-cell sweep, filled while the cell trains, then freed
    and the sweep launched again.
Then it audits the store and prints: cells completed / N, duplicated completions (attempts ending
`done` more than once per cell, training runs that started from step 0 twice, attempts of one cell
overlapping in time), eval rows lost (periodic eval rows missing or duplicated, final eval episodes
missing), lost work per fault in env steps (env step at the fault vs the step the next attempt
resumed from, read from the attempt log line "resuming ... from checkpoint step N"), and every fault
with the cause and evidence state.json recorded. A violated guarantee is printed as VIOLATED.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safedreamer_sweep.core.files import StoreError, read_jsonl
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store

RESUME_RE = re.compile(r"resuming \S+ from checkpoint step (\d+)")
START_RE = re.compile(r"^\[train\] \S+ x\d+, (\d+) env steps", re.MULTILINE)
STEP_RE = re.compile(r"^\[train\] step (\d+)/", re.MULTILINE)


def logged_steps(text: str) -> int:
    """The furthest training step an attempt's log shows."""
    return max([int(x) for x in STEP_RE.findall(text)] or [0])


@dataclass
class Budget:
    """Per-cell budget (env steps): small, so a campaign takes minutes on 2 cores."""

    total_steps: int = 6144
    rollout_steps: int = 512
    checkpoint_every_steps: int = 1024
    log_every_steps: int = 512
    eval_every_steps: int = 2048
    eval_episodes: int = 1

    def overrides(self) -> list[str]:
        return [f"trainer.total_steps={self.total_steps}", "trainer.num_envs=1",
                f"trainer.rollout_steps={self.rollout_steps}",
                f"trainer.checkpoint_every_steps={self.checkpoint_every_steps}",
                f"trainer.log_every_steps={self.log_every_steps}", f"trainer.eval_every_steps={self.eval_every_steps}",
                "trainer.heartbeat_every_s=0.5", f"eval.episodes={self.eval_episodes}"]


@dataclass
class Fault:
    kind: str                 # kill | stop | oom | corrupt | enospc | twice
    cell: str                 # config/seed_N
    pid: int | None = None
    attempt: int | None = None
    at: float = 0.0
    env_step: int | None = None        # env step the cell had reached when the fault hit
    detail: str = ""
    resumed_from: int | None = None
    lost_steps: int | None = None
    bound: int | None = None           # the most work this fault may lose (env steps)
    cause: str | None = None
    evidence: str | None = None


def launcher_overrides(backend: str, stall_after: float, extra: list[str] | None = None) -> list[str]:
    common = ["hydra.launcher.poll_s=1", f"hydra.launcher.stall_after={stall_after}", "hydra.launcher.max_attempts=6"]
    if backend == "local":
        return ["hydra/launcher=sds_local", "hydra.launcher.max_parallel=2", *common, *(extra or [])]
    return ["hydra/launcher=sds_slurm", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30",
            "hydra.launcher.array_parallelism=2", *common, *(extra or [])]


def launch(store: Path, seeds: list[int], backend: str, budget: Budget, log_path: Path, stall_after: float,
           extra: list[str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline",
            "seed=" + ",".join(map(str, seeds)), f"store.root={store}", *budget.overrides(),
            *launcher_overrides(backend, stall_after, extra)]
    f = open(log_path, "a")  # noqa: SIM115 (the sweep process writes to it; closed when it exits)
    f.write("$ " + " ".join(argv) + "\n")
    f.flush()
    return subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)


def cell_name(rd: RunDir) -> str:
    return f"{rd.path.parts[-3]}/{rd.path.parts[-2]}"


def live_attempt(rd: RunDir) -> dict | None:
    """The newest attempt if a training process runs it on this host right now."""
    try:
        st = rd.read_state()
    except (StoreError, OSError):  # mid-fault reads may fail: not running as far as we can tell
        return None
    a = (st.get("attempts") or [{}])[-1]
    if a.get("outcome") != "running" or not a.get("pid") or st.get("phase") != "running":
        return None
    try:
        os.kill(int(a["pid"]), 0)
    except (ProcessLookupError, PermissionError):
        return None
    return a


def reached_step(rd: RunDir) -> int:
    """The furthest env step the cell is known to have reached (heartbeat or curve)."""
    steps = [0]
    with contextlib.suppress(StoreError, OSError, ValueError):
        steps.append(int((rd.read_progress() or {}).get("env_step") or 0))
    rows = read_jsonl(rd.metrics_path)
    if rows:
        steps.append(int(rows[-1].get("env_step", 0)))
    return max(steps)


def wait_gone(pid: int, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)


def lower_address_space(pid: int) -> str:
    """Make the live process exceed a memory limit: RLIMIT_AS set to what it maps right now."""
    status = Path(f"/proc/{pid}/status").read_text()
    vm = int(re.search(r"VmSize:\s+(\d+)", status).group(1)) * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (vm, vm))
    return f"RLIMIT_AS of pid {pid} lowered to its current size {vm / 2**20:.0f} MiB (prlimit)"


# ----------------------------------------------------------------------------- the driver


def drive(store: Path, procs: list[subprocess.Popen], plan: list[str], budget: Budget, rng: random.Random,
          deadline: float, log, allowed: set[str] | None = None) -> list[Fault]:
    """Inject the planned faults into running cells of `store` while `procs` run. One fault per cell
    (so each outcome is attributable), each at a random env step past the first checkpoint."""
    faults: list[Fault] = []
    hit: set[str] = set()
    targets: dict[str, int] = {}
    pending = list(plan)
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if pending:
            for rd in Store(store).iter_runs():
                name = cell_name(rd)
                if name in hit or not pending or (allowed is not None and name not in allowed):
                    continue
                a = live_attempt(rd)
                if a is None:
                    continue
                kind = pending[0]
                lo = budget.checkpoint_every_steps * (2 if kind == "corrupt" else 1)
                hi = max(lo + budget.rollout_steps, int(budget.total_steps * 0.8))
                target = targets.setdefault(name, rng.randrange(lo, hi))
                step = reached_step(rd)
                need_ckpts = 2 if kind == "corrupt" else 1
                if step < target or len(rd.checkpoints()) < need_ckpts:
                    continue
                pid = int(a["pid"])
                f = Fault(kind=kind, cell=name, pid=pid, attempt=a.get("n"), at=time.time(), env_step=step)
                try:
                    if kind == "kill":
                        os.kill(pid, signal.SIGKILL)
                        f.detail = f"SIGKILL pid {pid}"
                    elif kind == "stop":
                        os.kill(pid, signal.SIGSTOP)
                        f.detail = f"SIGSTOP pid {pid}"
                    elif kind == "oom":
                        f.detail = lower_address_space(pid)
                    elif kind == "corrupt":
                        os.kill(pid, signal.SIGKILL)
                        wait_gone(pid)
                        _, ck = rd.checkpoints()[-1]
                        size = ck.stat().st_size
                        with open(ck, "r+b") as fh:
                            fh.truncate(size // 2)
                        f.detail = (f"SIGKILL pid {pid}, then newest checkpoint {ck.name} truncated "
                                    f"{size} -> {size // 2} bytes")
                        f.env_step = max(step, reached_step(rd))
                except ProcessLookupError:
                    continue
                hit.add(name)
                pending.pop(0)
                faults.append(f)
                log(f"[chaos] {kind:<7} {name} at env_step {f.env_step}: {f.detail}")
        time.sleep(0.1)
    for k in pending:
        log(f"[chaos] fault {k} NOT injected: no eligible running cell before the sweep ended")
        faults.append(Fault(kind=k, cell="-", detail="not injected (no eligible running cell)"))
    return faults


# ----------------------------------------------------------------------------- the audit


def attempt_logs(rd: RunDir) -> dict[int, str]:
    out = {}
    for p in sorted(rd.logs_dir.glob("attempt_*.out")) if rd.logs_dir.is_dir() else []:
        out[int(p.stem.split("_")[1])] = p.read_text(errors="replace")
    return out


def audit(store: Path, faults: list[Fault], budget: Budget, expected: list[str]) -> dict:
    """Everything the campaign promises, read back from the store."""
    runs = {cell_name(rd): rd for rd in Store(store).iter_runs()}
    completed, dup_done, scratch_twice, overlaps, eval_lost, curve_dups = [], [], [], [], [], []
    for name in expected:
        rd = runs.get(name)
        if rd is None:
            continue
        st = rd.read_state()
        attempts = st.get("attempts") or []
        if st.get("phase") == "done" and all(rd.evaluated.values()):
            completed.append(name)
        n_done = sum(1 for a in attempts if a.get("outcome") == "done")
        if n_done > 1:
            dup_done.append(f"{name}: {n_done} attempts ended done")
        logs = attempt_logs(rd)
        # a later attempt training from step 0 is a duplicate when an earlier one had passed a checkpoint
        reached = 0
        for n in sorted(logs):
            text = logs[n]
            if reached >= budget.checkpoint_every_steps and START_RE.search(text) and not RESUME_RE.search(text):
                scratch_twice.append(f"{name}: attempt {n} trained from step 0 although an earlier attempt had "
                                     f"reached env_step {reached}")
            reached = max(reached, logged_steps(text))
        spans = sorted((a.get("started_at"), a.get("ended_at") or time.time(), a.get("n")) for a in attempts
                       if a.get("started_at"))
        for (_s1, e1, n1), (s2, _e2, n2) in itertools.pairwise(spans):
            if s2 < e1 - 1.0:  # 1 s: the next attempt may start while the supervisor closes the old one
                overlaps.append(f"{name}: attempt {n2} started {e1 - s2:.1f}s before attempt {n1} ended")
        # eval rows: one periodic eval row per eval_every_steps, none duplicated; final evals complete
        if name in completed:
            rows = [int(r["env_step"]) for r in rd.read_eval_curve()]
            want = list(range(budget.eval_every_steps, budget.total_steps + 1, budget.eval_every_steps))
            missing = sorted(set(want) - set(rows))
            dups = len(rows) - len(set(rows))
            if missing:
                eval_lost.append(f"{name}: periodic eval rows missing at env_step {missing}")
            if dups:
                curve_dups.append(f"{name}: {dups} duplicated eval_curve rows")
            mrows = [int(r["env_step"]) for r in rd.read_metrics()]
            mwant = set(range(budget.log_every_steps, budget.total_steps + 1, budget.log_every_steps))
            if sorted(set(mwant) - set(mrows)) or len(mrows) != len(set(mrows)):
                curve_dups.append(f"{name}: metrics.jsonl gap {sorted(mwant - set(mrows))[:5]} or "
                                  f"{len(mrows) - len(set(mrows))} duplicated rows")
            for kind in ("id", "ood"):
                ev = rd.read_eval(kind) or {}
                got = len(ev.get("episodes") or [])
                if got < budget.eval_episodes:
                    eval_lost.append(f"{name}: eval/{kind}.json has {got} of {budget.eval_episodes} episodes")
    # per fault: classification and lost work
    for f in faults:
        rd = runs.get(f.cell)
        if rd is None or f.attempt is None:
            continue
        attempts = rd.read_state().get("attempts") or []
        a = next((x for x in attempts if x.get("n") == f.attempt), None)
        if a is not None:
            f.cause, f.evidence = a.get("cause"), (a.get("evidence") or "")[:240]
        logs = attempt_logs(rd)
        nxt = logs.get((f.attempt or 0) + 1)
        f.bound = budget.checkpoint_every_steps * (2 if f.kind == "corrupt" else 1)
        if nxt:
            m = RESUME_RE.search(nxt)
            f.resumed_from = int(m.group(1)) if m else (0 if START_RE.search(nxt) else None)
            if f.resumed_from is None:  # the next attempt did not train: the faulted one had finished training
                f.resumed_from = logged_steps(logs.get(f.attempt or 0, ""))
                f.detail += f" (training had finished at step {f.resumed_from}; the next attempt only evaluated)"
            if f.resumed_from is not None and f.env_step is not None:
                f.lost_steps = max(0, f.env_step - f.resumed_from)
    return {"completed": completed, "dup_done": dup_done, "scratch_twice": scratch_twice, "overlaps": overlaps,
            "eval_lost": eval_lost, "curve_problems": curve_dups}


# ----------------------------------------------------------------------------- disk full


def disk_full_fault(work: Path, backend: str, budget: Budget, seed: int, log, deadline: float,
                    hold_s: float = 20.0) -> dict:
    """A one-cell sweep on a 64 MB loop-mounted ext4 store, filled while the cell trains, freed, and
    launched again. Returns what happened (or why it was not run)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return {"ran": False, "how": "not run: a loop mount needs root"}
    img, mnt = work / "disk.img", work / "small_disk"
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={img}", "bs=1M", "count=64", "status=none"], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        return {"ran": False, "how": f"not run: mount -o loop failed ({r.stderr.strip()})"}
    out: dict = {"ran": True, "how": "64 MB ext4 image, loop-mounted (real ENOSPC)"}
    try:
        store = mnt / "store"
        filler = mnt / "filler"
        p = launch(store, [seed], backend, budget, work / f"enospc_{backend}.log", stall_after=60)
        filled_at, filled_t, freed = None, None, False
        while p.poll() is None and time.time() < deadline:
            rds = list(Store(store).iter_runs())
            if filled_at is None and rds and live_attempt(rds[0]) and reached_step(rds[0]) >= budget.checkpoint_every_steps:
                # fill every free byte (ENOSPC for the next write of the cell and of the launcher)
                with open(filler, "wb") as fh:
                    with contextlib.suppress(OSError):
                        while True:
                            fh.write(b"\0" * (1 << 20))
                    with contextlib.suppress(OSError):
                        while True:
                            fh.write(b"\0" * 4096)
                            fh.flush()
                filled_at, filled_t = reached_step(rds[0]), time.time()
                out["filled_at_env_step"] = filled_at
                log(f"[chaos] enospc  {cell_name(rds[0])} at env_step {filled_at}: {mnt} filled "
                    f"({shutil.disk_usage(mnt).free} bytes free)")
            if filled_t is not None and not freed and time.time() - filled_t > hold_s:
                # the disk stayed full for hold_s while the sweep ran; what did it record, is it alive?
                out["launcher_alive_while_full"] = p.poll() is None
                _snapshot_state(store, out)
                filler.unlink(missing_ok=True)
                freed = True
                log(f"[chaos] enospc  space freed after {hold_s:.0f}s; the sweep keeps running")
            time.sleep(0.2)
        if p.poll() is None:
            p.kill()
        out["first_exit"] = p.wait()
        if not freed:
            out["launcher_alive_while_full"] = False
            _snapshot_state(store, out)
        log_text = (work / f"enospc_{backend}.log").read_text(errors="replace")
        out["launcher_crashed"] = "Traceback (most recent call last)" in log_text and "No space left" in log_text
        out["enospc_reported"] = "No space left on device" in log_text
        filler.unlink(missing_ok=True)
        # If the sweep did not finish by itself, launch it again, as the user would (again if it says so).
        out["relaunches"] = 0
        rd = next(iter(Store(store).iter_runs()), None)
        while (out["first_exit"] != 0 or (rd and rd.read_state().get("phase") != "done")) and out["relaunches"] < 3:
            log("[chaos] enospc  launching the same sweep again")
            out["relaunches"] += 1
            p2 = launch(store, [seed], backend, budget, work / f"enospc_{backend}.log", stall_after=60,
                        extra=["++sweep.retry_failed=true"])
            while p2.poll() is None and time.time() < deadline:
                time.sleep(0.5)
            if p2.poll() is None:
                p2.kill()
            if p2.wait() == 0:
                break
            time.sleep(5)
        rd = next(iter(Store(store).iter_runs()), None)
        st = rd.read_state() if rd else {}
        out["final_phase"] = st.get("phase")
        logs = attempt_logs(rd) if rd else {}
        last = logs[max(logs)] if logs else ""
        m = RESUME_RE.search(last)
        out["resumed_from"] = int(m.group(1)) if m else None
        if filled_at is not None and out["resumed_from"] is not None:
            out["lost_steps"] = max(0, filled_at - out["resumed_from"])
        out["corrupt_files"] = corrupt_json(store)
    finally:
        for _ in range(5):  # lazy unmount; checked, since a leftover mount would outlive the campaign
            r = subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, text=True)
            if str(mnt) not in Path("/proc/mounts").read_text():
                break
            log(f"[chaos] umount {mnt}: {r.stderr.strip()}; retrying")
            time.sleep(1)
        out["unmounted"] = str(mnt) not in Path("/proc/mounts").read_text()
    return out


def _snapshot_state(store: Path, out: dict) -> None:
    rd = next(iter(Store(store).iter_runs()), None)
    if rd is None:
        return
    try:
        st = rd.read_state()
        out["state_readable"] = True
        a = (st.get("attempts") or [{}])[-1]
        out["first_phase"], out["cause"], out["evidence"] = st.get("phase"), a.get("cause"), (a.get("evidence") or "")[:240]
    except (StoreError, OSError) as e:  # a torn state.json is exactly what must never happen
        out["state_readable"] = False
        out["state_error"] = str(e)[:240]


def corrupt_json(store: Path) -> list[str]:
    """Every JSON document in the store that does not parse (must be none: writes are atomic)."""
    bad = []
    for p in store.rglob("*.json"):
        try:
            json.loads(p.read_text())
        except (ValueError, OSError):
            bad.append(str(p.relative_to(store)))
    return bad


# ----------------------------------------------------------------------------- one campaign


def run_campaign(backend: str, *, cells: int, kills: int, budget: Budget, work: Path, seed: int = 0,
                 stall_after: float = 30.0, oom: bool = True, corrupt: bool = True, stop: bool = True,
                 enospc: bool = True, timeout_s: float = 1200, log=print) -> dict:
    """Run one campaign on `backend` ("local" | "slurm"); returns the figures (also printed by report())."""
    rng = random.Random(seed)
    store = work / f"store_{backend}"
    seeds = list(range(cells))
    t0 = time.time()
    deadline = t0 + timeout_s
    plan = ["kill"] * kills + (["stop"] if stop else []) + (["corrupt"] if corrupt else [])
    if oom and backend == "local":
        plan.append("oom")
    rng.shuffle(plan)
    log(f"[chaos] {backend}: {cells} cells, the same sweep launched twice at once; faults {plan}"
        + (" + a memory-limit cell (mem_gb=0.2)" if oom and backend == "slurm" else "")
        + (" + disk full" if enospc else ""))
    procs = [launch(store, seeds, backend, budget, work / f"sweep_{backend}_{i}.log", stall_after) for i in (1, 2)]
    oom_proc, oom_seed = None, None
    if oom and backend == "slurm":
        oom_seed = cells  # its own cell, its own one-cell sweep with a memory limit it exceeds
        oom_proc = launch(store, [oom_seed], backend, budget, work / "sweep_slurm_oom.log", stall_after,
                          extra=["hydra.launcher.mem_gb=0.2", "hydra.launcher.mem_factor=5"])
    faults = drive(store, procs, plan, budget, rng, deadline, log,
                   allowed={f"v2_baseline/seed_{s}" for s in seeds})
    for p in procs + ([oom_proc] if oom_proc else []):
        while p.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        if p.poll() is None:
            p.kill()
            log(f"[chaos] sweep pid {p.pid} killed at the campaign deadline ({timeout_s:.0f}s)")
    exits = [p.wait() for p in procs]
    expected = [f"v2_baseline/seed_{s}" for s in seeds]
    if oom_proc is not None:
        exits.append(oom_proc.wait())
        expected.append(f"v2_baseline/seed_{oom_seed}")
        rd = next((r for r in Store(store).iter_runs() if cell_name(r) == f"v2_baseline/seed_{oom_seed}"), None)
        if rd is not None:
            a1 = (rd.read_state().get("attempts") or [{}])[0]
            faults.append(Fault(kind="oom", cell=cell_name(rd), attempt=a1.get("n"), env_step=None,
                                detail="one-cell sweep with hydra.launcher.mem_gb=0.2 (Slurm OverMemoryKill)"))
    # the second launch: did it run anything the first one held? (claims say who ran each cell)
    a = audit(store, faults, budget, expected)
    enospc_out = disk_full_fault(work, backend, budget, seed=cells + 1, log=log, deadline=deadline + 600) \
        if enospc else {"ran": False, "how": "not requested"}
    sweeps = sorted({(x.get("sweep_id") or "?") for rd in Store(store).iter_runs()
                     for x in rd.read_state().get("attempts") or []})
    return {"backend": backend, "cells": len(expected), "budget": asdict(budget), "wall_s": round(time.time() - t0, 1),
            "sweep_exits": exits, "faults": [asdict(f) for f in faults], "audit": a, "enospc": enospc_out,
            "sweeps_that_ran_attempts": sweeps, "corrupt_json": corrupt_json(store)}


def report(res: dict, log=print) -> bool:
    """Print the campaign's figures; returns True when every guarantee held."""
    a, b = res["audit"], res["budget"]
    ok = True

    def verdict(name: str, good: bool, text: str) -> None:
        nonlocal ok
        ok &= good
        log(f"  {'ok      ' if good else 'VIOLATED'} {name}: {text}")

    log(f"\n== chaos campaign, {res['backend']} launcher: {res['cells']} cells, {res['wall_s']} s, "
        f"sweep exit codes {res['sweep_exits']}")
    verdict("cells completed", len(a["completed"]) == res["cells"], f"{len(a['completed'])} / {res['cells']}")
    dups = a["dup_done"] + a["scratch_twice"] + a["overlaps"]
    verdict("duplicated completions", not dups, f"{len(dups)}" + (": " + "; ".join(dups) if dups else ""))
    verdict("eval rows lost", not a["eval_lost"], f"{len(a['eval_lost'])}" + (": " + "; ".join(a["eval_lost"]) if a["eval_lost"] else ""))
    verdict("curves without gaps or duplicates", not a["curve_problems"],
            f"{len(a['curve_problems'])}" + (": " + "; ".join(a["curve_problems"]) if a["curve_problems"] else ""))
    verdict("JSON files readable", not res["corrupt_json"], f"{len(res['corrupt_json'])} corrupt {res['corrupt_json'][:5]}")
    log(f"  faults (lost work bound: checkpoint_every_steps={b['checkpoint_every_steps']}; 2x for the corrupted "
        f"newest checkpoint, whose predecessor is used):")
    expect = {"kill": {"lost"}, "stop": {"stalled"}, "oom": {"oom"}, "corrupt": {"lost"}}
    for f in res["faults"]:
        if f["cell"] == "-":
            verdict(f"fault {f['kind']}", False, f["detail"])
            continue
        lost = f["lost_steps"]
        good_lost = (f["kind"] == "oom" and f["env_step"] is None) or (lost is not None and lost <= (f["bound"] or 0))
        good_cause = f["cause"] in expect.get(f["kind"], {f["cause"]})
        verdict(f"fault {f['kind']:<7} {f['cell']}", good_lost and good_cause,
                f"at env_step {f['env_step']}, resumed from {f['resumed_from']}, lost {lost} env steps "
                f"(bound {f['bound']}); classified {f['cause']!r} (expected {'/'.join(sorted(expect.get(f['kind'], {'-'})))}): "
                f"{(f['evidence'] or '')[:160]}")
    e = res["enospc"]
    if e.get("how") == "not requested":
        log("  -        disk full: not requested in this campaign")
    elif not e.get("ran"):
        verdict("disk full", False, e["how"])
    else:
        good = (e.get("final_phase") == "done" and e.get("state_readable", True) and not e.get("corrupt_files")
                and not e.get("launcher_crashed") and e.get("enospc_reported"))
        lost = e.get("lost_steps")
        verdict("disk full", good and (lost is None or lost <= b["checkpoint_every_steps"]),
                f"{e['how']}; filled at env_step {e.get('filled_at_env_step')}, freed after 20 s: launcher alive while "
                f"full {e.get('launcher_alive_while_full')}, crashed {e.get('launcher_crashed')}, 'No space left on "
                f"device' reported {e.get('enospc_reported')}; cell phase then {e.get('first_phase')} (last attempt "
                f"cause {e.get('cause')!r} {(e.get('evidence') or '')[:100]}); state.json readable "
                f"{e.get('state_readable')}; first launch exit {e.get('first_exit')}, relaunches {e.get('relaunches')}; "
                f"final phase {e.get('final_phase')}, resumed from {e.get('resumed_from')} (lost {lost}); "
                f"corrupt files {e.get('corrupt_files')}")
    log(f"  the same sweep launched twice at once (+ the memory-limit sweep on Slurm): attempts were run by sweeps "
        f"{res['sweeps_that_ran_attempts']}; no cell by two of them at once (checked above)")
    log(f"  => {'ALL GUARANTEES HELD' if ok else 'GUARANTEES VIOLATED (see above)'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("local", "slurm", "both"), default="both")
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--total-steps", type=int, default=6144)
    ap.add_argument("--checkpoint-every", type=int, default=1024)
    ap.add_argument("--stall-after", type=float, default=30.0)
    ap.add_argument("--no-enospc", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true", help="keep the campaign's stores and logs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    budget = Budget(total_steps=args.total_steps, checkpoint_every_steps=args.checkpoint_every)
    work = Path(tempfile.mkdtemp(prefix="sds_chaos_"))
    results, ok = [], True
    try:
        for backend in (("local", "slurm") if args.backend == "both" else (args.backend,)):
            res = run_campaign(backend, cells=args.cells, kills=args.kills, budget=budget, work=work, seed=args.seed,
                               stall_after=args.stall_after, enospc=not args.no_enospc, timeout_s=args.timeout)
            ok &= report(res)
            results.append(res)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    finally:
        if args.keep:
            print(f"campaign files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
