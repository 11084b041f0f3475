"""Packing on Slurm (`runs_per_gpu=k`): k cells in one allocation that holds one GPU's worth of
resources (the job's gres, k x cpus, k x mem), each cell its own job step.

The job's one submitit task (`PackedCells`, step 0) starts one `srun --overlap` step per cell and
waits for them. A step is Slurm's own unit inside an allocation: each has its own process tree,
memory limit (`--mem` = the cell's mem_gb, enforced per step), sacct record (state, exit code,
MaxRSS; named `sds-slot<i>`) and can be signalled alone (`scancel JOB.STEP`), so one cell's crash or
OOM kill ends its step and nothing else. Each step writes `<folder>/<job>_slot<i>_exit.json` when
it ends (the launcher's per-cell liveness: the job stays RUNNING while a neighbour trains).

Run as `python -m safedreamer_sweep.sweep.backends.slurm_pack CELL.pkl`, a step runs the pickled
CellTask (sweep/cell_task.py) as a normal job's task does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.process import exit_record, write_exit_record
from safedreamer_sweep.sweep.exit_records import read_record

__all__ = ["STEP_NAME", "PackedCells", "main", "read_slot_exit"]

STEP_NAME = "sds-slot{slot}"


def _job_folder(folder: str | os.PathLike, job_id: str) -> Path:
    """submitit's folder of this job (`%j` in the launcher's folder replaced, as submitit does)."""
    from submitit.core.utils import JobPaths

    return JobPaths(Path(folder), job_id=job_id).folder


def _slot_exit_path(folder: str | os.PathLike, job_id: str, slot: int) -> Path:
    """Where the step of `slot` in packed job `job_id` leaves its exit record."""
    return _job_folder(folder, job_id) / f"{job_id}_slot{slot}_exit.json"


def read_slot_exit(folder: str | os.PathLike, job_id: str, slot: int) -> dict | None:
    """How the step of `slot` in packed job `job_id` ended (None while it runs)."""
    return read_record(_slot_exit_path(folder, job_id, slot))


class PackedCells:
    """What a packed job's submitit task runs: one job step per cell, in parallel; returns each
    step's exit code. Never raises for a cell: a cell's failure is its own (its step's record)."""

    def __init__(self, cells: list[Any], *, folder: str, mem: str | None, cpus_per_cell: int) -> None:
        self.cells, self.folder, self.mem, self.cpus_per_cell = cells, folder, mem, cpus_per_cell

    def __call__(self) -> dict[int, int]:
        import submitit
        from submitit.core.utils import cloudpickle_dump

        job_id = str(submitit.JobEnvironment().job_id)
        procs = []
        for slot, cell in enumerate(self.cells):
            pkl = _job_folder(self.folder, job_id) / f"{job_id}_slot{slot}.pkl"
            cloudpickle_dump(cell, pkl)
            cmd = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--cpus-per-task={self.cpus_per_cell}",
                   *([f"--mem={self.mem}"] if self.mem else []), f"--job-name={STEP_NAME.format(slot=slot)}",
                   "--kill-on-bad-exit=0", sys.executable, "-u", "-m", "safedreamer_sweep.sweep.backends.slurm_pack",
                   str(pkl)]
            print(f"[sds] packed job {job_id}: slot {slot} -> {' '.join(cmd)}", flush=True)
            procs.append((slot, time.time(), subprocess.Popen(cmd)))
        codes: dict[int, int] = {}
        while len(codes) < len(procs):  # record each step's end as it happens, in any order
            for slot, started, p in procs:
                if slot in codes or p.poll() is None:
                    continue
                codes[slot] = int(p.returncode)
                write_exit_record(_slot_exit_path(self.folder, job_id, slot),
                                  exit_record(codes[slot], started_at=started, job_id=job_id, slot=slot,
                                              step_name=STEP_NAME.format(slot=slot)))
                print(f"[sds] packed job {job_id}: slot {slot} ended with exit code {codes[slot]}", flush=True)
            time.sleep(0.5)
        return codes


def main(argv: list[str]) -> int:
    from submitit.core.utils import pickle_load

    cell = pickle_load(argv[0])
    cell()  # raises on the cell's failure: the step ends FAILED with the traceback on its stderr
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
