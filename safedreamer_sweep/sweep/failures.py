"""Why a cell's attempt ended, and what to do about it.

`classify_failure(evidence)` is a pure function over the facts the supervisor gathered (scheduler
state, exit code or signal, stderr tail, the cell's own closing record, progress age); it returns
`(cause, evidence_text)` with one of CAUSES. `RetryPolicy.decide` turns a cause into an action
(docs/architecture.md, "Failure causes"): oom -> more memory, node_fault -> exclude the node, stalled/lost/
timeout/preempted -> resume from the checkpoint, error -> stop and show the traceback tail.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

CAUSES = ("oom", "timeout", "preempted", "node_fault", "stalled", "lost", "error")
RESUMABLE = {"oom", "timeout", "preempted", "node_fault", "stalled", "lost"}

_OOM_RE = re.compile(r"exceeded memory limit|oom[-_ ]kill|out of memory|Out Of Memory|OUT_OF_MEMORY|"
                     r"Killed process \d+|memory cgroup out of memory|std::bad_alloc|MemoryError")
# An exception the cell raised because memory ran out (MuJoCo's "engine error: Could not allocate
# memory" under an RLIMIT, numpy's "Unable to allocate", XLA's RESOURCE_EXHAUSTED): an OOM, not a bug.
_OOM_EXC_RE = re.compile(r"MemoryError|Could not allocate memory|Cannot allocate memory|\bENOMEM\b|"
                         r"Unable to allocate|RESOURCE_EXHAUSTED|std::bad_alloc|CUDA out of memory")
_NODE_RE = re.compile(r"CUDA error: (?:device )?busy|CUDA-capable device\(s\) is/are busy|"
                      r"uncorrectable ECC|ECC error|NVML.*(?:Unknown|GPU is lost)|"
                      r"GPU has fallen off the bus|NODE_FAIL|cudaErrorDevicesUnavailable")
_NAN_RE = re.compile(r"\bnan\b|non-finite", re.IGNORECASE)


def _line_with(text: str, rx: re.Pattern) -> str:
    for line in text.splitlines():
        if rx.search(line):
            return line.strip()[:300]
    m = rx.search(text)
    return text[max(0, m.start() - 80):m.end() + 80].strip() if m else ""


def classify_failure(evidence: dict[str, Any]) -> tuple[str, str]:
    """The cause of an attempt that did not end `done`, and the evidence it was read from.

    Keys used (all optional): `slurm_state` (e.g. "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED by 0"),
    `exit_code`, `signal`, `node`, `stderr_tail`, `oom_evidence` (kernel/cgroup lines),
    `cell_cause`, `cell_evidence`, `traceback_tail` (what the cell recorded when it closed its
    attempt), `stalled` (bool: alive but env_step did not move), `progress_age_s`, `stall_after`,
    `process_gone` (bool).
    """
    state = str(evidence.get("slurm_state") or "").upper()
    stderr = str(evidence.get("stderr_tail") or "")
    cell_cause = evidence.get("cell_cause")
    cell_text = f"{evidence.get('cell_evidence') or ''}\n{evidence.get('traceback_tail') or ''}"
    where = f" on {evidence['node']}" if evidence.get("node") else ""
    sig = evidence.get("signal")
    code = evidence.get("exit_code")
    how = (f"slurm {state}" if state else (f"pid {evidence['pid']}" if evidence.get("pid") else "process")) + where + (f", signal {sig}" if sig else "") + (
        f", exit code {code}" if code not in (None, "") else "")

    if state.startswith("OUT_OF_MEMORY") or evidence.get("oom_evidence") or _OOM_RE.search(stderr) \
            or _OOM_RE.search(cell_text) and cell_cause != "error" or _OOM_EXC_RE.search(cell_text):
        line = (evidence.get("oom_evidence") or _line_with(stderr, _OOM_RE) or _line_with(cell_text, _OOM_RE)
                or _line_with(cell_text, _OOM_EXC_RE))
        return "oom", f"{how}: {line}".strip(": ")
    if state.startswith("NODE_FAIL") or _NODE_RE.search(cell_text) or _NODE_RE.search(stderr):
        line = _line_with(cell_text, _NODE_RE) or _line_with(stderr, _NODE_RE) or "node failure"
        return "node_fault", f"{how}: {line}"
    if state.startswith("PREEMPTED") or cell_cause == "preempted":
        return "preempted", f"{how}: {evidence.get('cell_evidence') or 'preempted by the scheduler'}"
    if state.startswith(("TIMEOUT", "DEADLINE")) or cell_cause == "timeout" or "timed-out too many times" in cell_text:
        return "timeout", f"{how}: {evidence.get('cell_evidence') or 'time limit reached'}"
    if evidence.get("stalled"):
        age, lim = evidence.get("progress_age_s"), evidence.get("stall_after")
        return "stalled", (f"env_step {evidence.get('env_step')} did not move for {age:.0f}s "
                           f"(stall_after={lim:.0f}s) while {evidence.get('alive_what') or 'the process'} was alive")
    if cell_cause == "error":
        first = (evidence.get("cell_evidence") or "").strip()
        if _NAN_RE.search(first):
            return "error", f"non-finite values: {first}"
        return "error", first or "the cell raised an exception (see traceback tail)"
    if state.startswith("CANCELLED"):
        return "lost", f"{how}: cancelled outside the launcher, the attempt has no end marker"
    return "lost", f"{how}: the process is gone and the attempt has no end marker"


@dataclass
class RetryPolicy:
    """When and how a failed cell runs again. Preemption never uses up an attempt."""

    max_attempts: int = 3
    mem_factor: float = 1.5
    retry_errors: bool = False

    def counted_attempts(self, attempts: list[dict]) -> int:
        return sum(1 for a in attempts if a.get("cause") != "preempted" and a.get("outcome") != "submitted")

    def decide(self, cause: str, attempts: list[dict], *, mem_gb: float | None = None,
               node: str | None = None, exclude: list[str] | None = None) -> Action:
        """What to do after an attempt ended with `cause` (`attempts`: state.json's list, the ended
        attempt included)."""
        used = self.counted_attempts(attempts)
        if cause == "error" and not self.retry_errors:
            return Action("stop", "an exception is not retried (set hydra.launcher.retry_errors=true to retry)")
        if cause not in RESUMABLE and cause != "error":
            return Action("stop", f"unknown cause {cause}")
        if used >= self.max_attempts and cause != "preempted":
            return Action("stop", f"{used} of max_attempts={self.max_attempts} used")
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
    kind: str  # "retry" | "stop"
    reason: str
    mem_gb: float | None = None
    exclude: list[str] = field(default_factory=list)
