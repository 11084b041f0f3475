"""Reattach (`safedreamer-sweep watch STORE`): supervise the detached sweeps recorded in the store
until every cell is terminal, resubmitting a retryable cell by re-running its recorded sweep
command (detached again), so retries go through the same plan, claim and submit as a launch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.backends import Backend, RecordedJob, Refused, Started
from safedreamer_sweep.sweep.backends.local import LocalBackend
from safedreamer_sweep.sweep.backends.slurm import SlurmBackend
from safedreamer_sweep.sweep.claim import attempt_pack_slot
from safedreamer_sweep.sweep.failures import RetryPolicy
from safedreamer_sweep.sweep.hooks import run_on_complete
from safedreamer_sweep.sweep.launch import submitit_folder
from safedreamer_sweep.sweep.observe import observe_run, observe_store
from safedreamer_sweep.sweep.supervise import Supervisor, Tracked


def exclude_override(nodes: list[str]) -> str:
    """`hydra.launcher.exclude='a,b'`: quoted, since under -m an unquoted comma list is a sweep axis."""
    value = ",".join(nodes).replace("\\", "\\\\").replace("'", "\\'")
    return f"hydra.launcher.exclude='{value}'"


class _Reattached(Backend):
    """The recorded backend's state and kills, with submission by re-running the sweep command."""

    def __init__(self, jobs: Backend, store: Store, max_parallel: int) -> None:
        self.jobs, self.store, self.max_parallel, self.name = jobs, store, max_parallel, jobs.name

    def has_room(self, active: int, picked: int) -> bool:
        return self.name != "local" or active + picked < self.max_parallel

    def submit(self, cells: list[Tracked], exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        out: list[tuple[Tracked, Started | Refused]] = []
        for t in cells:
            try:
                out.append((t, self._resubmit(t, exclude)))
            except Exception as e:  # noqa: BLE001 (one cell's failure must not sink the others)
                out.append((t, Refused(f"submission failed: {e}")))
        return out

    def _resubmit(self, t: Tracked, exclude: list[str]) -> Started:
        c = t.payload
        extra = ["hydra.launcher.wait=false", "sweep.on_complete=[]"]  # hooks stay with the original sweep
        if t.mem_gb:
            extra.append(f"hydra.launcher.mem_gb={t.mem_gb}")
        if exclude:
            extra.append(exclude_override(exclude))
        app = c["manifest"].get("app_command") or [sys.executable, "-m", "safedreamer_sweep"]  # the app that swept it
        cmd = [*app, "-m", *c["manifest"].get("hydra_overrides", []),
               *c.get("overrides", []), *extra]
        before = {d["id"] for d in self.store.read_sweep_manifests()}
        p = subprocess.run(cmd, cwd=c["manifest"].get("cwd") or os.getcwd(), check=False, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"resubmission failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
        new = [d for d in self.store.read_sweep_manifests() if d["id"] not in before]
        ids = [j for d in new for j in (d.get("jobs") or {}).get(t.key, [])]
        return _recorded_jobs(t.rd, t.key, ids, self.name)

    def refresh(self, active: list[Tracked]) -> None:
        self.jobs.refresh(active)

    def state_lookup(self) -> Callable[[str], str | None] | None:
        return self.jobs.state_lookup()

    def alive(self, t: Tracked, sub: Any) -> bool:
        return self.jobs.alive(t, sub)

    def kill(self, t: Tracked, view: Any) -> None:
        self.jobs.kill(t, view)

    def cancel(self, sub: Any) -> None:
        self.jobs.cancel(sub)

    def over_memory(self, t: Tracked, view: Any) -> str | None:
        return self.jobs.over_memory(t, view)

    def end_evidence(self, sub: Any, last: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.end_evidence(sub, last)


def _recorded_jobs(rd: RunDir, key: str, job_ids: list[Any], backend: str) -> list[RecordedJob]:
    """The cell's jobs by id, each with its place in a packed Slurm job when it has one
    (claim.attempt_pack_slot), so that its own step is judged and killed, never its neighbours' job."""
    slots: dict[str, int] = {}
    if rd.state_path.exists():
        for a in rd.read_state().get("attempts", []):
            slot = attempt_pack_slot(a)
            if a.get("job_id") is not None and slot is not None:
                slots[str(a["job_id"])] = slot
    return [RecordedJob(key=key, job_id=str(j), backend=backend, slot=slots.get(str(j))) for j in job_ids]


def _manifest_cells(store: Store) -> list[dict]:
    """Cells of detached sweeps with the jobs that were submitted for them."""
    out = []
    for doc in store.read_sweep_manifests():
        if not doc.get("detached"):
            continue
        jobs = doc.get("jobs") or {}
        for c in doc.get("cells", []):
            key = f"{c['config']}/{c['hash']}" if c["seed"] is None else f"{c['config']}/seed_{c['seed']}/{c['hash']}"
            out.append({**c, "key": key, "job_ids": jobs.get(key, []), "manifest": doc})
    return out


def _track(sup: Supervisor, store: Store, cells: list[dict], backend: str, mem_gb: Any) -> None:
    """Each recorded cell once (the newest manifest wins): done, live (its jobs), or never submitted
    (a detached local sweep starts only max_parallel cells), which is queued to start now."""
    seen = set()
    for c in reversed(cells):
        if c["key"] in seen:
            continue
        seen.add(c["key"])
        rd = store.locate(c["config"], c["seed"], c["hash"])  # by identity; seed None: an app without one
        seed = "" if c["seed"] is None else f" seed {c['seed']}"
        t = Tracked(key=c["key"], rd=rd, label=f"{c['config']}{seed} [{c['hash']}]", payload=c,
                    mem_gb=mem_gb)
        t.subs = _recorded_jobs(rd, c["key"], c["job_ids"], backend)
        view = observe_run(rd, stall_after=sup.stall_after) if rd.spec_path.exists() else None
        if view is not None and view.phase in ("done", "pruned"):  # a pruned cell waits for its study to ask again
            t.result = view.phase
            sup.finished.append(t)
        elif t.subs:
            sup.active.append(t)
        else:
            sup.queue.append(t)


def watch(store_root: str | os.PathLike, on_tick: Callable[[list[Any]], None] | None = None,
          poll_s: float = 5.0) -> int:
    """Reattach to the detached sweeps recorded in the store and supervise them until every cell is
    terminal: classify failures, close attempts, and resubmit retryable cells by re-running the
    recorded sweep command for that cell (detached again). Returns 0 if every cell is done (or pruned by
    its study: stopped on purpose, not failed)."""
    store = Store(store_root)
    cells = _manifest_cells(store)
    if not cells:
        print(f"[watch] {store.root}: no detached sweep recorded (sweeps/*.json with detached=true); nothing to do")
        return 0 if all(v.phase in ("done", "pruned") for v in observe_store(store, stall_after=600)) else 1
    launcher = cells[-1]["manifest"].get("launcher") or {}
    name = launcher.get("backend", "local")
    # Slurm: the submitit folder, where a packed job's steps leave their exit records (slurm_pack.py)
    jobs: Backend = SlurmBackend(folder=submitit_folder("slurm", launcher, store.root)) if name == "slurm" \
        else LocalBackend()
    backend = _Reattached(jobs, store, max_parallel=int(launcher.get("max_parallel") or os.cpu_count() or 1))
    sup = Supervisor(store=store, backend=backend, sweep_id=f"watch-{os.getpid()}",
                     policy=RetryPolicy(max_attempts=int(launcher.get("max_attempts", 3)),
                                        retry_errors=bool(launcher.get("retry_errors", False))),
                     stall_after=float(launcher.get("stall_after", 600)), poll_s=poll_s, log=print, on_tick=on_tick)
    _track(sup, store, cells, name, launcher.get("mem_gb"))
    done = sup.run()
    bad = [t for t in done if t.result not in ("done", "pruned")]  # pruned: stopped on purpose, not failed
    for doc in {c["manifest"]["id"]: c["manifest"] for c in cells}.values():  # each detached sweep's hooks, once
        run_on_complete(doc.get("on_complete_commands") or [], store=store, sweep_id=doc["id"], all_terminal=True)
    pruned = sum(t.result == "pruned" for t in done)
    print(f"[watch] {len(done) - len(bad) - pruned}/{len(done)} cells done" + (f", {pruned} pruned" if pruned else "") + (
        "; not done: " + ", ".join(f"{t.label} ({t.reason})" for t in bad) if bad else ""))
    return 0 if not bad else 1
