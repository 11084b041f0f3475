"""The launcher on the multi-node local Slurm (scripts/start-slurm.sh, SLURM_NODES=3: nodes n1-n3,
partitions debug = all, main = n1-n2, edge = n3, account lab with QOS capgpu capping gres/gpu at 2
per user), with the REAL cell task on tiny budgets:

- a bad node among good ones: a node fault planted on n2 (SDS_INJECT_FAULT=node_fault@n2, keyed by
  SLURMD_NODENAME; tasks/run.py) ends with every cell done on the other nodes, n2 excluded for the
  rest of the sweep (and, with exclude_bad_nodes_across_sweeps, for the next sweep on the store),
  and status and the report naming n2, its evidence and the cells it cost; a Python error planted
  on n3 never excludes n3;
- race_partitions on two partitions that really differ (main, edge with its node busy): the copy
  that starts first runs the cell once, the other is cancelled before it starts;
- the QOS GPU cap: under capgpu (2 GPUs) 2 one-GPU cells run and the others wait with squeue's
  reason QOSMaxGRESPerUser, shown by status (text and JSON);
- packing (runs_per_gpu=2): under the 2-GPU cap 4 cells run at once and no more, each in its own
  job step; a crash planted in one packed cell leaves its neighbour running to done.

Each test prints its timeline (seconds from the launch) for the issue's note.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TINY, sds

from safedreamer_sweep.commands import status
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.claim import race_winner

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SLURM = ["hydra/launcher=sds_slurm", "hydra.launcher.poll_s=1", "hydra.launcher.mem_gb=1",
         "hydra.sweep.dir=${store.root}/multirun"]


def nodes() -> dict[str, set[str]]:
    rows = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%R"], check=True, capture_output=True, text=True,
                          timeout=30).stdout.split()
    out: dict[str, set[str]] = {}
    for r in rows:
        node, part = r.split("|")
        out.setdefault(part, set()).add(node)
    return out


@pytest.fixture(scope="module", autouse=True)
def multi_node_cluster():
    parts = nodes()
    if parts.get("edge") != {"n3"} or parts.get("main") != {"n1", "n2"}:
        pytest.skip(f"needs the three-node cluster of scripts/start-slurm.sh (SLURM_NODES=3); sinfo: {parts}")


def states(store: Path) -> dict[str, dict]:
    return {f"{rd.path.parts[-3]}/{rd.path.parts[-2]}": rd.read_state() for rd in Store(store).iter_runs()}


def sacct(*jobs: str) -> list[dict]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "--format=JobID,State,Start,End,NodeList,Partition"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return [dict(zip(("id", "state", "start", "end", "node", "partition"), line.split("|"))) for line in out.splitlines()]


def budget(steps: int) -> list[str]:
    return [o for o in TINY if not o.startswith("trainer.total_steps")] + [f"trainer.total_steps={steps}"]


def timeline(t0: float, events: list[tuple[float, str]]) -> str:
    return "\n".join(f"  +{t - t0:6.1f}s  {what}" for t, what in sorted(events))


def attempt_events(st: dict[str, dict]) -> list[tuple[float, str]]:
    ev = []
    for key, s in st.items():
        for a in s.get("attempts") or []:
            if a.get("started_at"):
                ev.append((a["started_at"], f"{key} attempt {a['n']} starts on {a.get('node')} (job {a.get('job_id')})"))
            if a.get("ended_at"):
                ev.append((a["ended_at"], f"{key} attempt {a['n']} ends {a.get('outcome')}"
                           + (f" ({a.get('cause')})" if a.get("cause") else "")))
    return ev


def test_a_node_fault_on_one_node_ends_with_every_cell_done_on_the_others(tmp_path):
    store = tmp_path / "store"
    t0 = time.time()
    # cpus_per_task=8 (a whole node): the first three cells start on n1, n2 and n3, the fourth waits
    p = sds("-m", "config=v2_baseline", "seed=0,1,2,3", f"store.root={store}", *TINY, *SLURM,
            "hydra.launcher.cpus_per_task=8", "hydra.launcher.retry_errors=true",
            "+hydra.launcher.env.SDS_INJECT_FAULT='node_fault@n2 error@n3:1'", timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    st = states(store)
    attempts = [(k, a) for k, s in st.items() for a in s["attempts"]]
    print(f"node-fault sweep ({time.time() - t0:.0f}s):\n" + timeline(t0, attempt_events(st)))
    assert len(st) == 4 and all(s["phase"] == "done" for s in st.values())
    on_n2 = [a for _, a in attempts if a.get("node") == "n2"]
    assert on_n2 and all(a["cause"] == "node_fault" and "CUDA error: busy" in a["evidence"] for a in on_n2)
    assert all(a.get("node") != "n2" for _, a in attempts if a["outcome"] == "done")
    first_fault = min(a["ended_at"] for a in on_n2)
    # every attempt submitted after the fault was recorded avoided n2 (and only n2)
    later = [a for _, a in attempts if a.get("submitted_at", 0) > first_fault + 1]
    assert later and all(a.get("exclude") == ["n2"] for a in later), later
    assert "excluded for the rest of the sweep" in p.stdout
    # a Python error on n3 is the cell's, not the node's: n3 is never excluded and runs cells
    errors = [a for _, a in attempts if a.get("cause") == "error"]
    assert errors and all(a["node"] == "n3" for a in errors)
    assert all("n3" not in (a.get("exclude") or []) for _, a in attempts)

    doc = json.loads(sds("status", str(store), "--json").stdout)
    (bad,) = doc["bad_nodes"]
    assert bad["node"] == "n2" and "CUDA error: busy" in bad["evidence"] and bad["attempts"] == len(on_n2)
    assert sorted(bad["cells"]) == sorted({f"v2_baseline seed {k.split('_')[-1]}" for k, a in attempts
                                           if a.get("node") == "n2"})
    text = sds("status", str(store), "--width", "250").stdout
    assert "bad node n2:" in text and "CUDA error: busy" in text, text[-3000:]
    rep = sds("report", str(store), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    decision = (tmp_path / "report" / "decision.md").read_text()
    assert "Bad node n2:" in decision and "CUDA error: busy" in decision and "device-hours lost on it" in decision
    print("status:", next(line for line in text.splitlines() if "bad node" in line))
    print("report:", next(line for line in decision.splitlines() if "Bad node" in line))

    # a later sweep on this store keeps n2 out when asked to
    again = sds("-m", "config=v2_baseline", "seed=4", f"store.root={store}", *TINY, *SLURM,
                "hydra.launcher.exclude_bad_nodes_across_sweeps=true", timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "excluding node(s) n2: node faults recorded in this store" in again.stdout
    (a,) = states(store)["v2_baseline/seed_4"]["attempts"]
    assert a["exclude"] == ["n2"] and a["node"] != "n2" and a["outcome"] == "done"


def test_racing_two_real_partitions_runs_the_cell_once_on_the_first_starter(tmp_path):
    store = tmp_path / "store"
    # edge's only node is busy: its copy waits (Resources), main's copy starts first
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "edge", "-w", "n3", "-c", "8", "-J", "blocker",
                              f"--output={tmp_path}/%j.out",
                              "--wrap", "sleep 600"], check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    t0 = time.time()
    try:
        p = sds("-m", "config=v2_baseline", "seed=0", f"store.root={store}", *TINY, *SLURM,
                "hydra.launcher.race_partitions=[main,edge]", "hydra.launcher.cpus_per_task=8", timeout=300)
    finally:
        subprocess.run(["scancel", blocker], check=False, timeout=30)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (st,) = states(store).values()
    rd = next(Store(store).iter_runs())
    doc = json.loads(rd.claim_path.read_text())
    winner = race_winner(rd)
    loser = next(j for j in doc["job_ids"] if j != winner)
    rows = {r["id"]: r for r in sacct(winner, loser)}
    print(f"race ({time.time() - t0:.0f}s): winner {rows[winner]}, loser {rows[loser]}\n"
          + timeline(t0, attempt_events({"seed_0": st})))
    assert st["phase"] == "done" and len(st["attempts"]) == 1 and st["attempts"][0]["job_id"] == winner
    assert rows[winner]["partition"] == "main" and rows[winner]["state"] == "COMPLETED"
    assert rows[loser]["partition"] == "edge" and rows[loser]["state"].startswith("CANCELLED")
    # cancelled before it ever started: never given a node (sacct then shows its start as its
    # cancellation time, or none, by version)
    assert rows[loser]["node"] in ("None assigned", "") and rows[loser]["start"] in ("None", "Unknown", "", rows[loser]["end"])
    assert f"job {winner} started first; cancelled racing copy {loser} (edge)" in p.stdout
    assert len(list(rd.path.glob("logs/attempt_*.out"))) == 1  # the cell ran once


def _watch_queue(store: Path, seconds: float, want_running: int, want_queued: int) -> tuple[dict, list[tuple[float, str]]]:
    """Poll status until `want_running` cells run and `want_queued` wait; returns the doc and what was seen."""
    seen: list[tuple[float, str]] = []
    deadline, doc, last = time.time() + seconds, {}, ""
    while time.time() < deadline:
        doc = status.collect(store, sample_cpu=False)
        if doc["verdict"] != last:
            last = doc["verdict"]
            seen.append((time.time(), f"status: {last}"))
        running = [c for c in doc["cells"] if c["phase"] == "running"]
        queued = [c for c in doc["cells"] if c.get("queue_reason")]
        if len(running) == want_running and len(queued) == want_queued:
            return doc, seen
        time.sleep(1)
    raise AssertionError(f"never saw {want_running} running and {want_queued} queued: {last}\n{doc.get('cells')}")


def _max_concurrent(rows: list[dict]) -> int:
    spans = [(datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"]) if r["end"] not in ("Unknown", "None", "")
              else datetime.now()) for r in rows if r["start"] not in ("Unknown", "None", "")]
    return max((sum(1 for a, b in spans if a <= t < b) for t, _ in spans), default=0)


def test_a_qos_gpu_cap_runs_two_and_status_shows_the_rest_queued_with_its_reason(tmp_path):
    store = tmp_path / "store"
    t0 = time.time()
    p = sds("-m", "config=v2_baseline", "seed=0,1,2,3", f"store.root={store}", *budget(65536), *SLURM,
            "hydra.launcher.account=lab", "hydra.launcher.qos=capgpu", "hydra.launcher.gres=gpu:1",
            "hydra.launcher.wait=false", timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = [j for d in Store(store).read_sweep_manifests() for js in d["jobs"].values() for j in js]
    try:
        doc, seen = _watch_queue(store, 180, want_running=2, want_queued=2)
        queued = [c for c in doc["cells"] if c.get("queue_reason")]
        assert all(c["queue_reason"] == "QOSMaxGRESPerUser" for c in queued), queued
        assert "2 running" in doc["verdict"] and "2 queued: 2 QOSMaxGRESPerUser" in doc["verdict"], doc["verdict"]
        js = json.loads(sds("status", str(store), "--json").stdout)
        assert sorted(c.get("queue_reason") or "-" for c in js["cells"]) == ["-", "-", "QOSMaxGRESPerUser", "QOSMaxGRESPerUser"]
        text = sds("status", str(store), "--width", "250").stdout
        assert "2 queued: 2 QOSMaxGRESPerUser" in text and text.count("(QOSMaxGRESPerUser") >= 2, text[-3000:]
        time.sleep(3)  # the cap holds: still no third job running
        running = [r for r in sacct(*jobs) if r["state"] == "RUNNING"]
        assert len(running) == 2, running
        print(f"QOS cap ({time.time() - t0:.0f}s):\n" + timeline(t0, seen))
    finally:
        subprocess.run(["scancel", *jobs], check=False, capture_output=True, timeout=60)
    assert _max_concurrent(sacct(*jobs)) <= 2


CAPPED = ["hydra.launcher.account=lab", "hydra.launcher.qos=capgpu", "hydra.launcher.gres=gpu:1"]


def test_packing_two_cells_per_gpu_under_a_two_gpu_cap_runs_four_at_once_and_no_more(tmp_path):
    store = tmp_path / "store"
    t0 = time.time()
    p = sds("-m", "config=v2_baseline", "seed=0,1,2,3,4,5", f"store.root={store}", *budget(65536), *SLURM, *CAPPED,
            "hydra.launcher.runs_per_gpu=2", "hydra.launcher.wait=false", timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = sorted({j for d in Store(store).read_sweep_manifests() for js in d["jobs"].values() for j in js})
    try:
        assert len(jobs) == 3, jobs  # three packed jobs of two cells each
        doc, seen = _watch_queue(store, 240, want_running=4, want_queued=2)
        queued = [c for c in doc["cells"] if c.get("queue_reason")]
        assert all(c["queue_reason"] == "QOSMaxGRESPerUser" for c in queued), queued
        assert "4 running" in doc["verdict"] and "2 queued: 2 QOSMaxGRESPerUser" in doc["verdict"], doc["verdict"]
        time.sleep(3)  # the cap holds: still no third job running
        assert len([r for r in sacct(*jobs) if r["state"] == "RUNNING"]) == 2
        running = {k: s["attempts"][-1] for k, s in states(store).items() if s["attempts"][-1].get("outcome") == "running"}
        by_job: dict[str, list[dict]] = {}
        for a in running.values():
            by_job.setdefault(a["job_id"], []).append(a)
        assert len(running) == 4 and sorted(len(v) for v in by_job.values()) == [2, 2], running
        for pack in by_job.values():  # one GPU per job, two cells on it, each in its own step and process
            envs = [a["gpu_env"] for a in pack]
            assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.500" for e in envs), envs
            assert sorted(e["SDS_PACK_SLOT"] for e in envs) == ["0", "1"]
            assert len({e["SLURM_STEP_ID"] for e in envs}) == 2 and len({a["pid"] for a in pack}) == 2
            assert len({e.get("CUDA_VISIBLE_DEVICES") for e in envs}) == 1 and envs[0].get("CUDA_VISIBLE_DEVICES"), envs
            assert all(a["resources"]["gpus"] == 0.5 for a in pack)
        print(f"packing under the QOS cap ({time.time() - t0:.0f}s):\n" + timeline(t0, seen)
              + "\n" + json.dumps({k: {"job": a["job_id"], "node": a["node"], **a["gpu_env"]} for k, a in running.items()}))
    finally:
        subprocess.run(["scancel", *jobs], check=False, capture_output=True, timeout=60)
    assert _max_concurrent(sacct(*jobs)) <= 2


def _packed_sweep_with_a_fault_in_slot_1(tmp_path, fault: str, what: str, steps: int, *extra: str,
                                        watched: bool = False):
    """Two cells packed on one GPU, `fault` planted in slot 1's first attempt: the sweep must still end
    with exit 0 (`watched`: launched detached, then supervised to the end by `watch`). Returns
    (states, the faulted cell's key, its neighbour's key)."""
    from safedreamer_sweep.sweep.watch import watch

    store = tmp_path / "store"
    t0 = time.time()
    p = sds("-m", "config=v2_baseline", "seed=0,1", f"store.root={store}", *budget(steps), *SLURM, *CAPPED,
            "hydra.launcher.runs_per_gpu=2", *extra, *(["hydra.launcher.wait=false"] if watched else []),
            f"+hydra.launcher.env.SDS_INJECT_FAULT='{fault}'", timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    if watched:
        assert "detached: 2 job(s) submitted" in p.stdout, p.stdout[-3000:]
        assert watch(store, poll_s=1) == 0
    st = states(store)
    print(f"packed {what} ({time.time() - t0:.0f}s):\n" + timeline(t0, attempt_events(st)))
    first = {k: s["attempts"][0] for k, s in st.items()}
    (faulted,) = [k for k, a in first.items() if a["gpu_env"]["SDS_PACK_SLOT"] == "1"]
    (neighbour,) = [k for k in first if k != faulted]
    return st, faulted, neighbour


def test_a_crash_in_one_packed_cell_leaves_its_neighbour_running_to_done(tmp_path):
    st, crashed, neighbour = _packed_sweep_with_a_fault_in_slot_1(tmp_path, "crash@slot1:1", "crash", 2048)
    assert all(s["phase"] == "done" for s in st.values())
    c, n = st[crashed]["attempts"][0], st[neighbour]["attempts"][0]
    assert c["job_id"] == n["job_id"]  # they shared one allocation
    assert c["cause"] == "crash" and "SIGSEGV" in c["evidence"], c
    assert n["outcome"] == "done" and len(st[neighbour]["attempts"]) == 1 and n.get("cause") is None, n
    assert n["ended_at"] > c["ended_at"]  # it trained on after its neighbour died
    assert st[crashed]["attempts"][-1]["outcome"] == "done"  # the crashed cell was retried (once) to done


def test_an_oom_kill_of_one_packed_cell_is_its_own_and_its_neighbour_runs_to_done(tmp_path):
    # slot 1 allocates until its step's memory limit (mem_gb=1, enforced per step) kills it
    st, killed, neighbour = _packed_sweep_with_a_fault_in_slot_1(tmp_path, "oom@slot1:1", "oom", 2048)
    o, n = st[killed]["attempts"][0], st[neighbour]["attempts"][0]
    assert o["job_id"] == n["job_id"]
    assert o["cause"] == "oom" and "exceeded memory limit" in o["evidence"], o
    assert st[killed]["attempts"][-1]["resources"]["mem_gb"] == 1.5 and st[killed]["phase"] == "done"
    assert n["outcome"] == "done" and len(st[neighbour]["attempts"]) == 1 and n.get("cause") is None, n
    print({"oom": o["evidence"]})


@pytest.mark.parametrize("watched", [False, True], ids=["foreground", "detached-then-watch"])
def test_a_stalled_packed_cell_is_killed_alone_and_its_neighbour_trains_on(tmp_path, watched):
    # slot 1 hangs without progress: after stall_after the supervisor kills its step only (under
    # `watch`, by the slot recorded on its attempt; before, watch scancelled the whole job). Slot 0
    # trains for at least 48 s on any machine (48 checkpoints, 1 s after each), past the kill at ~30 s.
    st, hung, neighbour = _packed_sweep_with_a_fault_in_slot_1(tmp_path, "hang@slot1:1 slow=1@slot0:1", "stall", 24576,
                                                               "hydra.launcher.stall_after=30", watched=watched)
    h, n = st[hung]["attempts"][0], st[neighbour]["attempts"][0]
    assert h["job_id"] == n["job_id"] and h["cause"] == "stalled", h
    assert n["outcome"] == "done" and len(st[neighbour]["attempts"]) == 1, n
    assert n["ended_at"] > h["ended_at"] + 5  # it was still training when its neighbour was killed
    assert st[hung]["phase"] == "done"


def test_a_detached_packed_sweep_under_watch_retries_the_crashed_cell_alone(tmp_path):
    """Detached, two cells packed in one job, slot 1 crashes: `watch` judges the cell by its own step
    (crash, SIGSEGV: not `lost` from the job's state), resubmits it although the job runs on for its
    neighbour, and the neighbour is never touched."""
    st, crashed, neighbour = _packed_sweep_with_a_fault_in_slot_1(tmp_path, "crash@slot1:1", "crash, watched", 2048,
                                                                  watched=True)
    c, n = st[crashed]["attempts"][0], st[neighbour]["attempts"][0]
    assert c["job_id"] == n["job_id"] and c["pack_slot"] == 1 and c["cause"] == "crash" and "SIGSEGV" in c["evidence"], c
    assert st[crashed]["phase"] == "done" and st[crashed]["attempts"][-1]["job_id"] != c["job_id"]
    assert st[neighbour]["phase"] == "done" and len(st[neighbour]["attempts"]) == 1 and n.get("cause") is None, n

