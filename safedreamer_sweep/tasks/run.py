"""The task of one cell: train (resuming from the newest checkpoint), evaluate ID and OOD, and
record every step of it in the cell's run directory. Writes nowhere else.

Each attempt of the built-in trainer records its `timeline` in state.json (process start, imports,
JAX compiles, env construction, training, evaluation, checkpoints; wall and CPU seconds), the
split bench/sweep_efficiency.py reports."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.core.cell import RUN_DIR_ENV
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.core.run_dir import EVAL_KINDS, RunDir, error_fields, lease_from_env
from safedreamer_sweep.core.store import Store


def cell_run_dir(cfg: DictConfig, spec: RunSpec | None = None) -> tuple[RunSpec, RunDir]:
    """The cell's run directory. Under the sds launchers it is the one the planner claimed
    ($SDS_RUN_DIR): its label carries the keys the sweep varied (an Optuna trial's `agent.lr`),
    which the cell's own config cannot tell."""
    spec = spec or RunSpec.from_cfg(cfg)
    planned = os.environ.get(RUN_DIR_ENV)
    if planned and Path(planned).name == spec.hash:
        return spec, RunDir(Path(planned), lease_from_env(Path(planned)))
    return spec, Store(cfg.store.root).locate(spec.config, spec.seed, spec.hash, spec.run_config)


def run_cell(cfg: DictConfig, spec: RunSpec | None = None) -> dict[str, Any]:
    """Bring one cell to `done`: train what is missing, evaluate what is missing. Idempotent."""
    timeline = _Timeline()
    spec, rd = cell_run_dir(cfg, spec)
    rd.ensure_spec(spec.spec_document())
    if cfg.get("task", {}).get("kind", "builtin") == "external":
        from safedreamer_sweep.tasks.external import (  # any training script as a cell
            evaluate,
            train,
        )
    else:
        platform = cfg.get("trainer", {}).get("platform")
        if platform:
            os.environ.setdefault("JAX_PLATFORMS", str(platform))
        use_store_jax_cache(cfg)
        with timeline.phase("imports"):
            from safedreamer_sweep.trainer.evaluate import evaluate
            from safedreamer_sweep.trainer.ppo_lag import train
        rd = _TimedRunDir(rd.path, rd.generation)  # keeps the lease fence (core/run_dir.py)
        timeline.watch_builtin_trainer()
    # start_step / end_step let the cost split tell resumed work from work redone after a loss.
    # startup_s: the task's start-up allowance, read by the observer from the attempt (sweep/observe.py).
    ckpts = rd.checkpoints()
    startup_s = float(OmegaConf.select(cfg, "task.startup_s", default=None) or 0.0)
    attempt = rd.begin_attempt(start_step=ckpts[-1][0] if ckpts else 0, **({"startup_s": startup_s} if startup_s else {}))
    try:
        _inject_fault(attempt)
        if not rd.trained:
            with timeline.phase("train"):
                final_step = train(cfg, rd)
            rd.update_state(lambda s: s.update(trained=True, trained_steps=int(final_step)))
        for kind in EVAL_KINDS:
            if rd.read_eval(kind) is None:
                rd.set_phase(f"eval-{kind}")
                with timeline.phase(f"eval_{kind}"):
                    result = evaluate(cfg, rd, kind)
                rd.write_eval(kind, result)
    except (KeyboardInterrupt, SystemExit) as e:
        # The launcher's requeue handler (cell_task.CellTask.checkpoint) says why it stops the cell.
        cause = os.environ.get("SDS_INTERRUPT_CAUSE", "interrupted")
        evidence = os.environ.get("SDS_INTERRUPT_EVIDENCE", f"{type(e).__name__} / SIGINT")
        rd.end_attempt("interrupted", cause=cause, evidence=evidence, end_step=_env_step(rd))
        rd.set_phase("interrupted")
        raise
    except BaseException as e:
        rd.end_attempt("failed", **error_fields(e), end_step=_env_step(rd), timeline=timeline.document())
        rd.set_phase("failed")
        raise
    rd.end_attempt("done", end_step=_env_step(rd), timeline=timeline.document())
    rd.set_phase("done")
    return cell_result(spec, rd)


# ----------------------------------------------------------------------------- the cell's timeline

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_JAX = {"compile_s": 0.0, "compiles": 0, "cache_hits": 0, "cache_misses": 0}
_JAX_WATCHED = False


def _watch_jax() -> None:
    """Sum JAX's own compile-time events (tracing, lowering, XLA compile or cache load) in _JAX."""
    global _JAX_WATCHED
    if _JAX_WATCHED:
        return
    import jax.monitoring

    def on_duration(event: str, duration_secs: float, **_: str | int) -> None:
        if event in _COMPILE_EVENTS:
            _JAX["compile_s"] += duration_secs
            _JAX["compiles"] += event == _COMPILE_EVENTS[-1]

    def on_event(event: str, **_: str | int) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            _JAX["cache_hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            _JAX["cache_misses"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _JAX_WATCHED = True


_CHECKPOINT = {"s": 0.0, "cpu_s": 0.0, "n": 0}
_SLOW = {"s": 0.0}  # test hook (SDS_INJECT_FAULT=slow=S): seconds slept after each checkpoint write


@dataclass(frozen=True)
class _TimedRunDir(RunDir):
    """The cell's RunDir, with the wall and CPU seconds of its checkpoint writes counted."""

    def save_checkpoint(self, env_step: int, payload: Any, keep: int = 3) -> Path:
        w, c = time.perf_counter(), time.process_time()
        try:
            return super().save_checkpoint(env_step, payload, keep)
        finally:
            _CHECKPOINT["s"] += time.perf_counter() - w
            _CHECKPOINT["cpu_s"] += time.process_time() - c
            _CHECKPOINT["n"] += 1
            if _SLOW["s"]:
                time.sleep(_SLOW["s"])  # after the timed write: a paced cell, not a slow store


class _Timeline:
    """Where one attempt's wall and CPU time went, as counters read at phase boundaries: the
    process start (creation to run_cell), imports, the training call split into JAX compiles, env
    construction, periodic evaluation, checkpoint writes and the rest (training proper), and the
    final evaluation. Counters, not a profiler: nothing is slower for being measured."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"process_created": _process_created(), "task_entered": time.time(),
                                    "process_start_cpu_s": time.process_time()}
        self._builtin = False

    def watch_builtin_trainer(self) -> None:
        _watch_jax()
        self._builtin = True

    def _counters(self) -> dict[str, float]:
        out = {"wall": time.perf_counter(), "cpu": time.process_time(), **{f"ck_{k}": v for k, v in _CHECKPOINT.items()},
               **{f"jax_{k}": float(v) for k, v in _JAX.items()}}
        if self._builtin:
            from safedreamer_sweep.trainer.envs import CLOCK

            out.update({f"env_{k}": float(v) for k, v in CLOCK.snapshot().items() if v is not None})
        return out

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def add(self, name: str, before: dict[str, float], after: dict[str, float]) -> None:
        d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        acc = self.doc.setdefault(name, {})
        for key, value in (("wall_s", d["wall"]), ("cpu_s", d["cpu"]), ("compile_s", d["jax_compile_s"]),
                           ("compiles", d["jax_compiles"]), ("cache_hits", d["jax_cache_hits"]),
                           ("cache_misses", d["jax_cache_misses"]), ("checkpoint_s", d["ck_s"]),
                           ("checkpoint_cpu_s", d["ck_cpu_s"]), ("checkpoints", d["ck_n"]),
                           ("env_construct_s", d.get("env_construct_s", 0.0)),
                           ("env_construct_cpu_s", d.get("env_construct_cpu_s", 0.0)),
                           ("eval_env_steps", d.get("env_single_steps", 0.0)),
                           ("eval_env_s", d.get("env_single_s", 0.0)),
                           ("eval_env_cpu_s", d.get("env_single_cpu_s", 0.0))):
            acc[key] = round(acc.get(key, 0.0) + value, 6)
        acc.setdefault("started", time.time() - d["wall"])
        acc["ended"] = time.time()

    def document(self) -> dict[str, Any]:
        if self._builtin:
            from safedreamer_sweep.trainer.envs import CLOCK

            self.doc["first_env_step"] = CLOCK.first_vector_step_at
        self.doc["process_cpu_s"] = time.process_time()
        return self.doc


class _Phase:
    def __init__(self, timeline: _Timeline, name: str) -> None:
        self.timeline, self.name = timeline, name

    def __enter__(self) -> None:
        self.before = self.timeline._counters()

    def __exit__(self, *exc: object) -> None:
        self.timeline.add(self.name, self.before, self.timeline._counters())


def _process_created() -> float | None:
    """Epoch time this process was created (psutil; None where it cannot tell)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 (a missing figure, never a failed cell)
        return None


def use_store_jax_cache(cfg: DictConfig) -> None:
    """Keep JAX's persistent compilation cache in the store (<store.root>/cache/jax), every program
    included: the cells of a sweep share their compiled programs (same shapes, same key), on this
    host and on every node that mounts the store, and a cell loads them instead of compiling.
    JAX_COMPILATION_CACHE_DIR, when set, wins."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(str(cfg.store.root)).expanduser() / "cache" / "jax"))
    # Small programs too: loading one is faster than compiling it (JAX's default caches only >= 1 s).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:
        # JAX reads these variables when it is imported. A warm worker (sweep/backends/warm_worker.py) imported
        # it before this cell, but never used a backend or compiled: the same settings through its config.
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
        if os.environ.get("JAX_PLATFORMS") and not _jax_backend_started():
            jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


def _jax_backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def _env_step(rd: RunDir) -> int | None:
    progress = rd.read_progress() or {}
    return progress.get("env_step")


def _inject_fault(attempt: int) -> None:
    """Test hook (documented in tests/test_launcher_slurm.py and tests/test_slurm_cluster.py):
    SDS_INJECT_FAULT holds faults separated by spaces, each `KIND[@WHERE][:N[,N...]]`: KIND is
    node_fault (raises "CUDA error: busy", the way a faulty GPU node fails), error (a plain Python
    error), crash (the process dies of SIGSEGV), hang (sleeps without progress), oom (allocates until a
    memory limit kills it) or slow=S (the built-in trainer sleeps S seconds after each checkpoint: a
    cell that trains for a known least time whatever the machine's speed, with progress throughout);
    WHERE a Slurm node name (SLURMD_NODENAME) or
    `slotK` (the cell's place in a packed job, SDS_PACK_SLOT), any when omitted; N the attempts it
    hits, every attempt when omitted. `node_fault:1` = attempt 1 anywhere; `node_fault@n2` = every
    attempt on node n2."""
    here = {os.environ.get("SLURMD_NODENAME"), f"slot{os.environ.get('SDS_PACK_SLOT')}"}
    for fault in os.environ.get("SDS_INJECT_FAULT", "").split():
        what, _, attempts = fault.partition(":")
        kind, _, where = what.partition("@")
        kind, _, arg = kind.partition("=")
        if (where and where not in here) or (attempts and str(attempt) not in attempts.split(",")):
            continue
        if kind == "slow":
            _SLOW["s"] = float(arg)
        if kind == "node_fault":
            raise RuntimeError("CUDA error: busy (injected by SDS_INJECT_FAULT for a test)")
        if kind == "error":
            raise ValueError(f"injected by SDS_INJECT_FAULT={fault} for a test (a bug in the cell, not the node)")
        if kind == "crash":
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        if kind == "hang":  # alive, never moving: the supervisor's stall detection must kill it
            time.sleep(24 * 3600)
        if kind == "oom":  # grow until the scheduler's (or the local guard's) memory limit kills it
            hog = []
            while True:
                hog.append(bytearray(64 << 20))
                time.sleep(0.05)


def cell_result(spec: RunSpec, rd: RunDir) -> dict[str, Any]:
    """What a finished cell returns to Hydra (and what a skipped cell returns from the store)."""
    out: dict[str, Any] = {"config": spec.config, "seed": spec.seed, "hash": spec.hash, "run_dir": str(rd.path)}
    for kind in EVAL_KINDS:
        ev = rd.read_eval(kind)
        out[kind] = ev.get("summary") if ev else None
    return out
