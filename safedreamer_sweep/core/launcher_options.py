"""Every `hydra.launcher.<key>` option: its type, default, range and meaning, declared once.

These dataclasses are the Hydra structured configs of the two launchers (registered in the
ConfigStore by hydra_plugins/sds_launcher/config.py, which adds `_target_`), and core/schema.py
derives the launcher's pydantic model from them: a key's range sits next to its default, so the
schema cannot drift from what Hydra accepts. `opt(default, ge=.., gt=.., le=.., lt=.., ...)` puts the
range (pydantic `Field` constraints) in the field's metadata; `schema_type` narrows a type that
OmegaConf cannot express (a Literal, a union of int, list and str).
"""

from dataclasses import MISSING, dataclass, field
from typing import Any, Literal


def opt(default: Any = MISSING, *, factory: Any = MISSING, schema_type: Any = None, **bounds: Any) -> Any:
    """A dataclass field with its range (pydantic Field constraints) in the metadata."""
    meta = {"bounds": bounds, "schema_type": schema_type}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BaseOptions:
    # print the plan and submit nothing
    dry_run: bool = False
    # false: submit, record the jobs in the store's sweep manifest, return (reattach: `watch STORE`)
    wait: bool = True
    # foreground progress while supervising: rich (a live view in a terminal; plain lines when stdout
    # is not a terminal), plain (a line when counts change, at most every 5 s), none
    progress: str = opt("rich", schema_type=Literal["rich", "plain", "none"])
    # seconds between polls of scheduler state and heartbeats
    poll_s: float = opt(5.0, gt=0, le=3600)
    # a live cell whose env_step did not move for this many seconds is stalled (killed, resumed)
    stall_after: float = opt(600.0, gt=0)
    # attempts per cell (preemptions do not count); an exception is not retried unless retry_errors
    max_attempts: int = opt(3, ge=1, le=100)
    retry_errors: bool = False
    # memory factor applied after an out-of-memory kill
    mem_factor: float = opt(1.5, ge=1, le=16)
    # environment variables for every cell, e.g. {MUJOCO_GL: egl}
    env: dict[str, str] = opt(factory=dict)  # noqa: RUF009 (opt returns a dataclasses.field)
    # job time limit (minutes); a timeout requeues the cell and it resumes from its checkpoint
    timeout_min: int = opt(60 * 24, ge=1)
    cpus_per_task: int | None = opt(None, ge=1, le=4096)
    # memory per cell in GB (Slurm --mem; locally the supervisor kills a cell whose process tree holds
    # more, polling like Slurm's OverMemoryKill); retried x mem_factor after an OOM kill
    mem_gb: float | None = opt(None, gt=0, le=65536)
    # seconds before the time limit when Slurm sends the requeue signal (USR2 locally, USR1 on Slurm)
    signal_delay_s: int = opt(90, ge=0)
    # submitit's own files (pickles, scheduler logs); default <store.root>/launcher/submitit
    submitit_folder: str | None = None
    name: str = opt("sds", min_length=1)
    # plan by composing once per set of non-seed overrides and substituting the seed (checked to be
    # exact); false composes every job through Hydra at plan time
    plan_fast: bool = True
    # seconds a claim lives without renewal (renewed every poll and every heartbeat); another host
    # takes a cell over only after this long with no renewal and no live scheduler job. null: 60
    lease_s: float | None = opt(None, gt=0)
    # The settings that steer a sweep, for any app (the built-in app also reads them as sweep.<key>;
    # set here, they win; unset: the app's sweep.<key>, else the default). None of them is part of a
    # cell's identity.
    # true: cells that failed with a non-retryable cause (an exception), or used up their attempts, run again
    retry_failed: bool | None = None
    # true: a cell whose resolved config changed in a key nobody swept gets a new run dir (default: refused)
    new_variant: bool | None = None
    # work computed by other code: refuse (default), rerun (old work moved to superseded/), accept
    code_change: str | None = opt(None, schema_type=Literal["refuse", "rerun", "accept"] | None)
    # the built-in app: configs on the `config` axis that differ in non-knob keys stop the launch (default true)
    strict_confounds: bool | None = None
    # a done cell handed back from the store gets a Hydra job directory in hydra.sweep.dir like a job
    # that ran (.hydra/, <task>.log naming the run dir it came from); false: none (no composition)
    cached_job_dirs: bool = True
    # the store of an app without its own `store.root` (any Hydra app); default $SDS_STORE, else
    # ./sds_store (relative paths: against the directory the sweep is launched from)
    store_root: str | None = None


@dataclass
class LocalOptions(BaseOptions):
    # cells at once (default: the number of CPU cores)
    max_parallel: int | None = opt(None, ge=1, le=4096)
    # GPUs to use: a count or a list of ids (default: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`)
    gpus: Any = opt(None, schema_type=int | list[int] | str | None)  # noqa: RUF009 (opt returns a dataclasses.field)
    # cells sharing one GPU (each gets XLA_PYTHON_CLIENT_MEM_FRACTION=1/runs_per_gpu)
    runs_per_gpu: int = opt(1, ge=1, le=64)
    # a warm worker per slot (imports done once) forks a fresh process per cell; false: a new
    # interpreter per cell through submitit's local controller (sweep/backends/warm_pool.py)
    warm_workers: bool = True


@dataclass
class SlurmOptions(BaseOptions):
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None
    # nodes never to use (comma-separated); a node fault adds its node for the rest of the sweep
    # (later submissions, and the sweep's jobs still pending)
    exclude: str | None = None
    # true: also exclude every node that ever ended an attempt in this store with a node fault
    # (status' and the report's "bad node" lines), in every later sweep on it
    exclude_bad_nodes_across_sweeps: bool = False
    gres: str | None = None
    gpus_per_node: int | None = opt(None, ge=0, le=64)
    # cells of one job array running at once (QOS limits)
    array_parallelism: int = opt(256, ge=1)
    # shell lines run in the sbatch script before the cell (module load ..., conda activate ...)
    setup: list[str] = opt(factory=list)  # noqa: RUF009 (opt returns a dataclasses.field)
    # any other sbatch option, e.g. {mail-type: END}
    additional_parameters: dict[str, Any] = opt(factory=dict)  # noqa: RUF009 (opt returns a dataclasses.field)
    # timeouts requeued per job before it counts as a failed attempt
    max_num_timeout: int = opt(3, ge=0, le=100)
    # submit each cell to each of these partitions; the copies that do not start first are cancelled
    race_partitions: list[str] = opt(factory=list)  # noqa: RUF009 (opt returns a dataclasses.field)
    # cells sharing one GPU allocation: each job holds the gres above (one GPU), k x cpus_per_task and
    # k x mem_gb, and runs k cells, each its own job step with mem_gb and
    # XLA_PYTHON_CLIENT_MEM_FRACTION=1/k (a QOS cap of G GPUs then runs G x k cells); not with race_partitions
    runs_per_gpu: int = opt(1, ge=1, le=64)
