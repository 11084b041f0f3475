"""Why a cell's attempt ended, and what to do about it.

`classify_failure(evidence)` is a pure function over the facts the supervisor gathered; it returns
`(cause, evidence_text)` with one of _CAUSES. A cause is read only from evidence of how the attempt
ended, never from words that merely appear in a log:

    oom        the scheduler says OUT_OF_MEMORY; slurmstepd's own "exceeded memory limit ... being
               killed" / "oom-kill event" line; SIGKILL while the cgroup's oom_kill count rose
               (the exit record of exitwatch.py); the local RSS guard's kill (`oom_evidence`);
               MemoryError / RESOURCE_EXHAUSTED / an allocator failure as the FINAL exception
    node_fault NODE_FAIL, or a GPU/driver fault in the final exception or stderr
    preempted  / timeout: the scheduler's state, or the requeue handler's note in the attempt
    stalled    env_step did not move for stall_after while the process was alive (the supervisor)
    cancelled  scancel (CANCELLED by <uid>), Ctrl-C / SIGINT / SIGTERM from a user: not retried
    crash      a fatal signal (SIGSEGV, SIGABRT, SIGBUS, ...), named; retried once
    error      the cell raised an exception: stopped with its traceback
    lost       the process is gone with no end marker (a SIGKILL with no memory evidence is
               named as signal 9 in the evidence)

Not a failure: an attempt its study's pruner stopped (closed with outcome `pruned`, sweep/attempt_end.py
puts `pruned` in the evidence) is classified `pruned` before any rule runs, whatever signal killed
it, and `RetryPolicy.decide` answers `pruned` (neither retry nor stop): the cell keeps phase `pruned`.

`RetryPolicy.decide` turns a cause into an action (docs/architecture.md, "Failure causes"):
oom -> more memory, node_fault -> exclude the node, stalled/lost/timeout/preempted -> resume from
the checkpoint, crash -> resume once, error and cancelled -> stop.
"""

from __future__ import annotations

import math
import re
import signal as _signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_CAUSES = ("oom", "timeout", "preempted", "node_fault", "stalled", "cancelled", "crash", "lost", "error")
_RESUMABLE = {"oom", "timeout", "preempted", "node_fault", "stalled", "lost", "crash"}
# Causes a new launch of the sweep resumes (the user asking again is the retry): a cancel is not
# retried by the supervisor that saw it, but running the sweep again means "go on".
RELAUNCHABLE = _RESUMABLE | {"cancelled"}
PRUNED = "pruned"  # not a cause of failure: the attempt its study's pruner stopped (never counted, never retried)
_CRASH_RETRIES = 1  # a fatal signal is retried once: twice in a row is the code, not bad luck

# Scheduler lines that record a kill for memory (written by slurmstepd, not by the application).
_SLURM_MEM_KILL_RE = re.compile(r"^slurmstepd\S*: error: .*(?:exceeded memory limit .*being killed|"
                                r"Detected \d+ oom[-_ ]kill event)", re.IGNORECASE | re.MULTILINE)
# The final exception of an attempt that ran out of memory (an allocator gave up), as its type or message.
_OOM_EXC_RE = re.compile(r"^(?:[\w.]*MemoryError|[\w.]*XlaRuntimeError: RESOURCE_EXHAUSTED|.*\bRESOURCE_EXHAUSTED\b|"
                         r".*(?:Could not allocate memory|Cannot allocate memory|Unable to allocate|"
                         r"std::bad_alloc|CUDA out of memory))")
_NODE_RE = re.compile(r"CUDA error: (?:device )?busy|CUDA-capable device\(s\) is/are busy|"
                      r"uncorrectable ECC|ECC error|NVML.*(?:Unknown|GPU is lost)|"
                      r"GPU has fallen off the bus|NODE_FAIL|cudaErrorDevicesUnavailable")
_NAN_RE = re.compile(r"\bnan\b|non-finite", re.IGNORECASE)
# An exception line of a Python traceback: `Type: message` or a bare `Type` at column 0.
_EXC_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(?::.*)?$")
_USER_SIGNALS = {int(_signal.SIGINT), int(_signal.SIGTERM), int(_signal.SIGHUP)}
_BENIGN_SIGNALS = {int(_signal.SIGUSR1), int(_signal.SIGUSR2), int(_signal.SIGCONT)}


def _signal_name(sig: int) -> str:
    """`SIGSEGV (signal 11)` for 11."""
    try:
        return f"{_signal.Signals(int(sig)).name} (signal {int(sig)})"
    except ValueError:
        return f"signal {sig}"


def final_exception(text: str) -> str:
    """The last exception line of a Python traceback (`ValueError: ...`), '' if there is none. Only
    what comes after the last `Traceback (most recent call last):` counts, so a warning logged before
    the traceback is never mistaken for the exception."""
    if not text:
        return ""
    marker = "Traceback (most recent call last):"
    if marker not in text:
        return ""
    for line in text.rsplit(marker, 1)[-1].splitlines():
        if line.strip() and not line[0].isspace() and _EXC_LINE_RE.match(line.strip()):
            return line.strip()[:300]  # the first unindented line after the frames
    return ""


def cancelled_by(state: str) -> str | None:
    """`CANCELLED by 1000` -> the user name of uid 1000 (or the uid), None when not a cancel."""
    m = re.match(r"^CANCELLED\+?(?: by (\d+))?", state, re.IGNORECASE)
    if not m:
        return None
    if not m.group(1):
        return "an unknown user"
    import pwd

    uid = int(m.group(1))
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _slurm_signal(exit_code: Any) -> int | None:
    """The signal in sacct's `ExitCode` (`0:11` -> 11), None when the job was not killed by one."""
    m = re.match(r"^(-?\d+):(\d+)$", str(exit_code or ""))
    return int(m.group(2)) if m and m.group(2) != "0" else None


def _oom_rose(rec: dict) -> str | None:
    before, after = rec.get("oom_kill_before"), rec.get("oom_kill_after")
    if before is None or after is None or int(after) <= int(before):
        return None
    return (f"cgroup {rec.get('cgroup') or '?'} oom_kill count rose {before} -> {after} while the cell ran")


def classify_failure(evidence: dict[str, Any]) -> tuple[str, str]:
    """The cause of an attempt that did not end `done`, and the evidence it was read from.

    Keys used (all optional): `slurm_state` (e.g. "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED by 0"),
    `exit_code`, `signal`, `exit_record` (exitwatch.py's record of the local cell process: returncode,
    signal, oom_kill_before/after, cgroup), `node`, `pid`, `stderr_tail`, `oom_evidence` (the local
    RSS guard's kill), `cell_cause`, `cell_evidence`, `traceback_tail` (what the cell recorded when it
    closed its attempt), `stalled` (bool), `progress_age_s`, `stall_after`, `env_step`, `alive_what`,
    `cancelled_by` (who interrupted the launcher, e.g. Ctrl-C), `pruned` (the pruner's record of an
    attempt closed as pruned: then the answer is `pruned`, not a failure).

    The rules are tried in order, the first that holds names the cause: memory, then the scheduler's
    own states and the supervisor's stall, then a person, then a signal or the cell's exception.
    """
    if evidence.get("pruned"):  # stopped on purpose by its study's pruner (the kill's signal is ours)
        return PRUNED, str(evidence["pruned"])
    facts = _Facts.read(evidence)
    for rule in (_by_memory, _by_scheduler, _by_person, _by_signal_or_exception):
        found = rule(facts)
        if found:
            return found
    return "lost", f"{facts.how}: the process is gone and the attempt has no end marker"


@dataclass
class _Facts:
    """The evidence, read once: what every rule looks at."""

    ev: dict[str, Any]
    state: str          # the scheduler's state, upper case ("" when local)
    stderr: str
    cell_cause: Any     # what the cell recorded when it closed its attempt
    rec: dict           # exitwatch.py's exit record of a local cell process
    sig: int | None     # the signal that ended the process, if one did
    how: str            # "slurm OUT_OF_MEMORY on node1, exit code 0:9" / "pid 123, killed by SIGKILL (signal 9)"
    exc: str            # the final exception: what the cell recorded, else the last traceback in stderr

    @classmethod
    def read(cls, ev: dict[str, Any]) -> _Facts:
        state = str(ev.get("slurm_state") or "").upper()
        stderr = str(ev.get("stderr_tail") or "")
        cell_cause = ev.get("cell_cause")
        rec = ev.get("exit_record") or {}
        sig = ev.get("signal") or rec.get("signal") or _slurm_signal(ev.get("exit_code"))
        code = ev.get("exit_code")
        if code in (None, "") and rec.get("returncode") is not None and not rec.get("signal"):
            code = rec.get("returncode")
        where = f" on {ev['node']}" if ev.get("node") else ""
        pid = ev.get("pid") or rec.get("pid")
        how = ((f"slurm {state}" if state else (f"pid {pid}" if pid else "process")) + where
               + (f", killed by {_signal_name(sig)}" if sig else "")
               + (f", exit code {code}" if code not in (None, "") else ""))
        exc = ""
        if cell_cause == "error":
            exc = final_exception(str(ev.get("traceback_tail") or "")) or (
                str(ev.get("cell_evidence") or "").strip().splitlines() or [""])[0]
        elif not cell_cause:
            exc = final_exception(stderr)
        return cls(ev, state, stderr, cell_cause, rec, sig, how, exc)


def _by_memory(f: _Facts) -> tuple[str, str] | None:
    """oom: only from evidence of a kill (or an allocation failure) for memory."""
    if f.state.startswith("OUT_OF_MEMORY"):
        return "oom", f"{f.how}: the scheduler killed the job for memory" + _first_line(f.stderr, _SLURM_MEM_KILL_RE, ": ")
    if f.ev.get("oom_evidence"):
        return "oom", f"{f.how}: {f.ev['oom_evidence']}"
    rose = _oom_rose(f.rec)
    if rose and f.sig == int(_signal.SIGKILL):
        return "oom", f"{f.how}: {rose} (the kernel's OOM killer)"
    m = _SLURM_MEM_KILL_RE.search(f.stderr)
    if m:
        return "oom", f"{f.how}: {m.group(0).strip()[:300]}"
    if f.exc and _OOM_EXC_RE.match(f.exc):
        return "oom", f"{f.how}: final exception {f.exc}"
    return None


def _by_scheduler(f: _Facts) -> tuple[str, str] | None:
    """The scheduler's and the requeue handler's own states, and the supervisor's stall."""
    note = f.ev.get("cell_evidence")
    if f.state.startswith("NODE_FAIL") or _NODE_RE.search(f.exc) or _NODE_RE.search(f.stderr):
        line = (f.exc if _NODE_RE.search(f.exc) else "") or _first_line(f.stderr, _NODE_RE) or "node failure"
        return "node_fault", f"{f.how}: {line}"
    if f.state.startswith("PREEMPTED") or f.cell_cause == "preempted":
        return "preempted", f"{f.how}: {note or 'preempted by the scheduler'}"
    if f.state.startswith(("TIMEOUT", "DEADLINE")) or f.cell_cause == "timeout" or \
            "timed-out too many times" in f"{note or ''}":
        return "timeout", f"{f.how}: {note or 'time limit reached'}"
    if f.ev.get("stalled"):
        age, lim = f.ev.get("progress_age_s") or 0.0, f.ev.get("stall_after") or 0.0
        return "stalled", (f"env_step {f.ev.get('env_step')} did not move for {age:.0f}s "
                           f"(stall_after={lim:.0f}s) while {f.ev.get('alive_what') or 'the process'} was alive")
    return None


def _by_person(f: _Facts) -> tuple[str, str] | None:
    """A person stopped it (scancel, Ctrl-C, a kill with SIGINT/SIGTERM/SIGHUP): recorded, never retried."""
    if f.state.startswith("CANCELLED") and " BY " not in f.state and f.sig is not None and \
            int(f.sig) not in _USER_SIGNALS | _BENIGN_SIGNALS | {int(_signal.SIGKILL)}:
        return None  # a job step whose task died of a fatal signal: sacct says CANCELLED, nobody's scancel
    who = cancelled_by(f.state) if f.state.startswith("CANCELLED") else None
    if who is None and (f.ev.get("cancelled_by") or f.cell_cause in ("cancelled", "interrupted")
                        or (f.sig is not None and int(f.sig) in _USER_SIGNALS)):
        who = f.ev.get("cancelled_by") or _local_user(f.rec)
    if who is None:
        return None
    what = f"scancel by {who}" if f.state.startswith("CANCELLED") else (
        f"{_signal_name(f.sig) if f.sig else (f.ev.get('cell_evidence') or 'interrupt')} from {who}")
    return "cancelled", f"{f.how}: cancelled: {what}; not retried (run the sweep again to resume it)"


def _by_signal_or_exception(f: _Facts) -> tuple[str, str] | None:
    """A fatal signal is a crash; the cell's own exception an error; a SIGKILL with no memory evidence is lost."""
    sig = None if f.sig is None else int(f.sig)
    if sig is not None and sig not in _BENIGN_SIGNALS and sig != int(_signal.SIGKILL):
        return "crash", f"{f.how}: the process died of {_signal_name(sig)}" + (f"; last exception {f.exc}" if f.exc else "")
    if f.cell_cause == "error":
        first = f.exc or (f.ev.get("cell_evidence") or "").strip()
        if _NAN_RE.search(first):
            return "error", f"non-finite values: {first}"
        return "error", first or "the cell raised an exception (see traceback tail)"
    if sig == int(_signal.SIGKILL):
        counter = "cgroup oom_kill count unchanged" if f.rec.get("oom_kill_after") is not None else "no cgroup counter"
        return "lost", (f"{f.how}: killed by SIGKILL from outside the launcher; no memory-kill evidence "
                        f"({counter}); the attempt has no end marker")
    return None


def _first_line(text: str, rx: re.Pattern, prefix: str = "") -> str:
    for line in text.splitlines():
        if rx.search(line):
            return prefix + line.strip()[:300]
    return ""


def _local_user(rec: dict) -> str:
    import getpass

    try:
        return f"user {getpass.getuser()} on this host (the launcher's terminal or a kill)"
    except (KeyError, OSError):
        return "a user on this host"


@dataclass
class RetryPolicy:
    """When and how a failed cell runs again. Preemption never uses up an attempt."""

    max_attempts: int = 3
    mem_factor: float = 1.5
    retry_errors: bool = False

    def counted_attempts(self, attempts: list[dict]) -> int:
        """Attempts that use up max_attempts: not a preemption, a queued one, nor one its pruner stopped."""
        return sum(1 for a in attempts if a.get("cause") != "preempted" and a.get("outcome") not in ("submitted", PRUNED))

    def decide(self, cause: str, attempts: list[dict], *, mem_gb: float | None = None,
               node: str | None = None, exclude: list[str] | None = None) -> Action:
        """What to do after an attempt ended with `cause` (`attempts`: state.json's list, the ended
        attempt included)."""
        used = self.counted_attempts(attempts)
        if cause == PRUNED:
            return Action(PRUNED, "stopped by its study's pruner: not a failure, not retried (planned again, it "
                                  "resumes from its checkpoint)")
        if cause == "error" and not self.retry_errors:
            return Action("stop", "an exception is not retried (set hydra.launcher.retry_errors=true to retry)")
        if cause == "cancelled":
            return Action("stop", "cancelled by a user: not retried (run the sweep again to resume it)")
        if cause not in _RESUMABLE and cause != "error":
            return Action("stop", f"unknown cause {cause}")
        if used >= self.max_attempts and cause != "preempted":
            return Action("stop", f"{used} of max_attempts={self.max_attempts} used")
        crashes = sum(1 for a in attempts if a.get("cause") == "crash")
        if cause == "crash" and crashes > _CRASH_RETRIES:
            return Action("stop", f"{crashes} attempts died of a fatal signal: retried {_CRASH_RETRIES}x already")
        act = Action("retry", f"resume from checkpoint (attempt {used + 1} of {self.max_attempts})")
        if cause == "oom" and mem_gb:
            act.mem_gb = math.ceil(round(mem_gb * self.mem_factor * 100, 6)) / 100  # up to 10 MB
            act.reason += f", memory {mem_gb} GB -> {act.mem_gb} GB"
        if cause == "node_fault" and node:
            act.exclude = sorted(set(exclude or []) | {node})
            act.reason += f", excluding node(s) {','.join(act.exclude)}"
        return act


@dataclass
class Action:
    kind: str  # "retry" | "stop" | "pruned" (not a failure: the cell stays pruned)
    reason: str
    mem_gb: float | None = None
    exclude: list[str] = field(default_factory=list)


def bad_nodes(states: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The nodes that ended an attempt with a node fault, read from the cells' attempt records
    (`(label, state.json)` pairs): per node, the first evidence and when, how many attempts it
    ended and which cells they were. The store is the record: status and the report name these
    nodes, and `exclude_bad_nodes_across_sweeps` keeps them out of later sweeps. Other causes (a
    Python error, a crash) never make a node bad."""
    nodes: dict[str, dict[str, Any]] = {}
    for label, state in states:
        for a in state.get("attempts") or []:
            if a.get("cause") != "node_fault" or not a.get("node"):
                continue
            at = a.get("ended_at") or a.get("submitted_at")
            n = nodes.setdefault(str(a["node"]), {"node": str(a["node"]), "evidence": a.get("evidence"),
                                                  "first_at": at, "last_at": at, "attempts": 0, "cells": []})
            n["attempts"] += 1
            if at is not None and (n["first_at"] is None or at < n["first_at"]):
                n.update(first_at=at, evidence=a.get("evidence"))
            if at is not None and (n["last_at"] is None or at > n["last_at"]):
                n["last_at"] = at
            if label not in n["cells"]:
                n["cells"].append(label)
    return [nodes[k] for k in sorted(nodes)]


def bad_nodes_text(node: Mapping[str, Any]) -> str:
    """`n2: 1 attempt of 1 cell (v2_baseline seed 1) ended with a node fault: <first evidence>`."""
    cells = node["cells"]
    shown = ", ".join(cells[:6]) + (" ..." if len(cells) > 6 else "")
    return (f"{node['node']}: {node['attempts']} attempt{'s' if node['attempts'] != 1 else ''} of {len(cells)} "
            f"cell{'s' if len(cells) != 1 else ''} ({shown}) ended with a node fault: {node.get('evidence') or '?'}")


def bad_nodes_of_store(store: Any) -> list[dict[str, Any]]:
    """`bad_nodes` over every run directory of a `Store` (cells labelled `config seed N`; a run
    directory with a corrupt spec or state is left out: status shows it as corrupt)."""
    from safedreamer_sweep.core.files import StoreError

    items = []
    for rd in store.iter_runs():
        try:
            spec, state = rd.read_spec() or {}, rd.read_state()
        except StoreError:
            continue
        items.append((f"{spec.get('config', rd.path.parent.parent.name)} seed {spec.get('seed', '?')}", state))
    return bad_nodes(items)
