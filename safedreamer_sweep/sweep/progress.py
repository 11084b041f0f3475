"""Live progress of a foreground sweep (`hydra.launcher.progress=rich|plain|none`): cells done /
running / queued / failed (and pruned by a study's pruner: counted apart, never as failed), aggregate
env steps per second, ETA and the newest failure cause.

`rich` draws a live view that refreshes in place when stdout is a terminal and falls back to
`plain` otherwise (CI logs, Slurm output files): one line when the counts change, at most one every
`PLAIN_EVERY_S` seconds, and one every `PLAIN_QUIET_S` seconds while nothing changes."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from safedreamer_sweep.core.durations import format_duration

PLAIN_EVERY_S = 5.0
PLAIN_QUIET_S = 60.0


@dataclass
class Snapshot:
    """The sweep at one poll. `done`/`failed` include cells settled at plan time."""

    total: int
    done: int
    running: int
    queued: int
    failed: int
    steps_per_s: float
    eta_s: float | None
    failure: str | None  # "<cell>: <cause>: <evidence>" of the newest failed attempt
    rows: list[tuple[str, str, int | None, int | None, float | None]]  # running cells: label, phase, step, total, rate
    queue_reasons: dict[str, int] = field(default_factory=dict)  # the scheduler's reasons of queued jobs
    pruned: int = 0  # stopped by their study's pruner: not done, not failed

    @property
    def queued_text(self) -> str:
        """`3 queued` or `3 queued (2 QOSMaxGRESPerUser, 1 Resources)`."""
        why = ", ".join(f"{k} {r}" for r, k in sorted(self.queue_reasons.items(), key=lambda x: -x[1]))
        return f"{self.queued} queued" + (f" ({why})" if why else "")

    @property
    def counts(self) -> tuple[int, ...]:
        return self.done, self.running, self.queued, self.failed, self.pruned

    def line(self) -> str:
        rate = f"{self.steps_per_s:,.0f} env steps/s" if self.running else "no cell running"
        return (f"[sds] progress: {self.done}/{self.total} done, {self.running} running, {self.queued_text}, "
                f"{self.failed} failed{f', {self.pruned} pruned' if self.pruned else ''} | {rate} | ETA {format_duration(self.eta_s)}"
                + (f" | newest failure: {self.failure[:160]}" if self.failure else ""))


def snapshot(cells: list[Any], *, total: int, done_before: int = 0, failed_before: int = 0,
             sweep_rate: float | None = None) -> Snapshot:
    """Count the supervisor's tracked cells (`supervise.Tracked`) and estimate the rest of the sweep:
    ETA = env steps left (running cells' remainders + queued cells x the mean cell budget) divided by
    `sweep_rate`, the env steps this sweep has trained per second of its wall time so far (start-ups,
    compiles and evaluations included, so the ETA pays for the cells still to start), else by the
    running cells' summed env steps/s. The summed rate alone swings with every start-up: a cell that is
    still compiling reports a few steps/s, and the ETA jumped from 6 to 53 minutes and back
    (bench/eta_accuracy.py replays a finished sweep under both rules)."""
    done = failed = running = queued = pruned = 0
    reasons: dict[str, int] = {}
    rate = 0.0
    left = 0
    budgets = [c.view.total_steps for c in cells if c.view is not None and c.view.total_steps]
    mean_budget = sum(budgets) / len(budgets) if budgets else None
    rows = []
    newest: tuple[float, str] | None = None
    for c in cells:
        v = c.view
        if c.failure is not None and (newest is None or c.failure[0] > newest[0]):
            newest = (c.failure[0], f"{c.label}: {c.failure[1]}: {c.failure[2]}")
        if c.result == "done":
            done += 1
        elif c.result == "pruned":
            pruned += 1
        elif c.result is not None:
            failed += 1
        elif v is not None and v.phase in ("running", "stalled"):
            running += 1
            rate += v.steps_per_s or 0.0
            if v.total_steps and v.env_step is not None:
                left += max(0, v.total_steps - v.env_step)
            rows.append((c.label, v.phase, v.env_step, v.total_steps, v.steps_per_s))
        else:
            queued += 1
            left += int(mean_budget or 0)
            if v is not None and v.queue_reason:
                reasons[v.queue_reason] = reasons.get(v.queue_reason, 0) + 1
    speed = sweep_rate if sweep_rate else rate
    eta = left / speed if speed > 0 and (mean_budget or not queued) else None
    return Snapshot(total=total, done=done + done_before, running=running, queued=queued,
                    failed=failed + failed_before, steps_per_s=rate, eta_s=eta,
                    failure=newest[1] if newest else None, rows=rows, queue_reasons=reasons, pruned=pruned)


def _render(s: Snapshot, elapsed_s: float) -> Any:
    """The rich live view: one summary line, then the running cells."""
    from rich.table import Table

    table = Table(title=(f"[bold]{s.done}/{s.total} done[/]  [cyan]{s.running} running[/]  {s.queued_text}  "
                         + (f"[red]{s.failed} failed[/]" if s.failed else "0 failed")
                         + (f"  [magenta]{s.pruned} pruned[/]" if s.pruned else "")
                         + f"  |  {s.steps_per_s:,.0f} env steps/s  |  ETA {format_duration(s.eta_s)}"
                         + f"  |  elapsed {format_duration(elapsed_s)}"),
                  title_justify="left", caption=f"newest failure: {s.failure[:200]}" if s.failure else None,
                  caption_justify="left", caption_style="red", expand=False)
    for col in ("cell", "phase", "env step", "steps/s"):
        table.add_column(col, justify="right" if col in ("env step", "steps/s") else "left")
    for label, phase, step, budget, rate in s.rows[:12]:
        table.add_row(label, phase, f"{step if step is not None else '-'}/{budget or '?'}",
                      f"{rate:,.0f}" if rate else "-")
    if len(s.rows) > 12:
        table.add_row(f"... and {len(s.rows) - 12} more", "", "", "")
    return table


class Progress:
    """Draws snapshots on every supervisor tick (`Supervisor.on_tick`). A context manager: the live
    view starts on enter and is left on screen, final, on exit."""

    def __init__(self, mode: str, total: int, done_before: int = 0, failed_before: int = 0, *,
                 out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        is_tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.mode = "plain" if mode == "rich" and not is_tty else mode
        self.total, self.done_before, self.failed_before = total, done_before, failed_before
        self.started = time.time()
        self._live: Any = None
        self._last_line_at = 0.0
        self._last_counts: tuple[int, ...] | None = None
        self._pending: Snapshot | None = None  # a change not yet printed (plain, rate-limited)
        self._steps: dict[Any, tuple[int, int]] = {}  # cell -> (first, newest) env step seen by this sweep

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.out), refresh_per_second=2, transient=False,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._pending is not None:
            self._print(self._pending)

    def sweep_rate(self, cells: list[Any], now: float) -> float | None:
        """Env steps trained by this sweep per second since it started (None before the first step).
        A cell counts from the first step it was seen at (a resumed cell: its checkpoint)."""
        for c in cells:
            v = c.view
            if v is None or v.env_step is None:
                continue
            step = v.total_steps if c.result == "done" and v.total_steps else v.env_step
            first, newest = self._steps.get(c.key, (v.env_step, v.env_step))
            self._steps[c.key] = (first, max(newest, step))
        trained = sum(newest - first for first, newest in self._steps.values())
        elapsed = now - self.started
        return trained / elapsed if trained > 0 and elapsed > 0 else None

    def tick(self, cells: list[Any]) -> None:
        s = snapshot(cells, total=self.total, done_before=self.done_before, failed_before=self.failed_before,
                     sweep_rate=self.sweep_rate(cells, time.time()))
        if self.mode == "rich" and self._live is not None:
            self._live.update(_render(s, time.time() - self.started), refresh=True)
        elif self.mode == "plain":
            now = time.time()
            changed = s.counts != self._last_counts
            if now - self._last_line_at >= (PLAIN_EVERY_S if changed else PLAIN_QUIET_S):
                self._print(s)
            elif changed:
                self._pending = s

    def _print(self, s: Snapshot) -> None:
        print(s.line(), file=self.out, flush=True)
        self._last_line_at, self._last_counts, self._pending = time.time(), s.counts, None
