"""Local execution slots: which GPUs this box may use, and which slot (and GPU) each running cell holds."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any


def visible_gpus(configured: int | list | None = None) -> list[str]:
    """GPU ids this box may use: config `gpus` (a count or a list), else CUDA_VISIBLE_DEVICES,
    else `nvidia-smi -L`, else none (CPU only)."""
    if configured is not None:
        if isinstance(configured, int):
            return [str(i) for i in range(configured)]
        return [str(g) for g in configured]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=20).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


@dataclass
class SlotPool:
    """Local execution slots: `max_parallel` cells at once, and with GPUs, `runs_per_gpu` cells per
    GPU (slots = GPUs x runs_per_gpu, each slot pinned to one GPU)."""

    max_parallel: int
    gpus: list[str] = field(default_factory=list)
    runs_per_gpu: int = 1
    busy: dict[int, str] = field(default_factory=dict)  # slot index -> cell key

    @property
    def capacity(self) -> int:
        if self.gpus:
            return min(self.max_parallel, len(self.gpus) * self.runs_per_gpu)
        return self.max_parallel

    def acquire(self, key: str) -> int | None:
        """A free slot for `key`, spreading cells over GPUs first (slot i -> GPU i mod n)."""
        for i in range(self.capacity):
            if i not in self.busy:
                self.busy[i] = key
                return i
        return None

    def release(self, slot: int) -> None:
        self.busy.pop(slot, None)

    def gpu_of(self, slot: int) -> str | None:
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def env(self, slot: int, extra: dict[str, Any] | None = None) -> dict[str, str]:
        """The environment of the cell in `slot`: its own CUDA_VISIBLE_DEVICES and a JAX memory
        fraction of 1/runs_per_gpu (no preallocation, so co-located runs can share the GPU), plus
        the per-job variables from config (e.g. MUJOCO_GL=egl)."""
        out = {str(k): str(v) for k, v in (extra or {}).items()}
        gpu = self.gpu_of(slot)
        if gpu is not None:
            out["CUDA_VISIBLE_DEVICES"] = gpu
            out["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{1.0 / max(1, self.runs_per_gpu):.3f}"
            out["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        return out

