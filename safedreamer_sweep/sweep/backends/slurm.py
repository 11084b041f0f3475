"""The Slurm backend: cells go out as submitit job arrays (one array per memory size, optionally
one copy per racing partition, or with runs_per_gpu=k one job per k cells, each cell a job step:
backends/slurm_pack.py); state comes from squeue (live jobs, array tasks expanded) and sacct
(finished jobs and their steps), kills from scancel."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.run_dir import host
from safedreamer_sweep.sweep.backends import Backend, Refused, Started, Tracked
from safedreamer_sweep.sweep.backends.slurm_pack import (
    STEP_NAME,
    PackedCells,
    read_slot_exit,
)
from safedreamer_sweep.sweep.cell_task import CellTasks
from safedreamer_sweep.sweep.claim import record_race
from safedreamer_sweep.sweep.observe import SLURM_ALIVE
from safedreamer_sweep.sweep.submit import Submission, cell_resources, make_executor, pre_register, slurm_mem


def have_slurm() -> bool:
    return shutil.which("sbatch") is not None


class _SlurmQueue:
    """Job state from squeue (live jobs, array tasks expanded) and sacct (finished jobs)."""

    def __init__(self) -> None:
        self.info: dict[str, dict[str, str]] = {}
        self.steps: dict[str, dict[str, dict[str, str]]] = {}  # job id -> step name -> its sacct record

    def refresh(self, job_ids: list[str]) -> None:
        ids = [j for j in dict.fromkeys(job_ids) if re.fullmatch(r"\d+(_\d+)?", j)]
        self.info, self.steps = {}, {}
        if not ids:
            return
        q = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%N|%r"], check=False, capture_output=True, text=True, timeout=60)
        for line in q.stdout.splitlines():
            jid, st, node, reason = [*line.split("|"), "", "", "", ""][:4]
            if jid in ids:
                self.info[jid] = {"State": st, "NodeList": node, "Reason": reason, "source": "squeue"}
        missing = [j for j in ids if j not in self.info]
        if missing:
            a = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(missing),
                                "--format=JobID,State,ExitCode,NodeList,MaxRSS,ReqMem,Elapsed,JobName,JobIDRaw"],
                               check=False, capture_output=True, text=True, timeout=60)
            for line in a.stdout.splitlines():
                f = line.split("|")
                if len(f) < 9:
                    continue
                if "." in f[0]:  # a step; a packed cell's is named sds-slot<i> (slurm_pack.py)
                    self.steps.setdefault(f[0].split(".")[0], {})[f[7]] = {
                        "State": f[1], "ExitCode": f[2], "NodeList": f[3], "MaxRSS": f[4], "step": f[0], "raw": f[8]}
                jid = f[0]
                base = jid.split(".")[0]
                if base in missing and jid == base:
                    self.info[base] = {"State": f[1], "ExitCode": f[2], "NodeList": f[3], "ReqMem": f[5],
                                       "Elapsed": f[6], "source": "sacct", "steps": ""}
                elif base in missing and base in self.info:  # steps: batch / .0 carry MaxRSS and the kill
                    self.info[base]["steps"] += f"{jid.split('.', 1)[1]}={f[1]} exit {f[2]} maxrss {f[4] or '-'}; "

    def step(self, job_id: str, name: str) -> dict[str, str] | None:
        """sacct's record of the step `name` of `job_id` (read now if the job is still running)."""
        if name not in self.steps.get(job_id, {}):
            a = subprocess.run(["sacct", "-n", "-P", "-j", job_id,
                                "--format=JobID,State,ExitCode,NodeList,MaxRSS,JobName,JobIDRaw"],
                               check=False, capture_output=True, text=True, timeout=60)
            for line in a.stdout.splitlines():
                f = line.split("|")
                if len(f) >= 7 and "." in f[0]:  # raw: slurmstepd names an array task's step by it
                    self.steps.setdefault(job_id, {})[f[5]] = {"State": f[1], "ExitCode": f[2], "NodeList": f[3],
                                                               "MaxRSS": f[4], "step": f[0], "raw": f[6]}
        return self.steps.get(job_id, {}).get(name)

    def state(self, job_id: str) -> str | None:
        """The job's state; a pending job's carries squeue's reason: `PENDING (QOSMaxGRESPerUser)`
        (observe.queue_reason reads it; `.split()[0]` is the bare state)."""
        info = self.info.get(job_id) or {}
        st, reason = info.get("State"), info.get("Reason", "")
        if st == "PENDING" and reason and reason != "None":
            return f"{st} ({reason})"
        return st

    @staticmethod
    def cancel(job_id: str, kill: bool = False) -> None:
        """scancel the job. kill=True (a hung cell): SIGKILL every process of the job at once; a plain
        scancel would SIGCONT+SIGTERM a frozen process, which then trains on until KillWait."""
        if kill:
            subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=False, capture_output=True, timeout=60)
        subprocess.run(["scancel", job_id], check=False, capture_output=True, timeout=60)


def slurm_state_lookup() -> Callable[[str], str | None]:
    """`job_id -> state` for observe/claim (one squeue/sacct call per job id, cached)."""
    q = _SlurmQueue()
    cache: dict[str, str | None] = {}

    def lookup(job_id: str) -> str | None:
        if job_id not in cache:
            q.refresh([job_id])
            cache[job_id] = q.state(job_id)
        return cache[job_id]

    return lookup


class SlurmBackend(Backend):
    """Cells as Slurm jobs. Without `tasks` (reattaching with `watch`) it only observes and cancels."""

    name = "slurm"

    def __init__(self, *, tasks: CellTasks | None = None, folder: Path | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.tasks, self.folder, self.params = tasks, folder, params or {}
        self.base_env = {str(k): str(v) for k, v in (self.params.get("env") or {}).items()}
        self.queue = _SlurmQueue()

    def submit(self, cells: list[Tracked], exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        """One job array per memory size (a retried OOM cell asks for more); compose each job first,
        so one failure does not sink the array."""
        out: list[tuple[Tracked, Started | Refused]] = []
        by_mem: dict[float | None, list[Tracked]] = {}
        for t in cells:
            try:
                _ = t.payload.cfg
                by_mem.setdefault(t.mem_gb, []).append(t)
            except Exception as e:  # noqa: BLE001
                out.append((t, Refused(f"composing the job failed: {e}", cause="error")))
        for mem_gb, ts in by_mem.items():
            out += self._submit_array(ts, mem_gb, exclude)
        return out

    def _submit_array(self, ts: list[Tracked], mem_gb: float | None,
                      exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        assert self.tasks is not None and self.folder is not None
        if int(self.params.get("runs_per_gpu") or 1) > 1:
            return self._submit_packs(ts, mem_gb, exclude)
        races = list(self.params.get("race_partitions") or [])
        copies: dict[str, list[Any]] = {t.key: [] for t in ts}
        res = cell_resources("slurm", self.params, mem_gb=mem_gb, gpus=None)
        for partition in (races or [self.params.get("partition")]):
            ex = make_executor("slurm", self.folder, self.params, mem_gb=mem_gb, exclude=exclude, partition=partition)
            try:
                with ex.batch():
                    jobs = [ex.submit(self.tasks(t.payload, dict(self.base_env), res, race=bool(races))) for t in ts]
            except Exception as e:  # noqa: BLE001 (sbatch refused, e.g. every node excluded: say why, per cell)
                why = (f"sbatch refused the submission (partition {partition}, exclude {','.join(exclude) or '-'}, "
                       f"mem {mem_gb} GB): {str(e).strip()[-400:]}")
                return [(t, copies[t.key] or Refused(why)) for t in ts]
            for t, job in zip(ts, jobs):
                if races:
                    record_race(t.rd, races, first=partition == races[0])
                if not copies[t.key]:
                    pre_register(t.rd, job_id=str(job.job_id), resources=res, sweep_id=self.tasks.sweep_id,
                                 partition=partition, exclude=exclude)
                copies[t.key].append(Submission(key=t.key, job=job, job_id=str(job.job_id), backend="slurm",
                                                partition=partition, resources=res))
        return [(t, copies[t.key]) for t in ts]

    def _submit_packs(self, ts: list[Tracked], mem_gb: float | None,
                      exclude: list[str]) -> list[tuple[Tracked, Started | Refused]]:
        """runs_per_gpu=k: one job (an array task) per k cells, holding the launcher's gres (one GPU)
        and k x cpus_per_task and k x mem_gb; each cell runs as its own job step with mem_gb and
        XLA_PYTHON_CLIENT_MEM_FRACTION=1/k (slurm_pack.py). A QOS GPU cap of G then runs G x k cells."""
        assert self.tasks is not None and self.folder is not None
        k = int(self.params["runs_per_gpu"])
        cpus = int(self.params.get("cpus_per_task") or 1)
        cell_mem = mem_gb if mem_gb is not None else self.params.get("mem_gb")
        whole = cell_resources("slurm", self.params, mem_gb=mem_gb, gpus=None)
        # each cell costs its share of the job's GPU(s): 1/k, or 1/m in a last pack of m < k cells
        shares = {m: {**whole, "gpus": round(float(whole["gpus"] or 0) / m, 4), "packed": m} for m in range(1, k + 1)}
        ex = make_executor("slurm", self.folder, {**self.params, "cpus_per_task": k * cpus},
                           mem_gb=k * float(cell_mem) if cell_mem else None, exclude=exclude)
        packs = [ts[i:i + k] for i in range(0, len(ts), k)]
        fraction = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{1.0 / k:.3f}", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        try:
            with ex.batch():
                jobs = [ex.submit(PackedCells([self.tasks(t.payload, {**self.base_env, **fraction, "SDS_PACK_SLOT": str(i)},
                                                          shares[len(pack)])
                                               for i, t in enumerate(pack)],
                                              folder=str(self.folder), mem=slurm_mem(cell_mem), cpus_per_cell=cpus))
                        for pack in packs]
        except Exception as e:  # noqa: BLE001 (sbatch refused: say why, per cell)
            why = (f"sbatch refused the packed submission ({k} cells per job, exclude {','.join(exclude) or '-'}, "
                   f"mem {cell_mem} GB per cell): {str(e).strip()[-400:]}")
            return [(t, Refused(why)) for t in ts]
        out: list[tuple[Tracked, Started | Refused]] = []
        for pack, job in zip(packs, jobs):
            res = shares[len(pack)]
            for slot, t in enumerate(pack):
                pre_register(t.rd, job_id=str(job.job_id), resources=res, sweep_id=self.tasks.sweep_id,
                             partition=self.params.get("partition"), exclude=exclude, pack_slot=slot)
                out.append((t, [Submission(key=t.key, job=job, job_id=str(job.job_id), backend="slurm", slot=slot,
                                           partition=self.params.get("partition"), resources=res)]))
        return out

    def refresh(self, active: list[Tracked]) -> None:
        self.queue.refresh([s.job_id for t in active for s in t.subs])

    def state_lookup(self) -> Callable[[str], str | None]:
        return self.queue.state

    def alive(self, t: Tracked, sub: Any) -> bool:
        st = self.queue.state(sub.job_id)
        if st is None:  # just submitted, not visible yet: give the scheduler a minute
            first = t.first_seen_unknown.setdefault(sub.job_id, time.time())
            return time.time() - first < 60
        if getattr(sub, "slot", None) is not None and self.folder is not None \
                and read_slot_exit(self.folder, sub.job_id, sub.slot) is not None:
            return False  # a packed cell's step ended; its job runs on for its neighbours
        return st.split()[0] in SLURM_ALIVE

    def kill(self, t: Tracked, view: Any) -> None:
        # A supervisor on the compute node itself SIGKILLs the training process directly first.
        if view.pid and view.host == host():
            try:
                os.kill(int(view.pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        for sub in t.subs:
            if getattr(sub, "slot", None) is not None:  # packed: its own step only, never the neighbours'
                self._kill_step(sub)
            else:
                _SlurmQueue.cancel(sub.job_id, kill=True)

    @staticmethod
    def _kill_step(sub: Any) -> None:
        name = STEP_NAME.format(slot=sub.slot)
        q = subprocess.run(["squeue", "-h", "-s", "-j", str(sub.job_id).split("_")[0], "-o", "%i|%j"],
                           check=False, capture_output=True, text=True, timeout=60)
        for line in q.stdout.splitlines():
            step, _, step_name = line.partition("|")
            if step_name == name:
                subprocess.run(["scancel", "--signal=KILL", step], check=False, capture_output=True, timeout=60)

    def cancel(self, sub: Any) -> None:
        _SlurmQueue.cancel(sub.job_id)

    def exclude_nodes(self, active: list[Tracked], nodes: list[str]) -> list[str]:
        """`scontrol update JobId=.. ExcNodeList=..` for every pending job of the active cells (the
        sweep's exclude list, merged with the job's own `hydra.launcher.exclude`)."""
        static = set((self.params.get("exclude") or "").split(",")) - {""}
        changed = []
        for t in active:
            for s in t.subs:
                if (self.queue.state(s.job_id) or "").split(" ")[0] != "PENDING":
                    continue
                p = subprocess.run(["scontrol", "update", f"JobId={s.job_id}",
                                    f"ExcNodeList={','.join(sorted(static | set(nodes)))}"],
                                   check=False, capture_output=True, text=True, timeout=60)
                if p.returncode == 0:
                    changed.append(s.job_id)
        return changed

    def own_stderr(self, sub: Any, stderr: str, evidence: dict[str, Any]) -> str:
        """A packed cell's job stderr holds its neighbours' lines too (slurmstepd's memory kill of
        another step): keep only the lines naming its own step (StepId=<job>.<step>)."""
        if getattr(sub, "slot", None) is None:
            return stderr
        own = {f"StepId={s} " for s in (evidence.get("packed_step"), evidence.get("packed_step_raw")) if s}
        return "\n".join(line for line in stderr.splitlines() if any(o in f"{line} " for o in own))

    def end_evidence(self, sub: Any, last: dict[str, Any]) -> dict[str, Any]:
        info = self.queue.info.get(sub.job_id, {}) if sub is not None else {}
        if getattr(sub, "slot", None) is not None:
            # a packed cell: its own step's record, never its job's (a neighbour's failure is not its own)
            info = self.queue.step(sub.job_id, STEP_NAME.format(slot=sub.slot)) or {
                "NodeList": info.get("NodeList") or ""}
        ev: dict[str, Any] = {"slurm_state": info.get("State"),
                              "node": info.get("NodeList") or last.get("node") or last.get("host")}
        code = info.get("ExitCode")
        if code is not None:
            ev["exit_code"] = code
            m = re.match(r"^(-?\d+):(\d+)$", str(code))
            if m and m.group(2) != "0":
                ev["signal"] = int(m.group(2))
        if info.get("steps"):
            ev["sacct_steps"] = info["steps"]
        if getattr(sub, "slot", None) is not None and self.folder is not None:
            rec = read_slot_exit(self.folder, sub.job_id, sub.slot) or {}
            rc = rec.get("returncode")
            ev["packed_step"] = info.get("step") or f"{sub.job_id} slot {sub.slot}"
            ev["packed_step_raw"] = info.get("raw")
            if "signal" not in ev and isinstance(rc, int) and rc > 128:  # srun: 128 + the task's signal
                ev["signal"] = rc - 128
        return ev
