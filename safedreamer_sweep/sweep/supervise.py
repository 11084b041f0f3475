"""Supervision: submit cells, poll scheduler state and heartbeats until every cell is terminal,
classify each failure with its evidence, and apply the retry policy per cause.

The local and Slurm paths share this one loop; only reading job state and killing a job differ
(`SlurmQueue` / local pids). `watch(store_root)` reattaches to detached sweeps recorded in the store.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException

from safedreamer_sweep.core.store import RunDir, Store, host
from safedreamer_sweep.sweep.claim import add_jobs, release
from safedreamer_sweep.sweep.failures import RetryPolicy, classify_failure
from safedreamer_sweep.sweep.observe import SLURM_ALIVE, observe_run, pid_alive

Log = Callable[[str], None]


class SweepIncomplete(CompactHydraException):
    """Raised through Hydra for a cell that is not done. A CompactHydraException, so Hydra prints
    just the one-line summary (no traceback) and exits 1."""


# ----------------------------------------------------------------------------- scheduler state


class SlurmQueue:
    """Job state from squeue (live jobs, array tasks expanded) and sacct (finished jobs)."""

    def __init__(self) -> None:
        self.info: dict[str, dict[str, str]] = {}

    def refresh(self, job_ids: list[str]) -> None:
        ids = [j for j in dict.fromkeys(job_ids) if re.fullmatch(r"\d+(_\d+)?", j)]
        self.info = {}
        if not ids:
            return
        q = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%N|%r"], check=False, capture_output=True, text=True, timeout=60)
        for line in q.stdout.splitlines():
            jid, st, node, reason = (line.split("|") + ["", "", "", ""])[:4]
            if jid in ids:
                self.info[jid] = {"State": st, "NodeList": node, "Reason": reason, "source": "squeue"}
        missing = [j for j in ids if j not in self.info]
        if missing:
            a = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(missing),
                                "--format=JobID,State,ExitCode,NodeList,MaxRSS,ReqMem,Elapsed"],
                               check=False, capture_output=True, text=True, timeout=60)
            for line in a.stdout.splitlines():
                f = line.split("|")
                if len(f) < 7:
                    continue
                jid = f[0]
                base = jid.split(".")[0]
                if base in missing and jid == base:
                    self.info[base] = {"State": f[1], "ExitCode": f[2], "NodeList": f[3], "ReqMem": f[5],
                                       "Elapsed": f[6], "source": "sacct", "steps": ""}
                elif base in missing and base in self.info:  # steps: batch / .0 carry MaxRSS and the kill
                    self.info[base]["steps"] += f"{jid.split('.', 1)[1]}={f[1]} exit {f[2]} maxrss {f[4] or '-'}; "
        return

    def state(self, job_id: str) -> str | None:
        return (self.info.get(job_id) or {}).get("State")

    @staticmethod
    def cancel(job_id: str, kill: bool = False) -> None:
        """scancel the job. kill=True (a hung cell): SIGKILL every process of the job at once; a plain
        scancel would SIGCONT+SIGTERM a frozen process, which then trains on until KillWait."""
        if kill:
            subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=False, capture_output=True, timeout=60)
        subprocess.run(["scancel", job_id], check=False, capture_output=True, timeout=60)


def slurm_state_lookup() -> Callable[[str], str | None]:
    """`job_id -> state` for observe/claim (one squeue/sacct call per job id, cached)."""
    q = SlurmQueue()
    cache: dict[str, str | None] = {}

    def lookup(job_id: str) -> str | None:
        if job_id not in cache:
            q.refresh([job_id])
            cache[job_id] = q.state(job_id)
        return cache[job_id]

    return lookup


def local_state(job_id: str) -> str | None:
    """A local submitit job's id is its controller pid."""
    try:
        return "RUNNING" if pid_alive(int(job_id)) else "ENDED"
    except ValueError:
        return None


# ----------------------------------------------------------------------------- one tracked cell


@dataclass
class Tracked:
    key: str
    rd: RunDir
    label: str
    payload: Any = None                 # what the submit function needs (the planned cell)
    subs: list[Any] = field(default_factory=list)   # live Submission copies
    mem_gb: float | None = None
    slot_gpu: str | None = None
    watch_only: bool = False            # another sweep runs it: observe until terminal
    result: str | None = None           # "done" | "failed" once terminal
    stall: dict | None = None           # evidence when we killed it for stalling
    first_seen_unknown: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class Supervisor:
    """The loop. `submit(tracked, mem_gb, exclude) -> list[Submission]` starts one cell (several
    copies when racing partitions); `can_submit()` says whether a local slot is free."""

    def __init__(self, *, store: Store, backend: str, sweep_id: str, policy: RetryPolicy,
                 stall_after: float, poll_s: float, submit: Callable[..., list[Any]],
                 can_submit: Callable[[], bool] = lambda: True, on_finish: Callable[[Tracked, Any], None] = lambda t, s: None,
                 exclude: list[str] | None = None, log: Log = print, batch_submit: Callable[..., None] | None = None,
                 on_tick: Callable[[list[Tracked]], None] | None = None) -> None:
        self.store, self.backend, self.sweep_id, self.policy = store, backend, sweep_id, policy
        self.stall_after, self.poll_s, self.submit, self.can_submit = stall_after, poll_s, submit, can_submit
        self.on_finish, self.exclude, self.log, self.batch_submit = on_finish, list(exclude or []), log, batch_submit
        self.on_tick = on_tick
        self.queue: list[Tracked] = []
        self.active: list[Tracked] = []
        self.finished: list[Tracked] = []
        self.slurm = SlurmQueue()
        self._wake_at = float("inf")  # the next instant a live cell could cross stall_after

    # --- helpers
    def _job_state(self, job_id: str) -> str | None:
        if self.backend == "local":
            return local_state(job_id)
        return self.slurm.state(job_id)

    def _alive(self, t: Tracked, sub: Any) -> bool:
        if self.backend == "local":
            job = getattr(sub, "job", None)
            if job is not None and getattr(job, "_process", None) is not None:
                return job._process.poll() is None
            return bool(pid_alive(int(sub.job_id)))
        st = self.slurm.state(sub.job_id)
        if st is None:  # just submitted, not visible yet: give the scheduler a minute
            first = t.first_seen_unknown.setdefault(sub.job_id, time.time())
            return time.time() - first < 60
        return st.split()[0] in SLURM_ALIVE

    def _kill(self, t: Tracked, view: Any) -> None:
        if view.pid and view.host == host():
            # The training process runs here (always locally; on a Slurm box whose supervisor runs on
            # the compute node): SIGKILL it directly, so a frozen process cannot wake up and go on.
            try:
                os.kill(int(view.pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        for sub in t.subs:
            if self.backend == "local":
                try:
                    os.kill(int(sub.job_id), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass
            else:
                SlurmQueue.cancel(sub.job_id, kill=True)

    def _over_memory(self, t: Tracked, view: Any) -> str | None:
        """Evidence text when a local cell's process tree holds more than its mem_gb, else None."""
        if self.backend != "local" or not t.mem_gb or not view.pid or view.host != host():
            return None
        try:
            import psutil

            proc = psutil.Process(int(view.pid))
            rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except (ImportError, psutil.Error, ValueError):
            return None
        if rss <= t.mem_gb * 1024**3:
            return None
        return (f"exceeded memory limit: pid {view.pid} RSS {rss / 1024**3:.2f} GB > "
                f"hydra.launcher.mem_gb={t.mem_gb} GB (local limit, enforced by the supervisor)")

    def _record_stall(self, t: Tracked, ev: dict) -> None:
        """Write the stall into the running attempt before killing it: the evidence survives even if
        the kill is slow and the process wakes up and finishes (scancel SIGCONTs it first)."""
        _, evidence = classify_failure(ev)

        def change(s: dict) -> None:
            a = s.get("attempts") or []
            if a and a[-1].get("outcome") in ("running", "submitted"):
                a[-1].update(cause="stalled", evidence=evidence, stall_detected_at=time.time())

        t.rd.update_state(change)

    # --- the loop
    def add(self, t: Tracked) -> None:
        (self.active if t.watch_only or t.subs else self.queue).append(t)

    def _start(self, batch: list[Tracked]) -> None:
        for t in batch:
            try:
                t.subs = self.submit(t, t.mem_gb, list(self.exclude))
            except Exception as e:  # noqa: BLE001 (e.g. sbatch refusing: every node excluded)
                self._close(t, "failed", cause=getattr(t, "pending_cause", None) or "error",
                            evidence=f"submission failed: {e}")
                continue
            if not t.subs:  # never loop on a resubmission that started nothing
                self._close(t, "failed", cause=getattr(t, "pending_cause", None) or "lost",
                            evidence="resubmission started no job (see the sweep's plan output)")
                continue
            add_jobs(t.rd, self.sweep_id, [s.job_id for s in t.subs])
            self.log(f"[sds] submitted {t.label}: job {', '.join(s.job_id for s in t.subs)}"
                     + (f" mem {t.mem_gb} GB" if t.mem_gb else "") + (f" exclude {','.join(self.exclude)}" if self.exclude else ""))
            self.active.append(t)

    def _submit_ready(self) -> None:
        batch = []
        while self.queue and (self.backend != "local" or self.can_submit()):
            t = self.queue.pop(0)
            batch.append(t)
            if self.backend == "local":
                self._start([t])
                batch = []
        if batch:
            if self.batch_submit is not None:
                self.batch_submit(self, batch)
            else:
                self._start(batch)

    def run(self) -> list[Tracked]:
        """Poll until every tracked cell is terminal. Returns them all."""
        while self.queue or self.active:
            self._submit_ready()
            if self.backend == "slurm":
                self.slurm.refresh([s.job_id for t in self.active for s in t.subs])
            for t in list(self.active):
                try:
                    self._check(t)
                except OSError as e:
                    # e.g. ENOSPC on the store: the supervisor must outlive it (the cell's own
                    # attempt records the failure); try again next poll.
                    self.log(f"[sds] {t.label}: cannot update {t.rd.path}: {e}. Fix: free space or "
                             f"permissions on the store; retrying in {self.poll_s:.0f}s")
            if self.on_tick:
                self.on_tick(self.active + self.queue + self.finished)
            if self.queue or self.active:
                # Sleep one poll, or less when a live cell would cross stall_after sooner: a hang is
                # then noticed at stall_after, not up to one poll later.
                time.sleep(max(0.05, min(self.poll_s, self._wake_at - time.time())))
                self._wake_at = float("inf")
        return self.finished

    def _check(self, t: Tracked) -> None:
        lookup = None if self.backend == "local" else self._job_state
        view = observe_run(t.rd, stall_after=self.stall_after, job_state=lookup)
        if t.watch_only:
            # Another sweep holds the cell: wait while its claim is alive (it may still be queued
            # there), finish when the cell is terminal or its holder is gone.
            from safedreamer_sweep.core.store import read_json
            from safedreamer_sweep.sweep.claim import holder_alive

            holder, why = holder_alive(read_json(t.rd.claim_path) or {}, t.rd, stall_after=self.stall_after,
                                       job_state=lookup)
            if view.phase in ("done", "failed") or (not holder and view.phase in ("lost", "pending")):
                self.active.remove(t)
                t.result = "done" if view.phase == "done" else "failed"
                t.reason = f"ran elsewhere: {view.phase}" + (f" ({view.cause}: {view.evidence})" if view.cause else "") + (
                    "" if view.phase in ("done", "failed") else f"; {why}; run the sweep again to resume it")
                self.finished.append(t)
            return
        alive = [s for s in t.subs if self._alive(t, s)]
        if len(t.subs) > 1 and alive:  # racing copies: keep the first that started, cancel the rest
            from safedreamer_sweep.core.store import read_json

            winner = (read_json(t.rd.claim_path) or {}).get("race_winner")
            if winner:
                for s in t.subs:
                    if s.job_id != str(winner):
                        SlurmQueue.cancel(s.job_id)
                        self.log(f"[sds] {t.label}: job {winner} started first; cancelled racing copy {s.job_id} ({s.partition})")
                t.subs = [s for s in t.subs if s.job_id == str(winner)]
                alive = [s for s in alive if s.job_id == str(winner)]
        if alive:
            over = self._over_memory(t, view)
            if over and t.stall is None:
                # Slurm enforces mem_gb itself; locally the supervisor does, by polling (like
                # Slurm's OverMemoryKill), so an OOM retry with mem_gb x mem_factor works here too.
                t.stall = {"oom_evidence": over}
                self.log(f"[sds] {t.label}: {over}; killing it")
                self._kill(t, view)
                return
            if view.phase == "running" and view.progress_age_s is not None:
                self._wake_at = min(self._wake_at, time.time() + self.stall_after - view.progress_age_s + 0.05)
            if view.phase == "stalled" and t.stall is None:
                t.stall = {"stalled": True, "progress_age_s": view.progress_age_s, "stall_after": self.stall_after,
                           "env_step": view.env_step, "alive_what": f"pid {view.pid}" if view.pid else f"job {view.job_id}"}
                self.log(f"[sds] {t.label}: stalled (env_step {view.env_step} unchanged for "
                         f"{view.progress_age_s:.0f}s); killing it to resume from the checkpoint")
                self._record_stall(t, t.stall)
                self._kill(t, view)
            return
        self._ended(t, view)

    def _ended(self, t: Tracked, view: Any) -> None:
        state = t.rd.read_state()
        sub = t.subs[-1] if t.subs else None
        self.on_finish(t, sub)
        if view.phase == "done" or state.get("phase") == "done":
            self._close(t, "done")
            return
        attempts = state.get("attempts") or []
        last = attempts[-1] if attempts else {}
        if sub is not None and sub.job_id and str(last.get("job_id", sub.job_id)) != str(sub.job_id):
            last = next((a for a in reversed(attempts) if str(a.get("job_id")) == str(sub.job_id)), last)
        ev: dict[str, Any] = dict(t.stall or {})
        info = self.slurm.info.get(sub.job_id, {}) if sub is not None and self.backend == "slurm" else {}
        ev.update(slurm_state=info.get("State"), node=info.get("NodeList") or last.get("node") or last.get("host"))
        code = info.get("ExitCode")
        if self.backend == "local":
            # the submitit controller's exit code is not the cell's: name the cell's pid instead
            ev["pid"] = last.get("pid")
        if code is not None:
            ev["exit_code"] = code
            m = re.match(r"^(-?\d+):(\d+)$", str(code))
            if m and m.group(2) != "0":
                ev["signal"] = int(m.group(2))
            elif isinstance(code, int) and code < 0:
                ev["signal"] = -code
        stderr = ""
        if sub is not None:
            try:
                stderr = Path(sub.job.paths.stderr).read_text(errors="replace")[-4000:]
            except (OSError, AttributeError):  # reattached (no submitit Job object): find its file
                from safedreamer_sweep.sweep.submit import submitit_stderr

                stderr = submitit_stderr(self.store.root / "launcher" / "submitit", sub.job_id)
        if last.get("n"):
            err = t.rd.attempt_log_paths(int(last["n"]))[1]
            if err.exists():
                stderr += "\n" + err.read_text(errors="replace")[-3000:]
        if info.get("steps"):
            stderr += f"\n[sacct steps] {info['steps']}"
        ev["stderr_tail"] = stderr
        if last.get("outcome") in ("failed", "interrupted"):
            ev.update(cell_cause=last.get("cause"), cell_evidence=last.get("evidence"),
                      traceback_tail=last.get("traceback_tail"))
        cause, evidence = classify_failure(ev)
        node = ev.get("node")

        def close_attempt(s: dict) -> None:
            a = s.get("attempts") or []
            target = next((x for x in reversed(a) if x is last or x.get("n") == last.get("n")), None) if last else None
            if target is None:
                a.append({"n": len(a) + 1})
                target = a[-1]
            if target.get("outcome") in (None, "running", "submitted"):
                target.update(outcome="interrupted" if cause in ("timeout", "preempted", "stalled") else "failed",
                              ended_at=time.time())
            if target.get("cause") != cause:
                if target.get("cause"):
                    target["cell_cause"] = target.get("cause")
                target.update(cause=cause, evidence=evidence)
            target["classified_by"] = "supervisor"
            if node and not target.get("node"):
                target["node"] = node

        state = t.rd.update_state(close_attempt)
        act = self.policy.decide(cause, state.get("attempts") or [], mem_gb=t.mem_gb, node=node, exclude=self.exclude)
        self.log(f"[sds] {t.label}: attempt ended, cause {cause}: {evidence[:300]} -> {act.kind}: {act.reason}")
        if act.kind == "retry":
            if act.mem_gb:
                t.mem_gb = act.mem_gb
            if act.exclude:
                self.exclude = act.exclude
            t.subs, t.stall, t.first_seen_unknown = [], None, {}
            t.pending_cause = cause  # type: ignore[attr-defined]
            self.queue.append(t)
            self.active.remove(t)
            return
        tail = (last.get("traceback_tail") or "").strip().splitlines()[-6:]
        if tail:
            self.log(f"[sds] {t.label}: traceback tail:\n    " + "\n    ".join(tail))
        t.rd.set_phase("failed")
        self._close(t, "failed", reason=f"{cause}: {evidence}")

    def _close(self, t: Tracked, result: str, *, reason: str = "", cause: str | None = None,
               evidence: str | None = None) -> None:
        if cause:
            def change(s: dict) -> None:
                a = s.setdefault("attempts", [])
                if a and a[-1].get("outcome") == "submitted":
                    a[-1].update(outcome="failed", cause=cause, evidence=evidence, ended_at=time.time())
                else:
                    a.append({"n": len(a) + 1, "outcome": "failed", "cause": cause, "evidence": evidence,
                              "ended_at": time.time(), "classified_by": "supervisor"})
                s["phase"] = "failed"
            t.rd.update_state(change)
            reason = reason or f"{cause}: {evidence}"
        t.result, t.reason = result, reason or t.reason
        if t in self.active:
            self.active.remove(t)
        self.finished.append(t)
        release(t.rd, self.sweep_id, result)


# ----------------------------------------------------------------------------- reattach


def _manifest_cells(store: Store) -> list[dict]:
    """Cells of detached sweeps with the jobs that were submitted for them."""
    out = []
    for doc in store.read_sweep_manifests():
        if not doc.get("detached"):
            continue
        jobs = doc.get("jobs") or {}
        for c in doc.get("cells", []):
            key = f"{c['config']}/seed_{c['seed']}/{c['hash']}"
            out.append({**c, "key": key, "job_ids": jobs.get(key, []), "manifest": doc})
    return out


@dataclass
class _Sub:
    key: str
    job_id: str
    backend: str
    partition: str | None = None
    job: Any = None


def watch(store_root: str | os.PathLike, on_tick: Callable[[list[Any]], None] | None = None,
          poll_s: float = 5.0) -> int:
    """Reattach to the detached sweeps recorded in the store and supervise them until every cell is
    terminal: classify failures, close attempts, and resubmit retryable cells by re-running the
    recorded sweep command for that cell (detached again). Returns 0 if every cell is done."""
    store = Store(store_root)
    cells = _manifest_cells(store)
    if not cells:
        print(f"[watch] {store.root}: no detached sweep recorded (sweeps/*.json with detached=true); nothing to do")
        from safedreamer_sweep.sweep.observe import observe_store

        return 0 if all(v.phase == "done" for v in observe_store(store, stall_after=600)) else 1
    latest = cells[-1]["manifest"]
    launcher = latest.get("launcher") or {}
    backend = launcher.get("backend", "local")
    policy = RetryPolicy(max_attempts=int(launcher.get("max_attempts", 3)),
                         retry_errors=bool(launcher.get("retry_errors", False)))
    sup_ref: dict[str, Supervisor] = {}

    def resubmit(t: Tracked, mem_gb: float | None, exclude: list[str]) -> list[Any]:
        c = t.payload
        extra = ["hydra.launcher.wait=false", "sweep.on_complete=[]"]  # hooks stay with the original sweep
        if mem_gb:
            extra.append(f"hydra.launcher.mem_gb={mem_gb}")
        if exclude:
            extra.append(exclude_override(exclude))
        cmd = [sys.executable, "-m", "safedreamer_sweep", "-m", *c["manifest"].get("hydra_overrides", []),
               *c.get("overrides", []), *extra]
        before = {d["id"] for d in store.read_sweep_manifests()}
        p = subprocess.run(cmd, cwd=c["manifest"].get("cwd") or os.getcwd(), check=False, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"resubmission failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
        new = [d for d in store.read_sweep_manifests() if d["id"] not in before]
        ids = [j for d in new for j in (d.get("jobs") or {}).get(t.key, [])]
        return [_Sub(key=t.key, job_id=str(j), backend=backend) for j in ids]

    max_parallel = int(launcher.get("max_parallel") or os.cpu_count() or 1)  # validated when it was launched
    sup = Supervisor(store=store, backend=backend, sweep_id=f"watch-{os.getpid()}", policy=policy,
                     stall_after=float(launcher.get("stall_after", 600)), poll_s=poll_s, submit=resubmit,
                     log=print, on_tick=on_tick)
    if backend == "local":
        sup.can_submit = lambda: len(sup.active) < max_parallel
    sup_ref["s"] = sup
    seen = set()
    for c in reversed(cells):  # newest manifest wins per cell
        if c["key"] in seen:
            continue
        seen.add(c["key"])
        rd = store.run_dir(c["config"], int(c["seed"]), c["hash"])
        t = Tracked(key=c["key"], rd=rd, label=f"{c['config']} seed {c['seed']} [{c['hash']}]", payload=c,
                    mem_gb=launcher.get("mem_gb"))
        t.subs = [_Sub(key=c["key"], job_id=str(j), backend=backend) for j in c["job_ids"]]
        view = observe_run(rd, stall_after=sup.stall_after) if rd.spec_path.exists() else None
        if view is not None and view.phase == "done":
            t.result = "done"
            sup.finished.append(t)
        elif t.subs:
            sup.active.append(t)
        else:  # never submitted (a detached local sweep starts only max_parallel cells): start it now
            sup.queue.append(t)
    done = sup.run()
    bad = [t for t in done if t.result != "done"]
    from safedreamer_sweep.sweep.hooks import run_on_complete

    for doc in {c["manifest"]["id"]: c["manifest"] for c in cells}.values():  # each detached sweep's hooks, once
        run_on_complete(doc.get("on_complete_commands") or [], store=store, sweep_id=doc["id"], all_terminal=True)
    print(f"[watch] {len(done) - len(bad)}/{len(done)} cells done" + (
        "; not done: " + ", ".join(f"{t.label} ({t.reason})" for t in bad) if bad else ""))
    return 0 if not bad else 1


def have_slurm() -> bool:
    return shutil.which("sbatch") is not None


# ----------------------------------------------------------------------------- the launch


def _objective(result: dict, path: str | None) -> Any:
    """`sweep.objective` ("ood.return_mean") picked out of a cell result as a float (for sweepers)."""
    if not path:
        return result
    cur: Any = result
    for part in str(path).split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        raise SweepIncomplete(f"sweep.objective={path!r} is missing from the result of {result.get('config')} "
                              f"seed {result.get('seed')} (keys: {sorted(result)})")
    return float(cur)


def exclude_override(nodes: list[str]) -> str:
    """`hydra.launcher.exclude='a,b'`: quoted, since under -m an unquoted comma list is a sweep axis."""
    value = ",".join(nodes).replace("\\", "\\\\").replace("'", "\\'")
    return f"hydra.launcher.exclude='{value}'"


# launcher options with a range: (name, smallest allowed, what it means, allowed to be unset)
_RANGES = (("max_parallel", 1, "cells at once (unset: one per CPU core)", True),
           ("poll_s", 0.1, "seconds between polls", False),
           ("stall_after", 1, "seconds without env-step progress before a cell is stalled", False),
           ("max_attempts", 1, "attempts per cell", False),
           ("mem_factor", 1, "memory factor after an out-of-memory kill", False),
           ("runs_per_gpu", 1, "cells sharing one GPU", True),
           ("timeout_min", 1, "job time limit in minutes", True))


def check_launcher_params(params: dict) -> None:
    """PlanError naming the option and its valid range for a launcher setting out of range (e.g.
    max_parallel=0 would otherwise silently mean every core)."""
    from safedreamer_sweep.sweep.plan import PlanError

    for name, low, what, may_be_unset in _RANGES:
        if name not in params:
            continue
        v = params.get(name)
        if v is None and may_be_unset:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
            raise PlanError(f"hydra.launcher.{name}={v!r} is out of range: {what}, must be >= {low}"
                            + (" (or unset)" if may_be_unset else "")
                            + f". Fix: e.g. hydra.launcher.{name}={max(low, 1) if name != 'poll_s' else 5}")


def submitit_folder(backend: str, params: dict, store_root: Path) -> Path:
    """Where submitit keeps its pickles and logs. Slurm gets a folder per job (`%j`, substituted by
    submitit); locally submitit's controller would mkdir the template literally, so local jobs share
    one folder (submitit names every file after its job id anyway)."""
    from submitit.core.utils import JobPaths

    folder = Path(params.get("submitit_folder") or Path(store_root) / "launcher" / "submitit" / "%j")
    if backend == "local":
        folder = JobPaths.get_first_id_independent_folder(folder)
    return folder


def launch_sweep(*, backend: str, params: dict, config: Any, hydra_context: Any, task_function: Any,
                 job_overrides: Any, initial_job_idx: int) -> list[Any]:
    """What SdsLauncher.launch does: plan, print the plan, claim, submit, supervise (or detach),
    build the report, run on_complete hooks, and return one JobReturn per override in order."""
    import logging

    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from safedreamer_sweep.sweep.claim import try_claim
    from safedreamer_sweep.sweep.hooks import run_on_complete
    from safedreamer_sweep.sweep.plan import (
        RUNNABLE,
        absolute_store_root,
        check_store_root,
        format_plan,
        plan_cells,
    )
    from safedreamer_sweep.sweep.submit import (
        CellTask,
        SlotPool,
        Submission,
        cell_resources,
        make_executor,
        pre_register,
        visible_gpus,
    )
    from safedreamer_sweep.tasks.run import cell_result

    logger = logging.getLogger("sds_launcher")

    def say(msg: str) -> None:
        print(msg, flush=True)
        logger.debug(msg)

    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # A PlanError is a CompactHydraException: Hydra prints its message (no traceback) and exits 1.
    check_launcher_params(params)
    store = Store(check_store_root(absolute_store_root(config)))
    _ = str(config.hydra.sweep.dir)  # resolve ${now:} once so every job shares one sweep dir
    stall_after = float(params.get("stall_after", 600))
    policy = RetryPolicy(max_attempts=int(params.get("max_attempts", 3)), mem_factor=float(params.get("mem_factor", 1.5)),
                         retry_errors=bool(params.get("retry_errors", False)))
    lookup = slurm_state_lookup() if backend == "slurm" and have_slurm() else None
    cells = plan_cells(job_overrides, config_loader=hydra_context.config_loader, config=config, store=store,
                       stall_after=stall_after, policy=policy, job_state=lookup, sweep_id=sweep_id, log=say,
                       fast=bool(params.get("plan_fast", True)))
    say(format_plan(cells))
    # settings (sweep/cost/report) are the same for every job of a group: no need to compose a job for them
    sweep_cfg = (cells[0].settings.get("sweep") if cells and cells[0].settings is not None else None) or {}
    objective = sweep_cfg.get("objective")
    dry_run = bool(params.get("dry_run", False))
    wait = bool(params.get("wait", True))

    def job_return(c: Any, status: Any, value: Any) -> Any:
        # cfg: the job's composed config when it was composed (submitted cells); Hydra does not read it
        return JobReturn(overrides=list(c.overrides), cfg=c.composed, hydra_cfg=None, working_dir=None,
                         task_name=str(config.hydra.job.name), status=status, _return_value=value)

    if dry_run:
        say("[sds] dry run: nothing submitted")
        return [job_return(c, JobStatus.COMPLETED, {"verdict": c.verdict, "reason": c.reason, "run_dir": str(c.run_dir.path)})
                for c in cells]

    launcher_doc = {"backend": backend, **{k: v for k, v in params.items() if not k.startswith("_")}}
    hydra_ov = [o for o in OmegaConf.to_container(config.hydra.overrides.hydra) or []  # type: ignore[union-attr]
                if not re.match(r"hydra\.launcher\.(wait|mem_gb|exclude|dry_run)=", str(o))]
    manifest: dict[str, Any] = {
        "created_at": time.time(), "detached": not wait, "cwd": os.getcwd(), "hydra_overrides": hydra_ov,
        "cells": [{"config": c.spec.config, "seed": c.spec.seed, "hash": c.spec.hash, "overrides": c.overrides,
                   "verdict": c.verdict} for c in cells],
        "on_complete_commands": [str(x) for x in (sweep_cfg.get("on_complete") or [])],
        "launcher": launcher_doc, "jobs": {}, "cost": OmegaConf.to_container(cells[0].settings.get("cost") or {}) if cells and cells[0].settings is not None else {},
    }
    store.write_sweep_manifest(sweep_id, manifest)

    # --- what runs: claim each runnable cell; a cell another live sweep holds is only watched
    folder = submitit_folder(backend, params, store.root)
    tracked: dict[str, Tracked] = {}
    for c in cells:
        if c.spec.key in tracked:
            continue
        t = Tracked(key=c.spec.key, rd=c.run_dir, label=c.label, payload=c,
                    mem_gb=float(params["mem_gb"]) if params.get("mem_gb") else None)
        if c.verdict in RUNNABLE:
            c.run_dir.ensure_spec(c.spec.spec_document())
            ok, why = try_claim(c.run_dir, sweep_id, backend=backend, stall_after=stall_after, job_state=lookup)
            if not ok:
                say(f"[sds] {c.label}: not claimed ({why}); watching it instead")
                t.watch_only = True
        elif c.verdict == "running-elsewhere":
            t.watch_only = "duplicate of job" not in c.reason
            if not t.watch_only:
                continue
        else:
            continue
        tracked[c.spec.key] = t

    pool = SlotPool(max_parallel=int(params.get("max_parallel") or os.cpu_count() or 1),  # None: every core
                    gpus=visible_gpus(params.get("gpus")) if backend == "local" else [],
                    runs_per_gpu=int(params.get("runs_per_gpu") or 1))
    singleton_state = Singleton.get_state()
    base_env = {str(k): str(v) for k, v in (params.get("env") or {}).items()}

    def task_for(t: Tracked, env: dict, resources: dict, race: bool = False) -> Any:
        c = t.payload
        return CellTask(hydra_context=hydra_context, task_function=task_function, config=c.cfg,
                        overrides=list(c.overrides), job_num=initial_job_idx + c.index, singleton_state=singleton_state,
                        run_dir=str(c.run_dir.path), store_root=str(store.root), env=env, resources=resources,
                        sweep_id=sweep_id, race=race, timeout_min=float(params.get("timeout_min") or 0),
                        signal_delay_s=float(params.get("signal_delay_s") or 0))

    def submit_local(t: Tracked, mem_gb: float | None, exclude: list[str]) -> list[Any]:
        _ = t.payload.cfg  # compose the job (if planning did not) before taking a slot: a failure holds none
        slot = pool.acquire(t.key)
        assert slot is not None
        env = pool.env(slot, base_env)
        ex = make_executor("local", folder, params)
        gpu = pool.gpu_of(slot)
        if gpu is not None and gpu.isdigit():
            ex.update_parameters(gpus_per_node=1, visible_gpus=(int(gpu),))
        res = cell_resources("local", params, mem_gb=mem_gb, gpus=gpu)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the job's process starts with its slot's environment
        # Detached: the job must not hold our stdout/stderr open (a caller reading them to EOF would
        # wait for the cell); the cell's output goes to its run dir's logs/ anyway.
        fds = None
        if not wait:
            sys.stdout.flush()
            sys.stderr.flush()
            fds = (os.dup(1), os.dup(2))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        try:
            job = ex.submit(task_for(t, env, {**res, "env": env}))
        finally:
            if fds is not None:
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.close(fds[0])
                os.close(fds[1])
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        pre_register(t.rd, job_id=str(job.job_id), resources={**res, "env": env}, sweep_id=sweep_id,
                     partition=None, exclude=None)
        t.slot_gpu = gpu
        return [Submission(key=t.key, job=job, job_id=str(job.job_id), backend="local", slot=slot, resources=res)]

    def free_slot(t: Tracked, sub: Any) -> None:
        if sub is not None and sub.slot is not None:
            pool.release(sub.slot)

    def batch_slurm(sup: Supervisor, batch: list[Tracked]) -> None:
        races = list(params.get("race_partitions") or [])
        groups: dict[Any, list[Tracked]] = {}
        for t in batch:
            groups.setdefault(t.mem_gb, []).append(t)
        for mem_gb, ts in list(groups.items()):
            composed = []
            for t in ts:  # compose each job (if planning did not) first: one failure must not sink the batch
                try:
                    _ = t.payload.cfg
                    composed.append(t)
                except Exception as e:  # noqa: BLE001
                    sup._close(t, "failed", cause="error", evidence=f"composing the job failed: {e}")
            groups[mem_gb] = ts = composed
            if not ts:
                continue
            for partition in (races or [params.get("partition")]):
                ex = make_executor("slurm", folder, params, mem_gb=mem_gb, exclude=sup.exclude, partition=partition)
                res = cell_resources("slurm", params, mem_gb=mem_gb, gpus=None)
                try:
                    with ex.batch():
                        jobs = [ex.submit(task_for(t, dict(base_env), res, race=bool(races))) for t in ts]
                except Exception as e:  # noqa: BLE001 (sbatch refused, e.g. every node excluded: say why, per cell)
                    for t in ts:
                        sup._close(t, "failed", cause=getattr(t, "pending_cause", None) or "error",
                                   evidence=f"sbatch refused the submission (partition {partition}, exclude "
                                            f"{','.join(sup.exclude) or '-'}, mem {mem_gb} GB): {str(e).strip()[-400:]}")
                    break
                for t, job in zip(ts, jobs):
                    if races:
                        with t.rd.lock():
                            from safedreamer_sweep.core.store import (
                                atomic_write_json,
                                read_json,
                            )
                            doc = read_json(t.rd.claim_path) or {}
                            doc.update(race=races, race_winner=None) if partition == races[0] else doc.update(race=races)
                            atomic_write_json(t.rd.claim_path, doc)
                    if not t.subs:
                        pre_register(t.rd, job_id=str(job.job_id), resources=res, sweep_id=sweep_id,
                                     partition=partition, exclude=sup.exclude)
                    t.subs.append(Submission(key=t.key, job=job, job_id=str(job.job_id), backend="slurm",
                                             partition=partition, resources=res))
                    add_jobs(t.rd, sweep_id, [str(job.job_id)])
                    sup.log(f"[sds] submitted {t.label}: job {job.job_id}" + (f" partition {partition}" if partition else "")
                            + (f" mem {mem_gb} GB" if mem_gb else "") + (f" exclude {','.join(sup.exclude)}" if sup.exclude else ""))
            for t in ts:
                if t.subs and t not in sup.active:
                    sup.active.append(t)

    sup = Supervisor(store=store, backend=backend, sweep_id=sweep_id, policy=policy, stall_after=stall_after,
                     poll_s=float(params.get("poll_s", 5.0)), submit=submit_local,
                     can_submit=lambda: len(pool.busy) < pool.capacity,
                     on_finish=free_slot, exclude=[x for x in (params.get("exclude") or "").split(",") if x],
                     log=say, batch_submit=batch_slurm if backend == "slurm" else None)
    for t in tracked.values():
        sup.add(t)

    if not wait:
        sup._submit_ready()
        manifest["jobs"] = {t.key: [s.job_id for s in t.subs] for t in tracked.values() if t.subs}
        store.write_sweep_manifest(sweep_id, manifest)
        say(f"[sds] detached: {sum(len(t.subs) for t in tracked.values())} job(s) submitted; "
            f"reattach with: safedreamer-sweep watch {store.root}")
        out = []
        for c in cells:
            if c.verdict == "done":
                out.append(job_return(c, JobStatus.COMPLETED, _objective(cell_result(c.spec, c.run_dir), objective)))
            else:
                tc = tracked.get(c.spec.key)
                out.append(job_return(c, JobStatus.COMPLETED, {"detached": True, "verdict": c.verdict,
                                                               "jobs": [s.job_id for s in tc.subs] if tc else []}))
        return out

    try:
        finished = {t.key: t for t in sup.run()}
    except KeyboardInterrupt:
        # Ctrl-C stops supervising, not the cells: record their jobs so `watch` can reattach.
        manifest.update(detached=True, jobs={t.key: [s.job_id for s in t.subs] for t in sup.active if t.subs})
        store.write_sweep_manifest(sweep_id, manifest)
        say(f"[sds] interrupted: {len(sup.active)} cell(s) keep running, {len(sup.queue)} not submitted; "
            f"reattach with: safedreamer-sweep watch {store.root}")
        raise
    manifest["jobs"] = {k: sorted({str(a.get("job_id")) for a in t.rd.read_state().get("attempts", []) if a.get("job_id")})
                        for k, t in finished.items()}
    store.write_sweep_manifest(sweep_id, manifest)

    # --- one JobReturn per override, in order
    results: list[tuple[Any, str, str]] = []
    for c in cells:
        tf = finished.get(c.spec.key)
        view = observe_run(c.run_dir, stall_after=stall_after) if c.run_dir.spec_path.exists() else None
        if view is not None and view.phase == "done":
            results.append((c, "done", ""))
        else:
            why = tf.reason if tf is not None and tf.reason else f"{c.verdict}: {c.reason}"
            results.append((c, "not done", why))
    not_done = [(c, why) for c, st, why in results if st != "done"]
    summary = (f"sweep {sweep_id}: {len(results) - len(not_done)}/{len(results)} cells done"
               + ("; not done: " + "; ".join(f"{c.label} ({why[:200]})" for c, why in not_done) if not_done else ""))
    out = []
    for c, st, why in results:
        if st == "done":
            try:
                out.append(job_return(c, JobStatus.COMPLETED, _objective(cell_result(c.spec, c.run_dir), objective)))
            except SweepIncomplete as e:
                out.append(job_return(c, JobStatus.FAILED, e))
        else:
            out.append(job_return(c, JobStatus.FAILED, SweepIncomplete(
                f"{c.label} is not done ({why[:400]}); sweep {sweep_id}: {len(results) - len(not_done)}/{len(results)} "
                f"cells done (status: safedreamer-sweep status {store.root})")))

    # --- end of sweep: the report (idempotent, runs even when cells failed), then the hooks
    try:
        from safedreamer_sweep.report import build_report

        c0 = cells[0].settings if cells else None
        rcfg = {k: OmegaConf.to_container(c0[k], resolve=True) for k in ("report", "cost", "sweep", "store")
                if c0 is not None and k in c0}
        path = build_report(store.root, cfg=rcfg or None)
        say(f"[sds] report: {path}")
    except Exception as e:  # noqa: BLE001 (the sweep's outcome must not hinge on the report)
        say(f"[sds] report not built ({type(e).__name__}: {e}); build it later with: safedreamer-sweep report {store.root}")
    all_terminal = all(t.result is not None for t in sup.finished) and not sup.active and not sup.queue
    run_on_complete(list(sweep_cfg.get("on_complete") or []), store=store, sweep_id=sweep_id,
                    all_terminal=all_terminal, dry_run=False, log=say)
    say(f"[sds] {summary}")
    return out
