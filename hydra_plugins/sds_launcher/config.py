"""Launcher settings (plain data, registered in Hydra's ConfigStore). Set them as
`hydra.launcher.<key>=...` on the command line or in conf/sweep.yaml."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SdsBaseConf:
    # print the plan and submit nothing
    dry_run: bool = False
    # false: submit, record the jobs in the store's sweep manifest, return (reattach: `watch STORE`)
    wait: bool = True
    # foreground progress while supervising: rich (a live view in a terminal; plain lines when stdout
    # is not a terminal), plain (a line when counts change, at most every 5 s), none
    progress: str = "rich"
    # seconds between polls of scheduler state and heartbeats
    poll_s: float = 5.0
    # a live cell whose env_step did not move for this many seconds is stalled (killed, resumed)
    stall_after: float = 600.0
    # attempts per cell (preemptions do not count); an exception is not retried unless retry_errors
    max_attempts: int = 3
    retry_errors: bool = False
    # memory factor applied after an out-of-memory kill
    mem_factor: float = 1.5
    # environment variables for every cell, e.g. {MUJOCO_GL: egl}
    env: dict[str, str] = field(default_factory=dict)
    # job time limit (minutes); a timeout requeues the cell and it resumes from its checkpoint
    timeout_min: int = 60 * 24
    cpus_per_task: int | None = None
    # memory per cell in GB (Slurm --mem; locally the supervisor kills a cell whose process tree holds
    # more, polling like Slurm's OverMemoryKill); retried x mem_factor after an OOM kill
    mem_gb: float | None = None
    # seconds before the time limit when Slurm sends the requeue signal (USR2 locally, USR1 on Slurm)
    signal_delay_s: int = 90
    # submitit's own files (pickles, scheduler logs); default <store.root>/launcher/submitit
    submitit_folder: str | None = None
    name: str = "sds"
    # plan by composing once per set of non-seed overrides and substituting the seed (checked to be
    # exact); false composes every job through Hydra at plan time
    plan_fast: bool = True
    # seconds a claim lives without renewal (renewed every poll and every heartbeat); another host
    # takes a cell over only after this long with no renewal and no live scheduler job. null: 60
    lease_s: float | None = None
    # the store of an app without its own `store.root` (any Hydra app); default $SDS_STORE, else
    # ./sds_store (relative paths: against the directory the sweep is launched from)
    store_root: str | None = None


@dataclass
class SdsLocalConf(SdsBaseConf):
    _target_: str = "hydra_plugins.sds_launcher.launcher.SdsLocalLauncher"
    # cells at once (default: the number of CPU cores)
    max_parallel: int | None = None
    # GPUs to use: a count or a list of ids (default: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`)
    gpus: Any | None = None
    # cells sharing one GPU (each gets XLA_PYTHON_CLIENT_MEM_FRACTION=1/runs_per_gpu)
    runs_per_gpu: int = 1


@dataclass
class SdsSlurmConf(SdsBaseConf):
    _target_: str = "hydra_plugins.sds_launcher.launcher.SdsSlurmLauncher"
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None
    # nodes never to use (comma-separated); node faults add to it for later submissions
    exclude: str | None = None
    gres: str | None = None
    gpus_per_node: int | None = None
    # cells of one job array running at once (QOS limits)
    array_parallelism: int = 256
    # shell lines run in the sbatch script before the cell (module load ..., conda activate ...)
    setup: list[str] = field(default_factory=list)
    # any other sbatch option, e.g. {mail-type: END}
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    # timeouts requeued per job before it counts as a failed attempt
    max_num_timeout: int = 3
    # submit each cell to each of these partitions; the copies that do not start first are cancelled
    race_partitions: list[str] = field(default_factory=list)


cs = ConfigStore.instance()
cs.store(group="hydra/launcher", name="sds_local", node=SdsLocalConf, provider="sds_launcher")
cs.store(group="hydra/launcher", name="sds_slurm", node=SdsSlurmConf, provider="sds_launcher")
