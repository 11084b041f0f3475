"""One run directory: every read and write the rest of the code does in it, fenced by the run's lease.

    <run dir>/     (<store>/runs/<config>/seed_<seed>/<hash8>/, or <store>/runs/<label>/<hash8>/: core/store.py)
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

Every JSON document is replaced atomically (write a temp file, fsync, rename: core/files.py), so a
kill -9 at any instant leaves either the old or the new version, never half of one; readers (status,
the report, the planner) therefore never lock. Writers take the run directory's locks (core/locks.py).

Fencing: a RunDir opened with the lease `generation` its holder was given (the launcher's, or the
cell's through $SDS_LEASE) checks, under the data lock, that claim.json still carries that
generation before every write of state, progress, curves, a checkpoint or a result. A holder that
lost its lease (taken over by another host after it stopped renewing) gets LeaseLost and its write
does not land. A takeover rewrites claim.json under the lease lock only; a write that passed its
fence check before the takeover still completes, but before any write of the new holder, which
takes the data lock first (its cell's first act is to open its attempt), so writes stay ordered.

A spec.json is written once: a run directory never changes identity. When the code that computes it
changed and the directory holds work, the cell's code-change policy settles it (refuse, rerun or
accept; fingerprints: core/code_fingerprint.py).
"""

from __future__ import annotations

import contextlib
import hashlib
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

from safedreamer_sweep.core.files import StoreError, atomic_write_bytes, atomic_write_json, json_line, read_json, read_jsonl
from safedreamer_sweep.core.index import register_run, store_root_of
from safedreamer_sweep.core.locks import CELL_LOCK_S, SUPERVISOR_LOCK_S, locked
from safedreamer_sweep.core.store_format import record_if_new

_CHECKPOINT_RE = re.compile(r"^ckpt_(\d{12})\.pkl$")
EVAL_KINDS = ("id", "ood")
_TRACEBACK_TAIL_CHARS = 4000  # of a failed attempt's traceback, kept in state.json


class LeaseLost(StoreError):
    """A write by a holder whose lease generation is no longer the run's: the write was dropped."""


def now() -> float:
    """The wall-clock time the store's records are stamped with."""
    return time.time()


def host() -> str:
    """This host's name, as the store's records name it."""
    return socket.gethostname()


def lease_from_env(path: Path) -> int | None:
    """The lease generation a cell process was given for run dir `path` ($SDS_LEASE=<hash8>:<generation>,
    set by the launcher for the cell it submits), None when it names another run or is unset."""
    value = os.environ.get("SDS_LEASE", "")
    name, _, gen = value.rpartition(":")
    return int(gen) if name and name == Path(path).name and gen.isdigit() else None


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The fields that close an attempt failed by `exc`: cause `error`, the exception as evidence and
    the tail of its traceback (`RunDir.end_attempt("failed", **error_fields(e))`)."""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-_TRACEBACK_TAIL_CHARS:]
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

    # --- the locks and the lease (see core/locks.py)
    def lock(self, timeout: float = CELL_LOCK_S) -> contextlib.AbstractContextManager[None]:
        """The data lock (state.json read-modify-write, fenced writes; see core/locks.py).
        LockBusy, naming its holder, when it is not free within `timeout` seconds."""
        return locked(self.path / ".lock", timeout)

    def lease_lock(self, timeout: float = SUPERVISOR_LOCK_S) -> contextlib.AbstractContextManager[None]:
        """The lease lock (claim.json read-modify-write). Only launchers and supervisors take it."""
        return locked(self.path / ".claim.lock", timeout)

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

    # --- the spec: written once, a code change settled
    def read_spec(self) -> dict | None:
        return read_json(self.spec_path)

    def ensure_spec(self, spec: dict) -> None:
        """Write spec.json once. A run directory never changes identity; when the code that computes
        it changed, `spec["code_change"]` (refuse, rerun, accept) decides (_settle_code_change)."""
        policy = str(spec.get("code_change") or "refuse")
        spec = {k: v for k, v in spec.items() if k != "code_change"}
        with self.lock(self.lock_s):
            old = self.read_spec()
            if old is None:
                atomic_write_json(self.spec_path, spec)
                register_run(self.path, str(spec.get("hash")), spec.get("seed"))  # the store index (core/index.py)
                if (root := store_root_of(self.path, spec.get("seed"))) is not None:
                    record_if_new(root, created=self.path)  # a new store records its format (core/store_format.py)
            elif old.get("hash") != spec.get("hash"):
                raise StoreError(
                    f"{self.spec_path}: holds identity {old.get('hash')} but {spec.get('hash')} was "
                    f"requested; a run directory never changes identity. Fix: use a clean store "
                    f"or move the directory aside."
                )
            else:
                _settle_code_change(self, old, spec, policy)

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
        """Close the newest attempt: outcome is `done`, `failed` or `interrupted` (or `pruned`). An attempt
        its study's pruner already closed as `pruned` stays pruned: the cell's own account of the kill
        (interrupted, failed) is kept beside it as `cell_outcome`."""

        def change(s: dict) -> None:
            attempts = s.setdefault("attempts", [])
            if not attempts:
                attempts.append({"n": 1, "host": host(), "pid": os.getpid()})
            if attempts[-1].get("outcome") == "pruned" and outcome not in ("pruned", "done"):
                attempts[-1].update(cell_outcome=outcome, cell_cause=fields.get("cause"),
                                    cell_evidence=fields.get("evidence"))
                return
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
                m = _CHECKPOINT_RE.match(p.name)
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
        package's own tasks) or the stored return value (any other app); see identity.RunSpec.done_when.
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


def _has_work(rd: RunDir) -> bool:
    """True when a run dir holds anything computed (a checkpoint, a curve, an evaluation, a result)."""
    state = rd.read_state()
    return bool(state.get("trained") or rd.checkpoints() or rd.metrics_path.exists()
                or any(rd.eval_path(k).exists() for k in ("id", "ood")) or (rd.path / "result.pkl").exists())


def _settle_code_change(rd: RunDir, old: dict, new: dict, policy: str) -> None:
    """Called by RunDir.ensure_spec (under the run lock) when spec.json exists with the same identity.
    If the code recorded in it differs from `new`'s and the run dir holds work: `rerun` moves that
    work to superseded/ (nothing is deleted) and writes `new`; `accept` appends the new code to
    spec.json's `code_accepted` and keeps the work; `refuse` raises StoreError naming both. Without
    work, spec.json simply takes the new code. A task that declares no code is never compared
    (fingerprints: core/code_fingerprint.py)."""
    from safedreamer_sweep.core.code_fingerprint import (
        describe_code,
        implicit_code,
        recorded_fingerprint,
    )

    new_code = new.get("code") or {}
    if not new_code.get("fingerprint") or recorded_fingerprint(old) == new_code["fingerprint"]:
        return
    if recorded_fingerprint(old) is None and implicit_code(new_code):
        policy = "accept"  # an app's cell stored before its main script was fingerprinted: kept, the script recorded
    if not _has_work(rd):
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
