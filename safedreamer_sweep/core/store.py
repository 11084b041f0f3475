"""The run store: one directory per run identity, the single source of truth.

    <root>/runs/<config>/seed_<seed>/<hash8>/     (an app without a seed: <root>/runs/<label>/<hash8>/)
      spec.json        identity, resolved run config, overrides, code and package versions
      state.json       phase + attempts (each with its outcome, cause and evidence)
      progress.json    heartbeat: env_step, total_steps, steps_per_s, updated_at, host, pid, ...
      metrics.jsonl    training curve, one line per `log_every_steps` env steps
      eval_curve.jsonl periodic evaluation during training
      checkpoints/     ckpt_<env_step>.pkl, written atomically, newest valid one wins
      eval/id.json     final evaluation in-distribution
      eval/ood.json    final evaluation out-of-distribution
      result.pkl       the task function's return value (any app), handed back on a re-run
      logs/            stdout/stderr of every attempt, never overwritten
      claim.json       which sweep / job holds the cell right now: a lease with a generation number
    <root>/index.sqlite   identity hash -> run directory, a cache rebuilt from runs/ (core/index.py)

A cell is found by its identity wherever it is (Store.locate): the `<config>` folder is the label of
the command line that first ran it, presentation only.

Every JSON document is replaced atomically (write a temp file, fsync, rename), so a kill -9 at
any instant leaves either the old or the new version, never half of one; readers (status, the
report, the planner) therefore never lock.

Two locks per run directory (`filelock`, an flock the kernel drops when its holder dies), so that
nothing the supervisor must do waits on a lock a cell can hold:
  .lock        the data lock: read-modify-write of state.json, and the fence check of every write
               by the cell (state, progress, curves, checkpoints, evaluations). Held by the cell
               and, briefly, by the supervisor; a cell frozen inside a write keeps it until it is
               killed, so every supervisor acquisition is bounded (SUPERVISOR_LOCK_S) and a
               timeout raises LockBusy, whose message is evidence (holder pid, its state), never
               a crash.
  .claim.lock  the lease lock: read-modify-write of claim.json (claims, takeovers, renewals, job
               ids, release). Held only by launchers and supervisors, never by a cell.

Fencing: a RunDir opened with the lease `generation` its holder was given (the launcher's, or the
cell's through $SDS_LEASE) checks, under the data lock, that claim.json still carries that
generation before every write of state, progress, curves, a checkpoint or a result. A holder that
lost its lease (taken over by another host after it stopped renewing) gets LeaseLost and its write
does not land. A takeover rewrites claim.json under the lease lock only; a write that passed its
fence check before the takeover still completes, but before any write of the new holder, which
takes the data lock first (its cell's first act is to open its attempt), so writes stay ordered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from safedreamer_sweep.core.files import atomic_write_bytes, atomic_write_json, json_line, read_jsonl
from safedreamer_sweep.core.index import RunIndex, register_run

CHECKPOINT_RE = re.compile(r"^ckpt_(\d{12})\.pkl$")
EVAL_KINDS = ("id", "ood")
TRACEBACK_TAIL_CHARS = 4000  # of a failed attempt's traceback, kept in state.json


class StoreError(Exception):
    """A store file is missing, corrupt or inconsistent. The message names the file and the fix."""


class LeaseLost(StoreError):
    """A write by a holder whose lease generation is no longer the run's: the write was dropped."""


class LockBusy(StoreError):
    """A run directory's lock was not free in time. The message is the evidence: which lock, which
    pid holds it and in what state (running, stopped, gone), and what happens next."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = Path(path), timeout
        self.holder = lock_holder(self.path)
        super().__init__(f"{self.path}: not acquired within {timeout:g}s; {describe_holder(self.holder)}")


CELL_LOCK_S = 60.0        # a cell's wait for its data lock (the supervisor holds it for milliseconds)
SUPERVISOR_LOCK_S = 3.0   # any supervisor wait for a lock a cell could hold: bounded, then evidence


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold the flock at `path` for the block; LockBusy (with the holder's pid and state) on timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lk = filelock.FileLock(str(path), timeout=timeout)
    try:
        lk.acquire()
    except filelock.Timeout:
        raise LockBusy(path, timeout) from None
    try:
        yield
    finally:
        lk.release()


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the flock on `path` on this host, from /proc/locks (matched by device and inode):
    {pid, state, name}; None when nobody here does (or the kernel does not say: another host's lock
    on a network filesystem)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not the holder
            continue
        try:
            pid, dev = int(parts[4]), parts[5].split(":")
            key = (int(dev[0], 16), int(dev[1], 16), int(dev[2]))
        except (IndexError, ValueError):
            continue
        if key == want:
            return {"pid": pid, **_process_state(pid)}
    return None


def _process_state(pid: int) -> dict[str, Any]:
    """A process's state letter and name from /proc/<pid>/stat ('T' stopped, 'R' running, ...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {"state": "gone"}
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return {"state": stat[stat.rindex(")") + 2:].split()[0], "name": name}


_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "R": "running", "S": "sleeping",
           "D": "in uninterruptible I/O", "Z": "a zombie", "gone": "gone"}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "no process on this host holds it (a process on another host, or it was just released)"
    what = _STATES.get(str(holder.get("state")), str(holder.get("state")))
    return f"held by pid {holder['pid']} ({holder.get('name', '?')}, {what})"


# ----------------------------------------------------------------------------- reading documents


def read_json(path: Path) -> Any | None:
    """The parsed document, or None when the file does not exist. A corrupt file is a StoreError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt. "
            f"Fix: restore it from a backup or move it aside; nothing was overwritten."
        ) from e


def now() -> float:
    return time.time()


def host() -> str:
    return socket.gethostname()


def lease_from_env(path: Path) -> int | None:
    """The lease generation a cell process was given for run dir `path` ($SDS_LEASE=<hash8>:<generation>,
    set by the launcher for the cell it submits), None when it names another run or is unset."""
    value = os.environ.get("SDS_LEASE", "")
    name, _, gen = value.rpartition(":")
    return int(gen) if name and name == Path(path).name and gen.isdigit() else None


# ----------------------------------------------------------------------------- a run directory


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The fields that close an attempt failed by `exc`: cause `error`, the exception as evidence and
    the tail of its traceback (`RunDir.end_attempt("failed", **error_fields(e))`)."""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-TRACEBACK_TAIL_CHARS:]
    return {"cause": "error", "evidence": f"{type(exc).__name__}: {exc}", "traceback_tail": tail}



@dataclass(frozen=True)
class RunDir:
    """One run identity's directory and every read or write the rest of the code does in it."""

    path: Path
    # The lease generation this writer holds (fenced writes), None for readers and unfenced tools.
    generation: int | None = None
    # How long a write waits for the data lock: a cell waits long (the supervisor holds it for
    # milliseconds), the supervisor briefly (a frozen cell may hold it until killed).
    lock_s: float = field(default=CELL_LOCK_S, compare=False)

    def fenced(self, generation: int | None) -> RunDir:
        """The same run directory, writing only while `generation` is the run's lease."""
        return RunDir(self.path, generation, self.lock_s)

    # --- paths
    @property
    def spec_path(self) -> Path:
        return self.path / "spec.json"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def progress_path(self) -> Path:
        return self.path / "progress.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_curve_path(self) -> Path:
        return self.path / "eval_curve.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def claim_path(self) -> Path:
        return self.path / "claim.json"

    @property
    def result_path(self) -> Path:
        return self.path / "result.pkl"

    def eval_path(self, kind: str) -> Path:
        if kind not in EVAL_KINDS:
            raise ValueError(f"eval kind must be one of {EVAL_KINDS}, got {kind!r}")
        return self.eval_dir / f"{kind}.json"

    # --- identity
    def lock(self, timeout: float = CELL_LOCK_S) -> contextlib.AbstractContextManager[None]:
        """The data lock (state.json read-modify-write, fenced writes; see the module docstring).
        LockBusy, naming its holder, when it is not free within `timeout` seconds."""
        return _locked(self.path / ".lock", timeout)

    def lease_lock(self, timeout: float = SUPERVISOR_LOCK_S) -> contextlib.AbstractContextManager[None]:
        """The lease lock (claim.json read-modify-write). Only launchers and supervisors take it."""
        return _locked(self.path / ".claim.lock", timeout)

    def supervised(self) -> RunDir:
        """The same run directory, as the supervisor writes it: data-lock waits bounded by
        SUPERVISOR_LOCK_S (a cell frozen inside a write must not freeze the sweep)."""
        return self if self.lock_s == SUPERVISOR_LOCK_S else RunDir(self.path, self.generation, SUPERVISOR_LOCK_S)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The data lock, plus the fence check when this writer holds a lease generation."""
        with self.lock(self.lock_s):
            self._check_fence()
            yield

    def _check_fence(self) -> None:
        """LeaseLost unless claim.json still carries this writer's generation (call under the lock)."""
        if self.generation is None:
            return
        claim = read_json(self.claim_path) or {}
        held = claim.get("generation")
        if held != self.generation:
            raise LeaseLost(
                f"{self.path}: lease generation {self.generation} is no longer held (claim.json has generation "
                f"{held}, sweep {claim.get('sweep_id')} on {claim.get('host')}); this write was dropped. "
                f"Another holder runs the cell now; this process stops.")

    def fs_now(self) -> float:
        """The shared filesystem's clock: the mtime of a file created now (the file server's time on
        NFS), so a lease's age never mixes two hosts' wall clocks."""
        self.path.mkdir(parents=True, exist_ok=True)
        probe = self.path / f".clock.{host()}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            probe.touch()
            return probe.stat().st_mtime
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()

    def renew_lease(self) -> bool:
        """Renew this writer's lease (claim.json's mtime set by the filesystem): False when it is lost.
        Under the lease lock only: a cell frozen inside a data write cannot block it."""
        if self.generation is None or not self.claim_path.exists():
            return False
        with self.lease_lock():
            try:
                self._check_fence()
            except LeaseLost:
                return False
            os.utime(self.claim_path)
            return True

    def read_spec(self) -> dict | None:
        return read_json(self.spec_path)

    def ensure_spec(self, spec: dict) -> None:
        """Write spec.json once. A run directory never changes identity; when the code that computes
        it changed, `spec["code_change"]` (refuse, rerun, accept) decides (settle_code_change)."""
        policy = str(spec.get("code_change") or "refuse")
        spec = {k: v for k, v in spec.items() if k != "code_change"}
        with self.lock(self.lock_s):
            old = self.read_spec()
            if old is None:
                atomic_write_json(self.spec_path, spec)
                register_run(self.path, str(spec.get("hash")), spec.get("seed"))  # the store index (core/index.py)
            elif old.get("hash") != spec.get("hash"):
                raise StoreError(
                    f"{self.spec_path}: holds identity {old.get('hash')} but {spec.get('hash')} was "
                    f"requested; a run directory never changes identity. Fix: use a clean store "
                    f"or move the directory aside."
                )
            else:
                settle_code_change(self, old, spec, policy)

    def supersede(self, why: str) -> Path:
        """Move everything this run dir holds (but its lock and its claim) to superseded/<time>-<why>/
        inside it, leaving it as new: work by other code is kept, never deleted, and never read again
        by planning, status or the report. Returns the folder it went to (call under the run lock)."""
        base = self.path / "superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
        dest, n = base, 1
        while dest.exists():
            n += 1
            dest = base.with_name(f"{base.name}.{n}")
        dest.mkdir(parents=True)
        for entry in self.path.iterdir():
            if entry.name not in (".lock", ".claim.lock", "claim.json", "race_winner", "superseded"):
                os.replace(entry, dest / entry.name)
        return dest

    # --- state
    def read_state(self) -> dict:
        state = read_json(self.state_path)
        return state if state is not None else {"phase": "new", "attempts": []}

    def update_state(self, change: Callable[[dict], None]) -> dict:
        """Apply `change` to state.json under the run lock and replace the file atomically."""
        with self._write_lock():
            state = self.read_state()
            change(state)
            state["updated_at"] = now()
            atomic_write_json(self.state_path, state)
            return state

    def set_phase(self, phase: str, **fields: Any) -> dict:
        def change(s: dict) -> None:
            s["phase"] = phase
            s.update(fields)

        return self.update_state(change)

    def begin_attempt(self, **fields: Any) -> int:
        """Record the start of an attempt (by the process that trains). Returns its number (1-based)."""
        record = {"started_at": now(), "host": host(), "pid": os.getpid(), "outcome": "running"}
        record.update(fields)
        number = 0

        def change(s: dict) -> None:
            nonlocal number
            attempts = s.setdefault("attempts", [])
            last = attempts[-1] if attempts else {}
            # A launcher may have pre-registered this attempt (with its job id): fill it in. A task
            # that records its own attempts, run inside the launcher's cell wrapper (same process),
            # continues the wrapper's attempt instead of opening a second one.
            if last.get("outcome") == "submitted" or (
                    last.get("outcome") == "running" and last.get("pid") == os.getpid() and last.get("host") == host()):
                last.update({k: v for k, v in record.items() if k != "started_at" or "started_at" not in last})
            else:
                attempts.append({"n": len(attempts) + 1, **record})
            number = attempts[-1]["n"]
            s["phase"] = "running"

        self.update_state(change)
        return number

    def end_attempt(self, outcome: str, **fields: Any) -> None:
        """Close the newest attempt: outcome is `done`, `failed` or `interrupted`."""

        def change(s: dict) -> None:
            attempts = s.setdefault("attempts", [])
            if not attempts:
                attempts.append({"n": 1, "host": host(), "pid": os.getpid()})
            attempts[-1].update({"outcome": outcome, "ended_at": now(), **fields})

        self.update_state(change)

    # --- heartbeat and curves
    def heartbeat(self, env_step: int, total_steps: int | None, **fields: Any) -> None:
        """Replace progress.json: the evidence `status` shows. `env_step` is the only clock (for
        any app: its own step counter, see safedreamer_sweep.heartbeat); total_steps may be unknown."""
        prev = read_json(self.progress_path) or {}
        moved_at = now() if prev.get("env_step") != env_step else prev.get("env_step_moved_at", now())
        doc = {
            "env_step": int(env_step),
            "total_steps": None if total_steps is None else int(total_steps),
            "updated_at": now(),
            "env_step_moved_at": moved_at,
            "host": host(),
            "pid": os.getpid(),
            "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SDS_JOB_ID"),
        }
        doc.update(fields)
        with self._write_lock():
            atomic_write_json(self.progress_path, doc)
            if self.generation is not None:
                os.utime(self.claim_path)  # a beating holder renews its lease

    def read_progress(self) -> dict | None:
        return read_json(self.progress_path)

    def append_metrics(self, row: dict, path: Path | None = None) -> None:
        """Append one JSON line (each row carries `env_step`)."""
        path = path or self.metrics_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock(), open(path, "a") as f:
            f.write(json_line(row))
            f.flush()

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def read_eval_curve(self) -> list[dict]:
        return read_jsonl(self.eval_curve_path)

    def truncate_curves_after(self, env_step: int) -> None:
        """On resume from a checkpoint at `env_step`: drop curve rows past it (they will be logged
        again), so the curves have no gap and no duplicated step. Replaced atomically."""
        with self._write_lock():
            pass
        for path in (self.metrics_path, self.eval_curve_path):
            if not path.exists():
                continue
            rows = [r for r in read_jsonl(path) if int(r.get("env_step", 0)) <= env_step]
            data = "".join(json_line(r) for r in rows)
            atomic_write_bytes(path, data.encode())

    # --- checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(env_step, path) of every checkpoint file, oldest first."""
        out = []
        if self.checkpoints_dir.is_dir():
            for p in self.checkpoints_dir.iterdir():
                m = CHECKPOINT_RE.match(p.name)
                if m:
                    out.append((int(m.group(1)), p))
        return sorted(out)

    def save_checkpoint(self, env_step: int, payload: Any, keep: int = 3) -> Path:
        """Write checkpoint `env_step` atomically (pickle + sha256 trailer) and keep the newest `keep`."""
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        path = self.checkpoints_dir / f"ckpt_{int(env_step):012d}.pkl"
        with self._write_lock():
            atomic_write_bytes(path, data + hashlib.sha256(data).digest())
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    @staticmethod
    def read_checkpoint(path: Path) -> Any:
        """Load one checkpoint file; StoreError if it is truncated or corrupt."""
        blob = Path(path).read_bytes()
        data, digest = blob[:-32], blob[-32:]
        if len(blob) < 33 or hashlib.sha256(data).digest() != digest:
            raise StoreError(f"{path}: checkpoint is unreadable (truncated or corrupt file, {len(blob)} bytes)")
        return pickle.loads(data)

    @staticmethod
    def verify_checkpoint(path: Path) -> bool:
        """True when a checkpoint file is whole (its sha256 trailer matches), without unpickling it."""
        try:
            blob = Path(path).read_bytes()
        except OSError:
            return False
        return len(blob) >= 33 and hashlib.sha256(blob[:-32]).digest() == blob[-32:]

    def latest_checkpoint(self, log: Callable[[str], None] | None = None) -> tuple[int, Any] | None:
        """The newest checkpoint that verifies, as (env_step, payload); older ones are tried in turn."""
        ckpts = self.checkpoints()
        for i, (step, path) in enumerate(reversed(ckpts)):
            try:
                return step, self.read_checkpoint(path)
            except (StoreError, pickle.UnpicklingError, EOFError, OSError) as e:
                older = ckpts[-2 - i][0] if len(ckpts) >= 2 + i else None
                if log:
                    log(f"{e}; " + (f"resuming from step {older} instead" if older is not None else "starting from scratch"))
        return None

    # --- evaluation
    def write_eval(self, kind: str, result: dict) -> None:
        with self._write_lock():
            atomic_write_json(self.eval_path(kind), result)

    def read_eval(self, kind: str) -> dict | None:
        return read_json(self.eval_path(kind))

    # --- the task function's return value (what a re-run hands back without running anything)
    def write_result(self, value: Any) -> None:
        """Store the return value atomically (pickle + sha256 trailer, like a checkpoint)."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        atomic_write_bytes(self.result_path, data + hashlib.sha256(data).digest())

    def read_result(self) -> Any:
        """The stored return value; StoreError when it is missing, truncated or corrupt."""
        if not self.result_path.exists():
            raise StoreError(f"{self.result_path}: no stored return value (the cell never finished). "
                             f"Fix: run the sweep again to finish the cell")
        return self.read_checkpoint(self.result_path)

    def finished(self, done_when: str | None = None, state: dict | None = None) -> bool:
        """State phase `done` and the cell's finishing evidence on disk: both evaluations (the
        package's own tasks) or the stored return value (any other app); see identity.DONE_WHEN.
        `state`/`done_when` save the reads when the caller already has them."""
        if state is None:
            try:
                state = read_json(self.state_path) or {}
            except StoreError:
                return False
        if state.get("phase") != "done":
            return False
        if done_when is None:
            done_when = (read_json(self.spec_path) or {}).get("done_when", "eval")
        if done_when == "return":
            return self.verify_checkpoint(self.result_path)
        return all(self.eval_path(k).exists() for k in EVAL_KINDS)

    # --- logs
    def attempt_log_paths(self, attempt: int) -> tuple[Path, Path]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.logs_dir / f"attempt_{attempt:02d}.out", self.logs_dir / f"attempt_{attempt:02d}.err"

    # --- derived facts
    @property
    def trained(self) -> bool:
        return bool(self.read_state().get("trained"))

    @property
    def evaluated(self) -> dict[str, bool]:
        return {k: self.eval_path(k).exists() for k in EVAL_KINDS}


# ----------------------------------------------------------------------------- code changes


def has_work(rd: RunDir) -> bool:
    """True when a run dir holds anything computed (a checkpoint, a curve, an evaluation, a result)."""
    state = rd.read_state()
    return bool(state.get("trained") or rd.checkpoints() or rd.metrics_path.exists()
                or any(rd.eval_path(k).exists() for k in ("id", "ood")) or (rd.path / "result.pkl").exists())


def settle_code_change(rd: RunDir, old: dict, new: dict, policy: str) -> None:
    """Called by RunDir.ensure_spec (under the run lock) when spec.json exists with the same identity.
    If the code recorded in it differs from `new`'s and the run dir holds work: `rerun` moves that
    work to superseded/ (nothing is deleted) and writes `new`; `accept` appends the new code to
    spec.json's `code_accepted` and keeps the work; `refuse` raises StoreError naming both. Without
    work, spec.json simply takes the new code. A task that declares no code is never compared
    (fingerprints: core/identity.py)."""
    from safedreamer_sweep.core.identity import (
        describe_code,
        implicit_code,
        recorded_fingerprint,
    )

    new_code = new.get("code") or {}
    if not new_code.get("fingerprint") or recorded_fingerprint(old) == new_code["fingerprint"]:
        return
    if recorded_fingerprint(old) is None and implicit_code(new_code):
        policy = "accept"  # an app's cell stored before its main script was fingerprinted: kept, the script recorded
    if not has_work(rd):
        atomic_write_json(rd.spec_path, new)
        return
    was = describe_code(old.get("code") if not old.get("code_accepted") else old["code_accepted"][-1])
    if policy == "rerun":
        moved = rd.supersede(f"code-{recorded_fingerprint(old) or 'unknown'}")
        atomic_write_json(rd.spec_path, {**new, "supersedes": {"code": old.get("code"), "moved_to": str(moved)}})
    elif policy == "accept":
        atomic_write_json(rd.spec_path, {**old, "code_accepted": [*(old.get("code_accepted") or []),
                                                                    {**new_code, "at": time.time()}]})
    else:
        raise StoreError(f"{rd.path}: its work was computed by code {was}; this process runs code "
                         f"{describe_code(new_code)}, so the two would be mixed in one cell. Fix: plan the "
                         f"sweep again with sweep.code_change=rerun (train it again; the old work is moved to "
                         f"superseded/) or sweep.code_change=accept (keep it, recorded), or restore the old code "
                         f"(an app without a `sweep` node: hydra.launcher.code_change=rerun or =accept)")


# ----------------------------------------------------------------------------- the store


class Store:
    """A fixed root holding run directories; independent of Hydra's timestamped sweep dirs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.index = RunIndex(self.root)  # identity hash -> run directory (a cache, core/index.py)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, config: str, seed: int | None, hash8: str) -> RunDir:
        """runs/<config>/seed_<seed>/<hash8>, or runs/<label>/<hash8> for an app without a seed."""
        path = self.runs_dir / config / hash8 if seed is None else self.runs_dir / config / f"seed_{int(seed)}" / hash8
        return RunDir(path, lease_from_env(path))  # fenced by $SDS_LEASE when this process is that cell

    def locate(self, config: str, seed: int | None, hash8: str, run_config: dict | None = None) -> RunDir:
        """The run directory of identity `hash8` wherever it is under runs/, whatever swept keys its
        label was first stored with (they are presentation, kept from the first run); else the label
        path runs/<config>/... where a new cell goes. Found through the store index (one query, no walk
        of the tree), each hit checked against its spec.json: same hash, same seed, same label base
        (the `config` choice or the app's job name: two apps with equal configs are two cells) and,
        given `run_config`, the same resolved run config (an 8-hex hash may collide). Several directories
        of one identity (stored twice by an older version): the oldest finished one, else the oldest."""
        fallback = self.run_dir(config, seed, hash8)
        base = label_base(config)
        found: list[Path] = []
        paths = self.index.lookup(hash8)
        indexed = set(paths)
        if fallback.path not in indexed:
            paths.append(fallback.path)  # a run dir the index missed (written by an older version)
        for path in paths:
            try:
                spec = read_json(path / "spec.json")
            except StoreError:
                continue  # corrupt: not evidence of this identity (planning at its label path says so)
            if spec is None:
                if path in indexed:
                    self.index.drop(path)  # moved or deleted since it was indexed
                continue
            if spec.get("hash") != hash8 or spec.get("seed") != seed or label_base(str(spec.get("config"))) != base or (
                    run_config is not None and spec.get("run_config") != run_config):
                continue
            if path not in indexed:
                self.index.add(path, hash8, path.parent.name if seed is None else path.parent.parent.name, seed)
            found.append(path)
        if not found:
            return fallback
        return pick_run_dir(found)

    def find(self, config: str, seed: int | None) -> list[RunDir]:
        """Every run directory for (config, seed), whatever its identity hash."""
        d = self.runs_dir / config if seed is None else self.runs_dir / config / f"seed_{int(seed)}"
        if not d.is_dir():
            return []
        return [RunDir(p) for p in sorted(d.iterdir()) if p.is_dir() and (p / "spec.json").exists()]

    def iter_runs(self) -> Iterator[RunDir]:
        if not self.runs_dir.is_dir():
            return
        specs = [*self.runs_dir.glob("*/seed_*/*/spec.json"), *self.runs_dir.glob("*/*/spec.json")]
        for spec in sorted(specs):
            yield RunDir(spec.parent)

    def manifests_dir(self) -> Path:
        d = self.root / "manifests"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- sweep manifests: which cells were asked for (so holes are visible even with no run dir)
    @property
    def sweeps_dir(self) -> Path:
        return self.root / "sweeps"

    def write_sweep_manifest(self, sweep_id: str, doc: dict) -> Path:
        """`doc` holds at least `cells`: [{config, seed, hash, overrides}], plus launcher settings."""
        path = self.sweeps_dir / f"{sweep_id}.json"
        atomic_write_json(path, {"id": sweep_id, **doc})
        return path

    def read_sweep_manifests(self) -> list[dict]:
        """Every sweep manifest, oldest first."""
        if not self.sweeps_dir.is_dir():
            return []
        docs = [read_json(p) for p in sorted(self.sweeps_dir.glob("*.json"))]
        return sorted((d for d in docs if d), key=lambda d: d.get("created_at", 0))

    def expected_cells(self) -> list[dict]:
        """The matrix: one entry per cell identity (hash and seed) that any sweep on this store asked
        for, plus every run directory on disk, however many command lines asked for it and under
        whichever labels: it carries the label of its run directory (the label it was first stored
        under), else the first label it was asked under. For one (label, seed) the newest sweep's hash
        wins (a new variant replaces the old one in the matrix). Sorted by config then seed."""
        # An app without a seed has one cell per label and hash: its key carries the hash.
        cells: dict[tuple[str, int, str], dict] = {}

        def key_of(config: str, seed: Any, hash8: Any) -> tuple[str, int, str]:
            return (config, -1, str(hash8)) if seed is None else (config, int(seed), "")

        stored: dict[tuple[str, str, int | None], list[tuple[RunDir, dict]]] = {}  # identity: base, hash, seed
        for rd in self.iter_runs():
            spec = rd.read_spec() or {}
            if spec.get("config") is None:
                continue
            seed = None if spec.get("seed") is None else int(spec["seed"])
            stored.setdefault((label_base(str(spec["config"])), str(spec.get("hash")), seed), []).append((rd, spec))
        on_disk: dict[tuple[str, str, int | None], dict] = {}
        for (base, hash8, seed), found in stored.items():
            rd = pick_run_dir([r.path for r, _ in found])
            spec = next(sp for r, sp in found if r.path == rd.path)
            on_disk[(base, hash8, seed)] = {"config": str(spec["config"]), "seed": seed, "hash": spec.get("hash"),
                                      "done_when": spec.get("done_when")}
        labels: dict[tuple[str, str, int | None], str] = {k: c["config"] for k, c in on_disk.items()}
        for doc in self.read_sweep_manifests():
            for c in doc.get("cells", []):
                seed = None if c.get("seed") is None else int(c["seed"])
                label = c["config"] if not c.get("hash") else labels.setdefault(
                    (label_base(c["config"]), str(c["hash"]), seed), c["config"])
                cells[key_of(label, seed, c.get("hash"))] = {"config": label, "seed": seed, "hash": c.get("hash"),
                                                             "done_when": c.get("done_when")}
        asked = {(label_base(c["config"]), str(c["hash"]), c["seed"]) for c in cells.values() if c["hash"]}
        for ident, cell in on_disk.items():
            key = key_of(cell["config"], cell["seed"], cell["hash"])
            if key not in cells and ident not in asked:
                cells[key] = cell
        return [cells[k] for k in sorted(cells)]


def label_base(label: str) -> str:
    """The first part of a cell label (`v2_baseline` of `v2_baseline,agent.lr=0.001`): the `config`
    choice of the built-in app or the job name of any other app, part of what the cell is."""
    return label.split(",", 1)[0]


def pick_run_dir(paths: list[Path]) -> RunDir:
    """Of several run directories holding one identity (stored twice by an older version, under two
    labels): the oldest finished one (by its spec.json's time), else the oldest."""
    def age(p: Path) -> float:
        try:
            return (p / "spec.json").stat().st_mtime
        except OSError:
            return float("inf")

    ordered = sorted(paths, key=lambda p: (age(p), str(p))) if len(paths) > 1 else list(paths)
    done = [p for p in ordered if RunDir(p).finished()] if len(ordered) > 1 else []
    path = (done or ordered)[0]
    return RunDir(path, lease_from_env(path))
