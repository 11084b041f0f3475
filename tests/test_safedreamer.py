"""The real SafeDreamer (PKU-Alignment/SafeDreamer, its own venv) as cells of a sweep, end to end.

Needs SafeDreamer installed by scripts/install-safedreamer.sh: SDS_SAFEDREAMER_SRC (the directory
holding SafeDreamer/train.py) and SDS_SAFEDREAMER_PYTHON (its venv's python). `.ci/run` installs it
from the shared tarball and sets SDS_REQUIRE_SAFEDREAMER=1, so in CI a missing install fails
instead of skipping. SDS_SAFEDREAMER_JIT_CACHE (optional) shares compiled XLA programs between the
processes (docs/safedreamer.md has what it saves).

One test, because every SafeDreamer process costs minutes of JIT compilation on a CPU: a matrix of
v2_baseline and v2_u_only (seed 0) plus v2_baseline seed 1, a few thousand env frames each on the
debug-size model. One cell is killed after a checkpoint and resumes to done; status shows it RUNNING
with a moving env step while its metrics.jsonl is stale; ID and OOD episodes reach the report; a
re-run plans 0 submissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from safedreamer_sweep.core.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.safedreamer, pytest.mark.timeout(4800)]  # scripts/test.sh runs it at nice 19 beside the suite

AGENT_STEPS = 1000                # per cell: 5,000 env frames (action repeat 5), 1,000 of them the prefill
TOTAL = AGENT_STEPS * 5


def safedreamer_env() -> dict[str, str]:
    """The environment that points task=safedreamer at the installed SafeDreamer, or skip/fail."""
    src, py = os.environ.get("SDS_SAFEDREAMER_SRC", ""), os.environ.get("SDS_SAFEDREAMER_PYTHON", "")
    if src and py and Path(py).is_file() and (Path(src) / "SafeDreamer" / "train.py").is_file():
        return {"SDS_SAFEDREAMER_SRC": src, "SDS_SAFEDREAMER_PYTHON": py}
    reason = (f"SafeDreamer is not installed (SDS_SAFEDREAMER_SRC={src!r}, SDS_SAFEDREAMER_PYTHON={py!r}). Fix: "
              f"bash scripts/install-safedreamer.sh <SafeDreamer checkout or .tar.gz> and export the two paths "
              f"it prints")
    if os.environ.get("SDS_REQUIRE_SAFEDREAMER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def sweep_args(store: Path, *overrides: str, max_parallel: int = 2) -> list[str]:
    return ["-m", "task=safedreamer", f"store.root={store}", f"task.vars.agent_steps={AGENT_STEPS}",
            f"task.total_steps={TOTAL}",
            "task.vars.log_every=3600",     # metrics.jsonl: one row at the start, then stale for an hour
            "task.vars.save_every=10",      # a checkpoint (and the partial replay chunk) every 10 s
            # 100 eval_only agent steps per kind, in episodes cut at 50 agent steps (--wrapper.length 49; the
            # last flag wins): at least one episode. No videos (task.vars.eval_video defaults to false).
            "task.vars.eval_agent_steps=100", 'task.vars.eval_args=["--wrapper.length","49"]', "eval.episodes=1",
            "task.probe_every_s=2", "hydra.launcher.progress=plain", f"hydra.launcher.max_parallel={max_parallel}",
            "hydra.launcher.stall_after=1800", *overrides]


def sds_popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "safedreamer_sweep", *args], cwd=ROOT,
                            env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def status_cells(store: Path, *, cli: bool = False) -> dict[str, dict]:
    """The status document's cells: in this process (what `status --json` prints, without a Python
    start-up per read: at nice 19 beside the suite a start-up can take minutes), or through the CLI,
    `safedreamer-sweep status STORE --json` (exits 0 only when every cell is done)."""
    if cli:
        p = subprocess.run([sys.executable, "-m", "safedreamer_sweep.commands.cli", "status", str(store), "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        doc = json.loads(p.stdout)
    else:
        from safedreamer_sweep.commands import status

        doc = json.loads(json.dumps(status.collect(store), default=str))
    return {f"{c['config']}/{c['seed']}": c for c in doc["cells"]}


def stop_sweep(p: subprocess.Popen | None) -> None:
    """After a failed test: SIGINT (the sweep stops its cells) and up to 5 min for it to exit; a sweep
    still running then is killed with its cells by stop_cells_of (its command line names the store).
    Never raises: the failure that brought us here is the one to report."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=300)


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text()[-4000:] if log else ''}")
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_cells_of(store: Path) -> None:
    """After a failed test: kill the cell processes (and their SafeDreamer children) of this store only."""
    mine = [p for p in psutil.process_iter(["cmdline"]) if str(store) in " ".join(p.info["cmdline"] or [])]
    for p in mine:
        with contextlib.suppress(psutil.Error):
            for q in [*p.children(recursive=True), p]:
                q.kill()


def run_dir_of(store: Path, config: str, seed: int) -> RunDir | None:
    found = sorted((store / "runs" / config / f"seed_{seed}").glob("*/spec.json"))
    return RunDir(found[0].parent) if found else None


def test_real_safedreamer_cells_train_resume_evaluate_and_report(tmp_path):
    env = safedreamer_env()
    store = tmp_path / "store"
    log_a, log_b = tmp_path / "sweep_a.log", tmp_path / "sweep_b.log"
    sweep_b: subprocess.Popen | None = None
    args_a = sweep_args(store, "config=v2_baseline,v2_u_only", "seed=0")
    sweep = sds_popen(args_a, env, log_a)
    try:
        rd = wait_for(lambda: run_dir_of(store, "v2_u_only", 0), 120, "the v2_u_only run dir", sweep, log_a)
        base_rd = wait_for(lambda: run_dir_of(store, "v2_baseline", 0), 120, "the v2_baseline run dir", sweep, log_a)
        # Past compilation, training: the checkpoint saved at start and one saved on the save_every timer.
        for cell in (rd, base_rd):
            wait_for(lambda c=cell: len({s for s, _ in c.checkpoints()}) >= 2, 2400,
                     f"a second checkpoint of {cell.path}", sweep, log_a)

        # --- kill v2_u_only after that checkpoint (SIGKILL of the cell process, as a lost node or an OOM
        # kill would; SafeDreamer gets SIGTERM from its parent-death signal): the sweep resumes it.
        killed_at = int((rd.read_progress() or {})["env_step"])
        last_ckpt = max(s for s, _ in rd.checkpoints())
        os.kill(int(rd.read_state()["attempts"][-1]["pid"]), signal.SIGKILL)
        # --- the second seed of one config, in another sweep on the same store, started now so that the
        # two cores stay busy (each SafeDreamer process compiles for minutes).
        sweep_b = sds_popen(sweep_args(store, "config=v2_baseline", "seed=1", max_parallel=1),
                            env, log_b)

        # --- the resumed v2_u_only: RUNNING with a moving env step while its metrics.jsonl is stale. Its
        # new attempt trains from the checkpoint (fresh log dir) once it has compiled again.
        def resumed_and_saving() -> bool:
            resumes = rd.read_state().get("resumes") or []
            return bool(resumes) and max(s for s, _ in rd.checkpoints()) > resumes[0]["from_step"]

        wait_for(resumed_and_saving, 2400, "the resumed attempt's first timer checkpoint", sweep, log_a)
        metrics = max((rd.path / "sd").glob("*/metrics.jsonl"))  # the newest log dir: this attempt's
        seen: list[tuple] = []
        deadline = time.time() + 900
        while time.time() < deadline:
            cell = status_cells(store)["v2_u_only/0"]
            seen.append((cell["phase"], cell["env_step"], metrics.stat().st_mtime, (rd.read_progress() or {}).get("probe")))
            a, b = seen[-2:] if len(seen) > 1 else (None, None)
            if a and a[0] == b[0] == "running" and b[1] > a[1] and a[2] == b[2] and b[3] == "replay":
                break  # the env step moved (from the replay chunks) while metrics.jsonl was not written
            time.sleep(4)
        else:
            raise AssertionError(f"no two status reads showed RUNNING with a moving env step and a stale "
                                 f"metrics.jsonl (phase, env_step, metrics mtime, probe): {seen}")
        assert sweep.wait(timeout=2400) == 0, log_a.read_text()[-4000:]
        assert sweep_b.wait(timeout=1800) == 0, log_b.read_text()[-4000:]
    finally:
        for p in (sweep, sweep_b):
            stop_sweep(p)
        stop_cells_of(store)
    assert "1 to submit" in log_b.read_text(), log_b.read_text()[-3000:]
    assert {c["phase"] for c in status_cells(store, cli=True).values()} == {"done"}
    out_a = log_a.read_text()

    state = rd.read_state()
    assert state["trained"] and state["trained_steps"] >= TOTAL, state
    assert len(state["attempts"]) == 2, state["attempts"]
    resume, = state["resumes"]
    assert resume["attempt"] == 2 and resume["from_step"] >= last_ckpt > 0
    assert resume["reached"] >= killed_at and resume["lost_frames"] == resume["reached"] - resume["from_step"]
    assert resume["not_restored"] == ["replay buffer", "PID-Lagrangian multiplier state"]
    second = (rd.logs_dir / "attempt_02.out").read_text()
    assert f"--run.from_checkpoint {resume['checkpoint']}" in second
    # The u knob reached SafeDreamer as --pessimistic; the baseline ran without it.
    assert "--pessimistic True" in second
    assert "--pessimistic False" in (base_rd.logs_dir / "attempt_01.out").read_text()

    # --- ID and OOD episodes of every cell, in the cell and in the report.
    import pandas as pd

    cells = {(c, s): run_dir_of(store, c, s) for c, s in (("v2_baseline", 0), ("v2_u_only", 0), ("v2_baseline", 1))}
    for (config, seed), cell_rd in cells.items():
        for kind, env_id in (("id", "SafetyPointGoal1-v0"), ("ood", "SafetyCarGoal1-v0")):
            doc = cell_rd.read_eval(kind)
            assert doc and doc["env_id"] == env_id and len(doc["episodes"]) >= 1, (config, seed, kind, doc)
            assert all(e["return"] is not None and e["cost"] is not None for e in doc["episodes"])
            # the evaluated policy is the one training ended with (the install script's save-at-end fix):
            # the checkpoint holds every trained step (a last driver pass may overshoot by < 100 agent steps)
            assert doc["checkpoint_step"] >= doc["trained_steps"] > 0 and doc["checkpoint_behind"] == 0, (config, seed, doc)
        # eval_video=false reached eval_only (the install script's eval-render fix): no 1024x1024 videos
        assert not list(cell_rd.path.rglob("*.mp4")), list(cell_rd.path.rglob("*.mp4"))
    from safedreamer_sweep.report import build_report

    report = build_report(store)  # both sweeps wrote one at their end; this one sees every cell finished
    evals = pd.read_parquet(report / "evals.parquet")
    for config, seed in cells:
        for kind in ("id", "ood"):
            assert len(evals[(evals.config == config) & (evals.seed == seed) & (evals.kind == kind)]) >= 1
    text = "\n".join(p.read_text() for p in report.glob("*.md"))
    assert "v2_u_only seed 0: attempt 2 resumed from env step" in text and "did not restore: replay buffer" in text

    # --- a re-run plans nothing.
    rerun = subprocess.run([sys.executable, "-m", "safedreamer_sweep", *args_a], cwd=ROOT, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0 and "0 to submit" in rerun.stdout + rerun.stderr, rerun.stdout + rerun.stderr
    print(f"\n[safedreamer] sweep A:\n{out_a[-2500:]}")
