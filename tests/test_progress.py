"""The foreground progress view (sweep/progress.py): counts, aggregate rate, ETA and the newest
failure from the supervisor's tracked cells; plain lines rate-limited; a live view in a terminal."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.sweep import progress
from safedreamer_sweep.sweep.backends import Tracked
from safedreamer_sweep.sweep.observe import CellView
from safedreamer_sweep.sweep.progress import Progress, snapshot


def cell(tmp: Path, name: str, *, phase: str | None = None, step: int | None = None, total: int | None = None,
         rate: float | None = None, result: str | None = None, failure: tuple[float, str, str] | None = None) -> Tracked:
    t = Tracked(key=name, rd=RunDir(tmp / name), label=name, result=result, failure=failure)
    if phase is not None:
        t.view = CellView(config=name, seed=0, hash="h", run_dir=str(tmp / name), phase=phase, env_step=step,
                          total_steps=total, steps_per_s=rate)
    return t


def sweep_cells(tmp: Path) -> list[Tracked]:
    return [
        cell(tmp, "a", phase="running", step=1000, total=4000, rate=500.0),
        cell(tmp, "b", phase="stalled", step=3000, total=4000, rate=500.0),
        cell(tmp, "c"),  # queued: never observed
        cell(tmp, "d", phase="pending"),  # submitted, not started
        cell(tmp, "e", phase="done", step=4000, total=4000, result="done"),
        cell(tmp, "f", result="failed", failure=(10.0, "error", "ValueError: x")),
        cell(tmp, "g", result="done", failure=(20.0, "oom", "exceeded memory limit")),  # retried, then done
    ]


def test_snapshot_counts_rate_eta_and_the_newest_failure(tmp_path):
    s = snapshot(sweep_cells(tmp_path), total=9, done_before=1, failed_before=1)
    assert (s.done, s.running, s.queued, s.failed) == (3, 2, 2, 2)
    assert s.steps_per_s == 1000.0
    # left: 3000 + 1000 (running) + 2 queued x 4000 (mean budget of the observed cells) = 12000 steps
    assert s.eta_s == 12.0
    assert s.failure == "g: oom: exceeded memory limit"
    assert [r[0] for r in s.rows] == ["a", "b"]
    line = s.line()
    assert line.startswith("[sds] progress: 3/9 done, 2 running, 2 queued, 2 failed | 1,000 env steps/s | ETA 12 s")
    assert "submitted" not in line  # the launcher tests read "submitted" as "a job was submitted"


def test_the_eta_divides_by_the_sweeps_own_throughput_not_by_a_start_up(tmp_path, monkeypatch):
    """A cell that has just started (compiling: 5 steps/s) must not make the ETA jump: the ETA uses
    the env steps this sweep trained per second of its wall time, start-ups and evaluations included."""
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    p = Progress("none", total=3, out=io.StringIO())
    a = cell(tmp_path, "a", phase="running", step=0, total=4000, rate=400.0)
    b = cell(tmp_path, "b")  # queued
    c = cell(tmp_path, "c")  # queued
    clock[0] += 10
    assert p.sweep_rate([a, b, c], clock[0]) is None  # nothing trained yet: the summed rate stands in
    a.view.env_step = 4000 - 1  # last seen just before the end, then done: it counts in full
    clock[0] += 10
    a.result = "done"
    assert p.sweep_rate([a, b, c], clock[0]) == 4000 / 20
    b.view = CellView(config="b", seed=0, hash="h", run_dir=str(tmp_path / "b"), phase="running", env_step=0,
                      total_steps=4000, steps_per_s=5.0)  # compiling
    s = snapshot([a, b, c], total=3, sweep_rate=p.sweep_rate([a, b, c], clock[0]))
    assert s.steps_per_s == 5.0 and s.eta_s == (4000 + 4000) / 200  # was 8000 / 5 = 26m40s
    resumed = cell(tmp_path, "r", phase="running", step=3000, total=4000, rate=400.0)  # from its checkpoint
    p.sweep_rate([resumed], clock[0])
    resumed.view.env_step = 3500
    clock[0] += 5
    assert p.sweep_rate([a, b, c, resumed], clock[0]) == (4000 + 500) / 25  # 500 steps, not 3,500


def test_no_eta_without_a_rate_or_a_budget_for_queued_cells(tmp_path):
    assert snapshot([cell(tmp_path, "a"), cell(tmp_path, "b", phase="pending")], total=2).eta_s is None
    assert snapshot([cell(tmp_path, "a", phase="running", step=10, total=20, rate=0.0)], total=1).eta_s is None


def test_plain_lines_are_rate_limited_and_the_last_change_is_printed_at_exit(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    out = io.StringIO()  # not a terminal: rich falls back to plain lines
    cells = sweep_cells(tmp_path)
    with Progress("rich", total=7, out=out) as p:
        assert p.mode == "plain"
        p.tick(cells)  # first tick: a line at once
        clock[0] += 1
        cells[2].result = "done"
        p.tick(cells)  # changed, but within PLAIN_EVERY_S of the last line: held back
        assert len(out.getvalue().splitlines()) == 1
        clock[0] += progress.PLAIN_EVERY_S
        p.tick(cells)  # the held-back change is printed now
        clock[0] += progress.PLAIN_EVERY_S
        p.tick(cells)  # nothing changed: quiet until PLAIN_QUIET_S
        assert len(out.getvalue().splitlines()) == 2
        clock[0] += progress.PLAIN_QUIET_S
        p.tick(cells)
        assert len(out.getvalue().splitlines()) == 3
        cells[3].result = "failed"
        clock[0] += 1
        p.tick(cells)  # held back, then printed on exit
    lines = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "[sds] progress: 2/7 done, 2 running, 2 queued, 1 failed",
        "[sds] progress: 3/7 done, 2 running, 1 queued, 1 failed",
        "[sds] progress: 3/7 done, 2 running, 1 queued, 1 failed",  # the quiet-period heartbeat
        "[sds] progress: 3/7 done, 2 running, 0 queued, 2 failed"]


def test_none_prints_nothing(tmp_path):
    out = io.StringIO()
    with Progress("none", total=7, out=out) as p:
        p.tick(sweep_cells(tmp_path))
    assert out.getvalue() == ""


def test_rich_redraws_in_place_on_a_terminal(tmp_path):
    master, slave = os.openpty()
    with open(slave, "w", closefd=True) as tty:
        os.environ.setdefault("TERM", "xterm")
        with Progress("rich", total=7, out=tty) as p:
            assert p.mode == "rich"
            cells = sweep_cells(tmp_path)
            p.tick(cells)
            cells[0].view.env_step = 2000  # type: ignore[union-attr]
            p.tick(cells)
            time.sleep(0.1)
        chunks = []
        os.set_blocking(master, False)
        try:
            while True:
                chunks.append(os.read(master, 65536))
        except BlockingIOError:
            pass
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "2/7 done" in text
    assert "2 running" in text and "newest failure: g: oom" in text
    assert "\x1b[" in text and ("\x1b[2K" in text or "\x1b[1A" in text or "\x1b[A" in text)  # cursor moves: in place
    assert "2000/4000" in text
