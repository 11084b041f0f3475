"""classify_failure over the evidence real failures produce, and the retry policy per cause.

Each rule is exercised by a real process ending the way it says: a ValueError whose stderr holds
XLA's harmless allocator warning, a MemoryError under RLIMIT_AS, the kernel's OOM killer in a memory
cgroup, a SIGKILL from outside, a segfault, a Ctrl-C, and on Slurm an `scancel` and a memory kill.
Local processes run under exitwatch.py, the parent that records their exit status for the launcher.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from safedreamer_sweep.sweep.exit_records import read_exit_record
from safedreamer_sweep.sweep.failures import (
    RetryPolicy,
    classify_failure,
    final_exception,
)

OOM_STDERR = ("submitit WARNING - Caught signal SIGUSR2\n"
              "slurmstepd-vm: error: StepId=5.0 exceeded memory limit (332189696 > 321912832), being killed\n"
              "srun: error: vm: task 0: Killed\n")
# XLA's BFC allocator logs this when an allocation would not fit and it falls back; it is not a failure.
XLA_WARNING = ("2026-11-30 07:01:02.345678: W external/xla/xla/tsl/framework/bfc_allocator.cc:310] Allocator "
               "(GPU_0_bfc) ran out of memory trying to allocate 2.13GiB with freed_by_count=0. The caller "
               "indicates that this is not a failure, but this may mean that there could be performance gains "
               "if more memory were available.")


def watched(tmp_path: Path, code: str, *, send: int | None = None, pre: str = "", timeout: float = 60) -> dict:
    """Run `code` in a real Python child under exitwatch; optionally send it signal `send` once it
    is up. Returns the evidence the supervisor gathers: the exit record, the stderr tail, and (when
    the child closed its attempt like run.py does) the cell's cause, evidence and traceback tail."""
    rec_path = tmp_path / f"exit_{uuid.uuid4().hex[:6]}.json"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "safedreamer_sweep.sweep.exitwatch", sys.executable, "-c", code]
    if pre:  # e.g. move into a cgroup first: `exec` keeps the pid
        cmd = ["sh", "-c", pre + " exec " + shlex.join(cmd)]
    with open(err_path, "w") as err:
        p = subprocess.Popen(cmd, stderr=err, env={**os.environ, "SDS_EXIT_RECORD": str(rec_path)})
        if send is not None:
            ready = tmp_path / "ready"
            deadline = time.time() + 30
            while not ready.exists() and time.time() < deadline:
                time.sleep(0.05)
            child = int(ready.read_text())
            os.kill(child, send)
        p.wait(timeout=timeout)
    rec = __import__("json").loads(rec_path.read_text())
    stderr = err_path.read_text()
    ev = {"exit_record": rec, "stderr_tail": stderr[-4000:], "pid": rec["pid"]}
    if "Traceback" in stderr and rec["returncode"] == 1:  # what run.py records when the cell raises
        exc = final_exception(stderr)
        ev.update(cell_cause="error", cell_evidence=exc, traceback_tail=stderr[-4000:])
    return ev


READY = "import os, pathlib, time; pathlib.Path({ready!r}).write_text(str(os.getpid()))\n"


def test_xla_out_of_memory_warning_before_a_value_error_is_an_error_not_oom(tmp_path):
    code = (f"import sys; print({XLA_WARNING!r}, file=sys.stderr, flush=True)\n"
            "raise ValueError('policy loss got an array of shape (3,) where (4,) was expected')")
    ev = watched(tmp_path, code)
    assert ev["exit_record"]["returncode"] == 1 and "ran out of memory" in ev["stderr_tail"]
    cause, why = classify_failure(ev)
    assert cause == "error", why
    assert why.startswith("ValueError: policy loss")
    assert RetryPolicy().decide(cause, [{"n": 1, "cause": cause}]).kind == "stop"


def test_memory_error_as_the_final_exception_is_oom(tmp_path):
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))\n"
            "blocks = [bytearray(64 << 20) for _ in range(64)]")
    ev = watched(tmp_path, code)
    assert final_exception(ev["stderr_tail"]).startswith("MemoryError")
    cause, why = classify_failure(ev)
    assert cause == "oom" and "final exception MemoryError" in why, why


def _memory_cgroup(tmp_name: str) -> Path | None:
    for base in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        limit = "memory.limit_in_bytes" if base.name == "memory" else "memory.max"
        d = base / tmp_name
        try:
            d.mkdir()
            (d / limit).write_text(str(96 << 20))
            for swap in ("memory.memsw.limit_in_bytes", "memory.swap.max"):
                if (d / swap).exists():
                    (d / swap).write_text(str(96 << 20) if swap.endswith("bytes") else "0")
            return d
        except OSError:
            if d.exists():
                d.rmdir()
    return None


def test_sigkill_by_the_kernel_oom_killer_is_oom_from_the_cgroup_counter(tmp_path):
    cg = _memory_cgroup(f"sds_test_{uuid.uuid4().hex[:8]}")
    if cg is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroupfs)")
    try:
        code = "x = [b'x' * (16 << 20) for _ in range(64)]"  # 1 GB touched, limit 96 MB
        ev = watched(tmp_path, code, pre=f"echo $$ > {cg}/cgroup.procs &&")
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    rec = ev["exit_record"]
    assert rec["signal"] == 9 and rec["oom_kill_after"] > rec["oom_kill_before"], rec
    cause, why = classify_failure(ev)
    assert cause == "oom" and "oom_kill count rose" in why and "SIGKILL (signal 9)" in why, why


def test_sigkill_from_outside_shows_signal_9_and_is_not_oom(tmp_path):
    ev = watched(tmp_path, READY.format(ready=str(tmp_path / "ready")) + "time.sleep(60)", send=signal.SIGKILL)
    rec = ev["exit_record"]
    assert rec["signal"] == 9 and rec["returncode"] == -9
    cause, why = classify_failure(ev)
    assert cause == "lost" and "killed by SIGKILL (signal 9)" in why and "exit code 0" not in why, why
    assert "oom_kill count unchanged" in why


def test_segfault_is_a_crash_with_the_signal_named_and_retried_once(tmp_path):
    ev = watched(tmp_path, "import ctypes; ctypes.string_at(0)")
    assert ev["exit_record"]["signal_name"] == "SIGSEGV"
    cause, why = classify_failure(ev)
    assert cause == "crash" and "SIGSEGV (signal 11)" in why, why
    p = RetryPolicy(max_attempts=5)
    assert p.decide("crash", [{"n": 1, "cause": "crash"}]).kind == "retry"
    second = p.decide("crash", [{"n": 1, "cause": "crash"}, {"n": 2, "cause": "crash"}])
    assert second.kind == "stop" and "fatal signal" in second.reason


def test_abort_is_a_crash_too(tmp_path):
    ev = watched(tmp_path, "import os; os.abort()")
    cause, why = classify_failure(ev)
    assert cause == "crash" and "SIGABRT (signal 6)" in why, why


def test_ctrl_c_is_cancelled_not_retried_and_says_who(tmp_path):
    ev = watched(tmp_path, READY.format(ready=str(tmp_path / "ready")) + "time.sleep(60)", send=signal.SIGINT)
    assert ev["exit_record"]["signal"] == signal.SIGINT  # Python re-raises an unhandled SIGINT on exit
    cause, why = classify_failure(ev)
    assert cause == "cancelled" and "SIGINT (signal 2)" in why and "user " in why, why
    assert RetryPolicy().decide(cause, [{"n": 1, "cause": cause}]).kind == "stop"
    # the same when the cell caught it and recorded its interrupted attempt (run.py)
    cause, why = classify_failure({"pid": 7, "cell_cause": "interrupted", "cell_evidence": "KeyboardInterrupt / SIGINT",
                                   "cancelled_by": "user alice (Ctrl-C on the launcher, pid 99)"})
    assert cause == "cancelled" and "alice" in why


def test_recorded_next_to_submitit_logs_for_a_local_job(tmp_path):
    env = {**os.environ, "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_GLOBALID": "0"}
    env.pop("SDS_EXIT_RECORD", None)
    subprocess.run([sys.executable, "-m", "safedreamer_sweep.sweep.exitwatch", sys.executable, "-c",
                    "import sys; sys.exit(3)", str(tmp_path)], env=env, check=False)
    assert read_exit_record(tmp_path, "4242") == {**read_exit_record(tmp_path, "4242"), "returncode": 3, "signal": None}


# ----------------------------------------------------------------------------- evidence seen on Slurm


def test_a_job_step_killed_by_a_fatal_signal_is_a_crash_not_a_cancel():
    # sacct's record of a packed cell's step whose task died of SIGSEGV (seen on Slurm 22.05.8)
    cause, ev = classify_failure({"slurm_state": "CANCELLED", "exit_code": "0:11", "node": "n1"})
    assert cause == "crash" and "SIGSEGV" in ev
    # a person's scancel of a step or job names them, whatever the signal
    assert classify_failure({"slurm_state": "CANCELLED by 0", "exit_code": "0:15", "node": "n1"})[0] == "cancelled"


def test_slurm_memory_kill_is_oom_with_the_kill_line():
    cause, ev = classify_failure({"slurm_state": "FAILED", "exit_code": "9:0", "node": "vm", "stderr_tail": OOM_STDERR})
    assert cause == "oom"
    assert "exceeded memory limit (332189696 > 321912832)" in ev and "on vm" in ev
    # the same words printed by the application are not the scheduler's kill
    assert classify_failure({"slurm_state": "FAILED", "exit_code": "1:0", "cell_cause": "error",
                             "cell_evidence": "ValueError: bad shape",
                             "stderr_tail": "my_app: exceeded memory limit? no, just logging\n"})[0] == "error"


def test_slurm_out_of_memory_state_and_the_rss_guard():
    assert classify_failure({"slurm_state": "OUT_OF_MEMORY"})[0] == "oom"
    cause, ev = classify_failure({"pid": 5, "oom_evidence": "exceeded memory limit: pid 5 RSS 0.31 GB > "
                                  "hydra.launcher.mem_gb=0.15 GB (local limit, enforced by the supervisor)"})
    assert cause == "oom" and "mem_gb=0.15" in ev


def test_cuda_busy_in_the_traceback_is_a_node_fault_not_an_error():
    cause, ev = classify_failure({"slurm_state": "FAILED", "exit_code": "1:0", "node": "gpu7", "cell_cause": "error",
                                  "cell_evidence": "RuntimeError: CUDA error: busy (injected)"})
    assert cause == "node_fault" and "gpu7" in ev
    assert classify_failure({"slurm_state": "NODE_FAIL"})[0] == "node_fault"


def test_timeout_and_preemption():
    assert classify_failure({"slurm_state": "TIMEOUT"})[0] == "timeout"
    assert classify_failure({"cell_cause": "timeout", "cell_evidence": "requeue signal after 30s"})[0] == "timeout"
    assert classify_failure({"slurm_state": "PREEMPTED"})[0] == "preempted"


def test_stalled_names_the_step_and_the_age():
    cause, ev = classify_failure({"stalled": True, "progress_age_s": 42.0, "stall_after": 10.0, "env_step": 1536,
                                  "alive_what": "pid 77"})
    assert cause == "stalled" and "1536" in ev and "42s" in ev and "pid 77" in ev


def test_nan_is_named_and_an_exception_mentioning_memory_in_prose_is_an_error():
    assert classify_failure({"cell_cause": "error", "cell_evidence": "FloatingPointError: NaN in policy loss"}
                            )[1].startswith("non-finite")
    assert classify_failure({"cell_cause": "error", "cell_evidence": "ValueError: memory_size must be > 0"})[0] == "error"
    # MuJoCo under a lowered RLIMIT_AS raises this: the allocator failed, as the final exception
    assert classify_failure({"cell_cause": "error",
                             "cell_evidence": "ValueError: Error: engine error: Could not allocate memory"})[0] == "oom"


def test_retry_policy_per_cause():
    p = RetryPolicy(max_attempts=3)
    one = [{"n": 1, "outcome": "failed", "cause": "oom"}]
    a = p.decide("oom", one, mem_gb=0.3)
    assert a.kind == "retry" and a.mem_gb == 0.45
    a = p.decide("node_fault", one, node="vm", exclude=["bad1"])
    assert a.kind == "retry" and a.exclude == ["bad1", "vm"]
    assert p.decide("error", one).kind == "stop"
    assert RetryPolicy(retry_errors=True).decide("error", one).kind == "retry"
    three = [{"n": i, "outcome": "failed", "cause": "lost"} for i in range(1, 4)]
    assert p.decide("lost", three).kind == "stop"
    pre = [{"n": i, "outcome": "interrupted", "cause": "preempted"} for i in range(1, 6)]
    assert p.counted_attempts(pre) == 0 and p.decide("preempted", pre).kind == "retry"


def _sbatch(tmp_path: Path, script: str, *args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/%j.out", f"--error={tmp_path}/%j.err",
                          *args, "--wrap", script], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def _sacct_final(job: str, timeout: float = 90) -> tuple[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "State,ExitCode"],
                             check=False, capture_output=True, text=True).stdout.strip()
        if out and out.split("|")[0].split()[0] not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            state, code = out.splitlines()[0].split("|")
            return state, code
        time.sleep(1)
    raise AssertionError(f"job {job} did not end in {timeout}s")


@pytest.mark.slurm
def test_scancel_is_cancelled_by_the_user_who_ran_it(tmp_path):
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm (bash scripts/start-slurm.sh)")
    job = _sbatch(tmp_path, "sleep 120", "--mem=100M")
    deadline = time.time() + 60
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], check=False, capture_output=True, text=True).stdout.strip() != "RUNNING":
        assert time.time() < deadline, "job never started"
        time.sleep(0.5)
    subprocess.run(["scancel", job], check=True)
    state, code = _sacct_final(job)
    assert state.startswith("CANCELLED by")
    cause, why = classify_failure({"slurm_state": state, "exit_code": code, "node": "vm"})
    import pwd

    assert cause == "cancelled" and f"user {pwd.getpwuid(os.getuid()).pw_name}" in why, why


@pytest.mark.slurm
def test_slurm_memory_kill_of_a_real_job_is_oom(tmp_path):
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm (bash scripts/start-slurm.sh)")
    code = "import time; x = [b'x' * (16 << 20) for _ in range(40)]; time.sleep(60)"
    job = _sbatch(tmp_path, f"srun {sys.executable} -c \"{code}\"", "--mem=150M")
    state, exit_code = _sacct_final(job, timeout=120)
    stderr = (tmp_path / f"{job}.err").read_text()
    cause, why = classify_failure({"slurm_state": state, "exit_code": exit_code, "node": "vm", "stderr_tail": stderr})
    assert cause == "oom", (state, exit_code, stderr, why)
    print({"slurm_oom": why})
