"""Train one cell with the script: resume from its checkpoint when there is one, run the training
command while its probes drive the heartbeats (and its checkpoints are mirrored as store pointers),
then judge from the probes (or its done marker, or `exit_0_is_done`) whether it trained the budget."""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.files import atomic_write_bytes
from safedreamer_sweep.core.run_dir import RunDir, now
from safedreamer_sweep.tasks import probes
from safedreamer_sweep.tasks.external.cell import (
    cell_values,
    checkpoint_pattern,
    find_script_checkpoint,
    knob_settings,
    probe_declarations,
    script_cwd,
    script_env,
)
from safedreamer_sweep.tasks.external.config import ExternalTask
from safedreamer_sweep.tasks.external.errors import ExternalTaskError
from safedreamer_sweep.tasks.external.runner import run_script, tree_rss_mb
from safedreamer_sweep.tasks.external.templates import fill_command, fill_glob, fill_template
from safedreamer_sweep.tasks.external.validate import validate_task


class _Progress:
    """Probes -> heartbeats; checkpoint file -> a pointer checkpoint in the store."""

    phase = "train"

    def __init__(self, cfg: DictConfig, run: RunDir, task: ExternalTask, values: Mapping[str, Any], base: int):
        self.cfg, self.run, self.task = cfg, run, task
        self.probes = probes.build_probes(probe_declarations(task, values, cfg), base_dir=run.path)
        for p in self.probes:
            if isinstance(p, probes.FilesProbe):
                p.start(base)
        self.stdout_probes = [p for p in self.probes if isinstance(p, probes.StdoutProbe)]
        self.ckpt_glob = checkpoint_pattern(task, values, cfg, run)
        self.env_step, self.source = int(base), "checkpoint" if base else "start"
        self.curves = None
        if task.curves:
            self.curves = probes.CurveMirror(fill_glob(str(task.curves["glob"]), values, cfg, "task.curves.glob",
                                                       run.path), step_key=str(task.curves["step_key"]),
                                             keys=dict(task.curves["keys"]), scale=float(task.curves.get("scale", 1)),
                                             last_step=int(base))
            self.curves.skip_existing()
        self.history: collections.deque = collections.deque(maxlen=64)
        self.last_ckpt: tuple | None = None
        self.peak_rss_mb = 0.0  # of the script's process tree: evidence when it dies of an OOM kill
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        for p in self.stdout_probes:
            p.feed(line)

    def read(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for p in self.probes:
            try:
                out[p.name] = p.read()
            except OSError:  # a file vanished or is unreadable this instant: no evidence, not a crash
                out[p.name] = None
        return out

    def tick(self, pid: int | None = None) -> None:
        with self.lock:
            readings = self.read()
            for name, v in readings.items():
                # The most advanced probe is the truth; a probe that lags (a metrics file on a
                # wall-clock timer) never pulls the step back.
                if v is not None and v > self.env_step:
                    self.env_step, self.source = v, name
            fields: dict[str, Any] = {"probe": self.source, "probes": readings, "phase": self.phase}
            rate = self._rate()
            if rate is not None:
                fields["steps_per_s"] = round(rate, 3)
            if pid is not None:
                fields.update(self._process_fields(pid))
            self.run.heartbeat(self.env_step, self.task.total_steps, **fields)
            self.mirror_checkpoint()
            if self.curves is not None:
                for row in self.curves.new_rows():
                    self.run.append_metrics(row)

    def _rate(self) -> float | None:
        """Env steps per second over the last minute of ticks."""
        t = time.monotonic()
        self.history.append((t, self.env_step))
        while len(self.history) > 2 and t - self.history[0][0] > 60:
            self.history.popleft()
        t0, s0 = self.history[0]
        return (self.env_step - s0) / (t - t0) if t > t0 else None

    def _process_fields(self, pid: int) -> dict[str, Any]:
        """The heartbeat's fields about the script's process: its pid and its tree's memory."""
        fields: dict[str, Any] = {"child_pid": pid}
        rss = tree_rss_mb(pid)
        if rss is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            fields.update(rss_mb=round(rss, 1), peak_rss_mb=round(self.peak_rss_mb, 1))
        return fields

    def mirror_checkpoint(self) -> None:
        """Record the script's newest checkpoint in the store (checkpoints/ckpt_<step>.pkl holding a
        pointer, not a copy), so `plan` sees `resume` and resume knows the step it restarts from."""
        if not self.ckpt_glob:
            return
        found = probes.find_checkpoint(self.ckpt_glob, **self.task.checkpoint_step)
        if found is None:
            return
        key = (str(found.path), found.mtime, found.size)
        if key == self.last_ckpt:
            return
        self.last_ckpt = key
        if found.step is not None:  # an exact step: the files probes count on from it
            for p in self.probes:
                if isinstance(p, probes.FilesProbe):
                    p.rebase(found.step)
        step = found.step if found.step is not None else self.env_step
        self.run.save_checkpoint(step, {"external": True, "path": str(found.path), "mtime": found.mtime,
                                        "size": found.size, "step": step,
                                        "step_from": "file" if found.step is not None else "probe"}, keep=3)


def _resume_point(cfg: DictConfig, run: RunDir, task: ExternalTask, values: Mapping[str, Any]
                  ) -> tuple[Path, int] | None:
    """The script's checkpoint to resume from and its env step, or None to start from scratch.
    The step comes from the file when `task.checkpoint.step` says how to read it, else from the
    store pointer recorded when the file was written (the probed step then)."""
    found = find_script_checkpoint(task, values, cfg, run)
    if found is None:
        return None
    if found.step is not None:
        return found.path, found.step
    for _step, path in reversed(run.checkpoints()):
        with contextlib.suppress(Exception):
            ptr = RunDir.read_checkpoint(path)
            if isinstance(ptr, dict) and ptr.get("path") == str(found.path) and ptr.get("mtime") == found.mtime:
                return found.path, int(ptr["step"])
    return found.path, 0


def _record_resume(run: RunDir, task: ExternalTask, attempt: int, checkpoint: Path, step: int) -> dict:
    """Record in the cell's state.json (`resumes`) that this attempt restarts from `checkpoint` at
    env step `step`: how far the previous attempt had got (its last probed step), the env frames
    that are trained again (lost), and what the script's resume does not restore
    (`task.resume_not_restored`, e.g. SafeDreamer's replay buffer). The report repeats it."""
    prog = run.read_progress() or {}
    reached = max(int(prog.get("env_step") or 0), int(step))  # the checkpoint can be newer than the last heartbeat
    entry = {"attempt": attempt, "checkpoint": str(checkpoint), "from_step": int(step), "reached": reached,
             "lost_frames": max(0, reached - int(step)), "not_restored": list(task.resume_not_restored),
             "at": now()}
    run.update_state(lambda s: s.setdefault("resumes", []).append(entry))
    return entry


def _resume(cfg: DictConfig, run: RunDir, task: ExternalTask, values: dict[str, Any], checkpoint: Path, base: int
            ) -> tuple[dict[str, Any], list[str]]:
    """Prepare resuming from `checkpoint` at env step `base`: the values with {checkpoint} and
    {resume_flag} filled, and the resume arguments. The curves past `base` are dropped (they are
    trained again) and the resume is recorded."""
    values = {**values, "checkpoint": str(checkpoint)}
    resume_argv = [fill_template(a, values, cfg, f"task.resume_args[{i}]") for i, a in enumerate(task.resume_args)]
    values["resume_flag"] = shlex.join(resume_argv)
    run.truncate_curves_after(base)
    _record_resume(run, task, int(values["attempt"]), checkpoint, base)
    return values, resume_argv


def _write_config_file(cfg: DictConfig, run: RunDir) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c.pop("hydra", None)
    atomic_write_bytes(run.path / "external" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(c)).encode())


def train(cfg: DictConfig, run: RunDir) -> int:
    """Run the script until it exits; return the env step it reached. Resumes from the script's
    checkpoint (adding `task.resume_args`) when there is one. Raises ExternalCommandFailed on a
    nonzero exit (with the stderr tail), and ExternalTaskError when it exits 0 short of
    `task.total_steps` without its done marker."""
    task = validate_task(cfg, run)
    values = cell_values(cfg, run, task)
    if "config_file" in str(task.command) + str(task.eval.get("command")):
        _write_config_file(cfg, run)
    resume = _resume_point(cfg, run, task, values)
    resume_argv: list[str] = []
    base = 0
    if resume is not None:
        base = resume[1]
        values, resume_argv = _resume(cfg, run, task, values, *resume)
    kargs, kenv = knob_settings(task, values, cfg)
    argv = fill_command(task.command, values, cfg, "task.command", resume=resume_argv, knobs=kargs)
    env = script_env(task, values, cfg, kenv)

    progress = _Progress(cfg, run, task, values, base)
    run.heartbeat(base, task.total_steps, probe=progress.source, phase="train",
                  resumed_from=str(resume[0]) if resume else None)
    run_script(argv, task=task, run=run, attempt=int(values["attempt"]), cwd=script_cwd(task, values, cfg), env=env,
               header=f"train attempt {values['attempt']}", what="training", on_stdout=progress.feed,
               on_tick=progress.tick, where=lambda: f" at env step {progress.env_step} (probe {progress.source})")
    return _steps_trained(cfg, run, task, values, progress)


def _steps_trained(cfg: DictConfig, run: RunDir, task: ExternalTask, values: Mapping[str, Any],
                   progress: _Progress) -> int:
    """The env steps a script that exited 0 trained: the probed truth, or task.total_steps when the
    exit itself is the evidence (`exit_0_is_done`). An ExternalTaskError when the probes fall short
    of task.total_steps and no done marker vouches for completion."""
    marker = fill_template(task.done_marker, values, cfg, "task.done_marker") if task.done_marker else None
    if marker and not os.path.isabs(marker):
        marker = str(run.path / marker)
    if progress.env_step < task.total_steps and task.exit_0_is_done:
        # The script exits 0 only once its own loop reached its budget, but its files can lag behind
        # (SafeDreamer: no checkpoint, metrics row or replay flush at the end): the exit is the evidence.
        run.heartbeat(task.total_steps, task.total_steps, probe="exit 0", phase="train", probes=progress.read())
        run.update_state(lambda s: s.update(trained_by="exit 0", probed_step=progress.env_step))
        return task.total_steps
    if progress.env_step < task.total_steps and not (marker and probes.expand_glob(marker)):
        raise ExternalTaskError(
            f"{run.path}: the training command exited 0 but its probes show env step {progress.env_step} "
            f"< task.total_steps {task.total_steps} (readings {progress.read()}), and no done marker"
            f"{' matches ' + marker if marker else ' is declared'}. The cell is not marked trained. Fix: make "
            f"task.total_steps match the script's step budget, fix the probes, or declare task.done_marker.")
    return progress.env_step  # the probed truth, even when the done marker vouches for completion
