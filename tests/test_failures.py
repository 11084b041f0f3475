"""classify_failure over the evidence real failures produced (lines copied from this project's
Slurm runs: tests/test_launcher_slurm.py reproduces each), and the retry policy per cause."""

from __future__ import annotations

from safedreamer_sweep.sweep.failures import RetryPolicy, classify_failure

OOM_STDERR = ("submitit WARNING - Caught signal SIGUSR2\n"
              "slurmstepd-vm: error: StepId=5.0 exceeded memory limit (332189696 > 321912832), being killed\n"
              "srun: error: vm: task 0: Killed\n")


def test_slurm_memory_kill_is_oom_with_the_kill_line():
    cause, ev = classify_failure({"slurm_state": "FAILED", "exit_code": "9:0", "node": "vm", "stderr_tail": OOM_STDERR})
    assert cause == "oom"
    assert "exceeded memory limit (332189696 > 321912832)" in ev and "on vm" in ev


def test_slurm_out_of_memory_state_and_kernel_evidence():
    assert classify_failure({"slurm_state": "OUT_OF_MEMORY"})[0] == "oom"
    cause, ev = classify_failure({"signal": 9, "oom_evidence": "Memory cgroup out of memory: Killed process 4242 (python)"})
    assert cause == "oom" and "Killed process 4242" in ev


def test_cuda_busy_in_the_traceback_is_a_node_fault_not_an_error():
    cause, ev = classify_failure({"slurm_state": "FAILED", "exit_code": "1:0", "node": "gpu7", "cell_cause": "error",
                                  "cell_evidence": "RuntimeError: CUDA error: busy",
                                  "traceback_tail": "Traceback ...\nRuntimeError: CUDA error: busy\n"})
    assert cause == "node_fault" and "CUDA error: busy" in ev and "gpu7" in ev
    assert classify_failure({"slurm_state": "NODE_FAIL"})[0] == "node_fault"
    assert classify_failure({"stderr_tail": "NVRM: Xid 48: uncorrectable ECC error"})[0] == "node_fault"


def test_timeout_and_preemption():
    assert classify_failure({"slurm_state": "TIMEOUT"})[0] == "timeout"
    assert classify_failure({"cell_cause": "timeout", "cell_evidence": "requeue signal after 30s"})[0] == "timeout"
    assert classify_failure({"slurm_state": "PREEMPTED"})[0] == "preempted"
    # submitit's requeue budget (max_num_timeout) exhausted: still a timeout, resumable
    assert classify_failure({"cell_cause": "error", "cell_evidence": "UncompletedJobError: Job not requeued because: "
                             "timed-out too many times."})[0] == "timeout"


def test_stalled_names_the_step_and_the_age():
    cause, ev = classify_failure({"stalled": True, "progress_age_s": 42.0, "stall_after": 10.0, "env_step": 1536,
                                  "alive_what": "pid 99"})
    assert cause == "stalled" and "1536" in ev and "42s" in ev and "pid 99" in ev


def test_python_exception_is_error_and_nan_is_named():
    cause, ev = classify_failure({"cell_cause": "error", "cell_evidence": "NameNotFound: Environment NoSuchEnv doesn't exist."})
    assert cause == "error" and "NoSuchEnv" in ev
    assert classify_failure({"cell_cause": "error", "cell_evidence": "FloatingPointError: NaN in policy loss"})[1].startswith("non-finite")


def test_gone_without_end_marker_is_lost():
    cause, ev = classify_failure({"slurm_state": "CANCELLED by 0", "node": "vm"})
    assert cause == "lost" and "cancelled" in ev
    assert classify_failure({"exit_code": -9, "signal": 9})[0] == "lost"


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
    # preemptions never use up an attempt
    pre = [{"n": i, "outcome": "interrupted", "cause": "preempted"} for i in range(1, 6)]
    assert p.counted_attempts(pre) == 0 and p.decide("preempted", pre).kind == "retry"
    assert p.decide("stalled", pre + [{"n": 6, "cause": "stalled"}]).kind == "retry"


def test_an_allocation_failure_raised_inside_the_cell_is_oom_not_error():
    # MuJoCo under a lowered RLIMIT_AS (bench/chaos.py's local memory fault) raises this:
    cause, ev = classify_failure({"pid": 31, "cell_cause": "error",
                                  "cell_evidence": "ValueError: Error: engine error: Could not allocate memory"})
    assert cause == "oom" and "Could not allocate memory" in ev
    assert classify_failure({"cell_cause": "error", "cell_evidence": "MemoryError: "})[0] == "oom"
    assert classify_failure({"cell_cause": "error", "cell_evidence":
                             "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 8.00 GiB"})[0] == "oom"
    # an exception merely mentioning memory in prose stays an error
    assert classify_failure({"cell_cause": "error", "cell_evidence": "ValueError: memory_size must be > 0"})[0] == "error"
