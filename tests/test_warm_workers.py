"""Warm workers (sweep/backends/warm_pool.py, warm_worker.py): a slot's worker forks one fresh child per cell.

The worker alone (real worker processes, stdlib tasks): one worker runs cell after cell, a crashed
or killed cell ends alone with its exit record, a cell past its time limit is checkpointed and
started again under its job id, and the next cell gets a fresh child of the same worker; a cell's process state
(its working directory) does not reach the next. Then the launcher:
two real cells run one after the other in one worker give the same results as the same cells run
the old way, each in a new interpreter (hydra.launcher.warm_workers=false)."""

from __future__ import annotations

import functools
import json
import operator
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY, sds

from safedreamer_sweep.core.store import Store
from safedreamer_sweep.sweep.backends.warm_pool import BASE_PRELOAD, WarmPool
from safedreamer_sweep.sweep.exit_records import read_exit_record


def _wait_done(job, timeout: float = 60.0) -> int:
    deadline = time.time() + timeout
    while (code := job._process.poll()) is None:
        assert time.time() < deadline, f"job {job.job_id} still running after {timeout} s"
        time.sleep(0.05)
    return code


def test_one_worker_runs_cell_after_cell_and_a_crash_or_kill_ends_only_that_cell(tmp_path):
    pool = WarmPool(tmp_path / "warm")
    folder = tmp_path / "submitit"
    env = {"SDS_TEST_SLOT": "0", "PYTHONPATH": str(Path(__file__).parent)}  # this module imports there
    try:
        def run(fn, *a):
            return pool.submit(0, env, list(BASE_PRELOAD), functools.partial(fn, *a), folder, timeout_s=0,
                               signal_delay_s=0)

        first = run(os.chdir, str(tmp_path))  # this cell changes its working directory ...
        assert _wait_done(first) == 0
        second = run(os.getcwd)  # ... the next one does not inherit it: a fresh child of the same worker
        assert _wait_done(second) == 0 and second.result() == os.getcwd()
        crash = run(operator.truediv, 1, 0)
        assert _wait_done(crash) == 1
        assert "ZeroDivisionError" in Path(crash.paths.stderr).read_text()
        hung = run(time.sleep, 60)
        time.sleep(0.5)
        os.kill(int(hung.job_id), signal.SIGKILL)  # what the supervisor does to a stalled cell: its pid
        assert _wait_done(hung) == -9
        rec = read_exit_record(hung.paths.folder, hung.job_id)
        assert rec["signal_name"] == "SIGKILL" and rec["warm_worker"] and rec["pid"] == int(hung.job_id)
        # past the local time limit: the requeue signal, checkpoint, and the task started again under
        # its job id, as submitit's controller does it
        late = pool.submit(0, env, list(BASE_PRELOAD), SleepsPastItsLimitOnce(str(tmp_path / "requeued")), folder,
                           timeout_s=3, signal_delay_s=2)
        assert _wait_done(late, timeout=30) == 0 and late.result() == "second run"
        assert "Caught signal SIGUSR2" in Path(late.paths.stderr).read_text()
        rec = read_exit_record(late.paths.folder, late.job_id)
        assert rec["job_id"] == late.job_id and rec["pid"] != int(late.job_id)  # a new child, the same job
        after = run(operator.add, 2, 3)
        assert _wait_done(after) == 0 and after.result() == 5
        jobs = [first, second, crash, hung, late, after]
        assert len({j.job_id for j in jobs}) == 6  # a child per cell ...
        workers = {read_exit_record(j.paths.folder, j.job_id)["watcher_pid"] for j in jobs}
        assert workers == {pool.workers[0].proc.pid} and pool.workers[0].alive  # ... of one worker, still up
        assert Path(after.paths.stdout).exists()  # each child has its own submitit logs
    finally:
        pool.close()


def test_a_cell_sees_the_launchers_environment_of_its_submission(tmp_path, monkeypatch):
    """A cold cell inherits the launcher's environment when it is submitted; so does a warm one. A
    variable numpy sets for a moment while it imports (in a launcher thread) keeps the worker."""
    pool = WarmPool(tmp_path / "warm")
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    def run(fn, *a):
        return pool.submit(0, env, list(BASE_PRELOAD), functools.partial(fn, *a), tmp_path / "submitit",
                           timeout_s=0, signal_delay_s=0)

    try:
        assert _wait_done(job := run(os.environ.get, "SDS_TEST_LATE")) == 0 and job.result() is None
        worker = pool.workers[0].proc.pid
        monkeypatch.setenv("OPENBLAS_MAIN_FREE", "1")
        assert _wait_done(job := run(os.environ.get, "OPENBLAS_MAIN_FREE")) == 0 and job.result() == "1"
        assert pool.workers[0].proc.pid == worker  # the same worker; its cell saw the variable as set now
        monkeypatch.setenv("SDS_TEST_LATE", "set after the worker started")
        assert _wait_done(job := run(os.environ.get, "SDS_TEST_LATE")) == 0
        assert job.result() == "set after the worker started"
        assert pool.workers[0].proc.pid != worker  # a new worker: its imports must see what a cold cell's would
    finally:
        pool.close()


def test_a_cell_that_ended_while_the_supervisor_was_busy_wakes_it_at_once():
    """LocalBackend.wait: a cell's process that ended before the call (while the supervisor was
    submitting) returns at once, so its slot is refilled now, not a poll later; once woken for,
    it does not wake the supervisor again (no busy loop); a process ending during the wait wakes it."""
    from types import SimpleNamespace

    from safedreamer_sweep.sweep.backends.local import LocalBackend

    class Process:  # as submitit's LocalJob holds a Popen: poll() is None while it runs
        def __init__(self, code: int | None) -> None:
            self.code = code

        def poll(self) -> int | None:
            return self.code

    procs = [Process(0), Process(None)]
    active = [SimpleNamespace(subs=[SimpleNamespace(job=SimpleNamespace(_process=p))]) for p in procs]
    backend = LocalBackend()
    t0 = time.monotonic()
    backend.wait(active, 60)
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    backend.wait(active, 0.5)
    assert time.monotonic() - t0 >= 0.5  # the same ended process: slept the whole timeout
    threading.Timer(0.3, lambda: setattr(procs[1], "code", 0)).start()
    t0 = time.monotonic()
    backend.wait(active, 60)
    assert time.monotonic() - t0 < 10


class SleepsPastItsLimitOnce:
    """A checkpointable task: sleeps until the time limit; run again after its requeue, it returns."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self) -> str:
        if Path(self.marker).exists():
            return "second run"
        time.sleep(60)
        return "not stopped"

    def checkpoint(self) -> object:
        import submitit

        Path(self.marker).write_text("requeued")
        return submitit.helpers.DelayedSubmission(self)


def _results(store: Path) -> dict[str, dict]:
    out = {}
    for rd in Store(store).iter_runs():
        curves = [{k: v for k, v in json.loads(line).items() if k not in ("steps_per_s", "wall_time_s")}
                  for line in (rd.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out[rd.path.parts[-2]] = {"id": rd.read_eval("id")["summary"], "ood": rd.read_eval("ood")["summary"],
                                  "curves": curves, "trained": rd.read_state().get("trained_steps")}
    return out


def _exit_records(store: Path) -> list[dict]:
    recs = []
    for rd in Store(store).iter_runs():
        for a in rd.read_state()["attempts"]:
            rec = read_exit_record(store / "launcher" / "submitit", str(a["job_id"]))
            if rec:
                recs.append(rec)
    return recs


@pytest.mark.slow
def test_two_cells_in_one_worker_give_the_results_of_two_processes(tmp_path):
    args = ["-m", "config=v2_baseline", "seed=0,1", *TINY, "hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5",
            "hydra.launcher.max_parallel=1", "hydra.sweep.dir=${store.root}/multirun"]
    results = {}
    for mode in ("true", "false"):
        store = tmp_path / f"store_{mode}"
        p = sds(*args, f"store.root={store}", f"hydra.launcher.warm_workers={mode}", timeout=400)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        results[mode] = _results(store)
        recs = _exit_records(store)
        assert len(recs) == 2
        if mode == "true":  # both cells were children of one worker
            assert all(r.get("warm_worker") for r in recs) and len({r["watcher_pid"] for r in recs}) == 1
            assert len({r["pid"] for r in recs}) == 2
        else:
            assert not any(r.get("warm_worker") for r in recs)
    assert results["true"].keys() == {"seed_0", "seed_1"}
    assert results["true"] == results["false"]


def test_a_cell_that_registers_its_attempt_before_the_launcher_does_has_one_attempt(tmp_path):
    """A warm cell starts within milliseconds of its submission, so it may register its attempt
    before the launcher's pre_register returns: the launcher then adds to that attempt and opens no
    second one (seen under load: a `running` attempt never closed beside the `done` one)."""
    from types import SimpleNamespace

    from safedreamer_sweep.core.run_dir import RunDir
    from safedreamer_sweep.sweep.cell_task import CellTask
    from safedreamer_sweep.sweep.submit import pre_register

    (tmp_path / "cell").mkdir()
    rd = RunDir(tmp_path / "cell")
    submitted = time.time()
    cell = SimpleNamespace(resources={"cpus": 1}, sweep_id="sweep-1")
    assert CellTask._register_attempt(cell, rd, "4242") == 1  # the cell, first
    rd.begin_attempt(start_step=0)
    pre_register(rd, job_id="4242", resources={"cpus": 1, "env": {}}, sweep_id="sweep-1", partition=None,
                 exclude=None, submitted_at=submitted)  # the launcher, after
    rd.end_attempt("done", end_step=1024)
    (attempt,) = rd.read_state()["attempts"]
    assert attempt["outcome"] == "done" and attempt["job_id"] == "4242" and attempt["exclude"] == []
    assert attempt["submitted_at"] == submitted <= attempt["started_at"]
    # the usual order: the launcher first, then the cell fills in the same attempt
    (tmp_path / "other").mkdir()
    rd = RunDir(tmp_path / "other")
    pre_register(rd, job_id="7", resources={}, sweep_id="sweep-1", partition=None, exclude=None)
    CellTask._register_attempt(cell, rd, "7")
    rd.begin_attempt(start_step=0)
    rd.end_attempt("done")
    assert [a["outcome"] for a in rd.read_state()["attempts"]] == ["done"]
