"""`safedreamer-sweep doctor`: preflight before a sweep, saved into the store as a manifest.

The seeds' operator asked for a GPU precheck before every campaign; a sweep that dies an hour in
because the store's disk is full, `sacct` is not configured or MUJOCO_GL names a backend that does
not exist costs more than this check. Each check is `ok`, `warn` (works, but read this) or `fail`
(the sweep will not work; the check says how to fix it). The manifest goes to
`<store>/manifests/doctor_<timestamp>.json` and `doctor_latest.json`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safedreamer_sweep.core.code_fingerprint import package_versions
from safedreamer_sweep.core.files import atomic_write_json
from safedreamer_sweep.core.run_dir import host
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.core.store_format import check_readable

SCHEMA = "safedreamer-sweep/doctor/1"
LAUNCHERS = ("sds_local", "sds_slurm")
_REQUIRED_PACKAGES = ("jax", "jaxlib", "numpy", "safety-gymnasium", "gymnasium", "mujoco", "hydra-core",
                     "omegaconf", "submitit", "pandas")
# The exact numpy the project pins: Safety-Gymnasium trajectories differ between numpy versions.
_PINNED = {"numpy": "1.26.4"}
_MUJOCO_GL_VALUES = ("egl", "osmesa", "glfw")
# Without a checkpoint to measure: a generous size for the built-in agent (MLPs + Adam + normaliser).
DEFAULT_CKPT_BYTES = 2 * 1024 * 1024
# Per-cell files other than checkpoints (metrics, eval, logs, spec) and the temp file of an atomic write.
PER_CELL_OVERHEAD_BYTES = 2 * 1024 * 1024


@dataclass
class Check:
    """One preflight check: `status` is ok | warn | fail; `fix` says what to do when not ok."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _run(cmd: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess | None:
    """Run a command; None when it is not on PATH."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(list(cmd), 124, e.stdout or "", f"timed out after {timeout:.0f}s")


# ----------------------------------------------------------------------------- checks


def _check_python() -> Check:
    v = platform.python_version()
    ok = sys.version_info[:2] == (3, 10)
    return Check("python", "ok" if ok else "fail", f"Python {v} at {sys.executable}",
                 None if ok else "use Python 3.10 (the project venv: `source scripts/venv.sh`)",
                 {"version": v, "executable": sys.executable})


def _check_packages() -> Check:
    versions = package_versions()
    missing = [p for p in _REQUIRED_PACKAGES if not versions.get(p)]
    off_pin = [f"{p} {versions.get(p)} (pinned {want})" for p, want in _PINNED.items()
               if versions.get(p) and versions.get(p) != want]
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    if missing:
        return Check("packages", "fail", f"missing: {', '.join(missing)}; found {shown}",
                     "install the project into this Python: `pip install -e .[dev]` (scripts/venv.sh does it, "
                     "including safety-gymnasium with --no-deps)", {"versions": versions})
    if off_pin:
        return Check("packages", "warn", f"{'; '.join(off_pin)}; found {shown}",
                     f"pip install {' '.join(f'{p}=={w}' for p, w in _PINNED.items())} (results are not "
                     f"comparable across numpy versions)", {"versions": versions})
    return Check("packages", "ok", shown, data={"versions": versions})


def _check_jax_devices(timeout: float = 180.0) -> Check:
    """What jax.devices() sees, asked in a child process so a hung CUDA init cannot hang doctor."""
    code = "import jax, json; print(json.dumps([[d.platform, str(d)] for d in jax.devices()]))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        return Check("jax_devices", "fail", f"`jax.devices()` did not answer within {timeout:.0f}s",
                     "a GPU driver or CUDA init is hanging: check `nvidia-smi`, or run on CPU with "
                     "JAX_PLATFORMS=cpu")
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
        return Check("jax_devices", "fail", f"`jax.devices()` failed: {tail}",
                     "reinstall jax for this machine (CPU: pip install 'jax[cpu]==0.6.2'; CUDA 12: "
                     "pip install 'jax[cuda12]==0.6.2') or set JAX_PLATFORMS=cpu")
    devices = json.loads(out.stdout.strip().splitlines()[-1])
    platforms = sorted({p for p, _ in devices})
    detail = ", ".join(d for _, d in devices)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd not in (None, "", "-1") and "gpu" not in platforms and "cuda" not in platforms:
        return Check("jax_devices", "warn", f"{detail} although CUDA_VISIBLE_DEVICES={cvd}",
                     "JAX runs on CPU: install the CUDA build (pip install 'jax[cuda12]==0.6.2') if you "
                     "meant to train on those GPUs", {"devices": devices})
    return Check("jax_devices", "ok", detail, data={"devices": devices, "platforms": platforms})


def check_mujoco_gl() -> Check:
    v = os.environ.get("MUJOCO_GL")
    if v is None:
        return Check("mujoco_gl", "ok", "MUJOCO_GL unset (training and evaluation do not render)",
                     data={"MUJOCO_GL": None})
    if v.lower() not in _MUJOCO_GL_VALUES:
        return Check("mujoco_gl", "fail", f"MUJOCO_GL={v!r} is not a MuJoCo rendering backend",
                     f"set MUJOCO_GL to one of {', '.join(_MUJOCO_GL_VALUES)} (egl on a headless GPU box, "
                     f"osmesa on CPU) or unset it", {"MUJOCO_GL": v})
    if v.lower() == "glfw" and not os.environ.get("DISPLAY"):
        return Check("mujoco_gl", "warn", "MUJOCO_GL=glfw but no DISPLAY: rendering would fail",
                     "use MUJOCO_GL=egl (GPU) or osmesa (CPU) on a headless machine", {"MUJOCO_GL": v})
    return Check("mujoco_gl", "ok", f"MUJOCO_GL={v}", data={"MUJOCO_GL": v})


def check_cuda_visible_devices() -> Check:
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    if v is None:
        return Check("cuda_visible_devices", "ok", "CUDA_VISIBLE_DEVICES unset (every GPU is visible)",
                     data={"CUDA_VISIBLE_DEVICES": None})
    ids = [x.strip() for x in v.split(",") if x.strip()]
    if not ids or ids == ["-1"]:
        return Check("cuda_visible_devices", "ok", f"CUDA_VISIBLE_DEVICES={v!r}: GPUs hidden, CPU only",
                     data={"CUDA_VISIBLE_DEVICES": v})
    if len(set(ids)) != len(ids):
        return Check("cuda_visible_devices", "fail", f"CUDA_VISIBLE_DEVICES={v!r} lists a GPU twice",
                     "list each GPU once, e.g. CUDA_VISIBLE_DEVICES=0,1", {"CUDA_VISIBLE_DEVICES": v})
    return Check("cuda_visible_devices", "ok", f"CUDA_VISIBLE_DEVICES={v}", data={"CUDA_VISIBLE_DEVICES": v})


_NVIDIA_QUERY = ("index,name,memory.total,memory.used,utilization.gpu", "csv,noheader,nounits")


def check_gpus() -> Check:
    """The NVIDIA GPUs `nvidia-smi` sees (index, name, memory total/used in MiB, utilisation %), and
    whether CUDA_VISIBLE_DEVICES names only GPUs that exist. No nvidia-smi: a CPU machine (ok)."""
    p = _run(["nvidia-smi", f"--query-gpu={_NVIDIA_QUERY[0]}", f"--format={_NVIDIA_QUERY[1]}"], timeout=30)
    if p is None:
        return Check("gpus", "ok", "no nvidia-smi on PATH: no NVIDIA GPU here, cells run on the CPU", data={"gpus": []})
    if p.returncode != 0:
        return Check("gpus", "fail", f"nvidia-smi exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}",
                     "the driver is not working (a driver/library mismatch needs a reboot or reinstall); "
                     "fix it or run on CPU with CUDA_VISIBLE_DEVICES=-1", {"returncode": p.returncode})
    gpus = []
    for line in p.stdout.splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) != 5 or not f[0].isdigit():
            return Check("gpus", "fail", f"nvidia-smi printed a line this check cannot read: {line!r}",
                         "run `nvidia-smi --query-gpu=index,name,memory.total --format=csv` by hand and "
                         "report the output", {"stdout": p.stdout[-1000:]})

        def num(x: str) -> float | None:
            try:
                return float(x)
            except ValueError:  # "[N/A]" on some boards
                return None

        gpus.append({"index": int(f[0]), "name": f[1], "memory_total_mib": num(f[2]), "memory_used_mib": num(f[3]),
                     "utilization_pct": num(f[4])})
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    asked = [x.strip() for x in (cvd or "").split(",") if x.strip() and x.strip() != "-1"]
    unknown = [x for x in asked if x.isdigit() and int(x) not in {g["index"] for g in gpus}]
    text = "; ".join(f"{g['index']}: {g['name']} {g['memory_used_mib']:.0f}/{g['memory_total_mib']:.0f} MiB, "
                     f"{g['utilization_pct']:.0f}% busy" if None not in (g["memory_total_mib"], g["memory_used_mib"],
                                                                        g["utilization_pct"]) else f"{g['index']}: {g['name']}"
                     for g in gpus)
    if unknown:
        return Check("gpus", "fail", f"CUDA_VISIBLE_DEVICES={cvd} names GPU(s) {', '.join(unknown)}, but nvidia-smi "
                     f"sees {len(gpus)}: {text}", f"use indices among {[g['index'] for g in gpus]}",
                     {"gpus": gpus, "CUDA_VISIBLE_DEVICES": cvd})
    busy = [g for g in gpus if (g["memory_used_mib"] or 0) > 0.5 * (g["memory_total_mib"] or float("inf"))]
    if busy:
        return Check("gpus", "warn", f"{len(gpus)} GPU(s): {text}; GPU(s) {', '.join(str(g['index']) for g in busy)} "
                     f"already have over half their memory in use", "another job shares them: pick free GPUs "
                     "(hydra.launcher.gpus) or lower runs_per_gpu", {"gpus": gpus})
    return Check("gpus", "ok", f"{len(gpus)} GPU(s): {text}", data={"gpus": gpus})


def check_store_writable(root: Path) -> Check:
    """Create the store root if needed and write, fsync and delete a probe file in it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".doctor_probe_{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        return Check("store_writable", "fail", f"{root}: cannot write ({e.strerror or e})",
                     f"make it writable (`chmod u+w {root}`) or choose another store: "
                     f"`--store DIR` here and `store.root=DIR` for the sweep", {"root": str(root)})
    return Check("store_writable", "ok", f"{root} is writable", data={"root": str(root)})


def check_store_format(root: Path) -> Check:
    """The store's format (core/store_format.py): current, older (it migrates at the next sweep, or
    with `safedreamer-sweep migrate`), or newer than this version reads (refused)."""
    from safedreamer_sweep.core.files import StoreError
    from safedreamer_sweep.core.migrations import needs_migration
    from safedreamer_sweep.core.store_format import FORMAT, read_format_doc

    try:
        fmt = check_readable(root)
        pending = (read_format_doc(root) or {}).get("pending", [])
        stale = needs_migration(root)
    except StoreError as e:
        return Check("store_format", "fail", str(e).split(". Nothing")[0], "upgrade safedreamer-sweep before using this store",
                     {"format": None, "reads_up_to": FORMAT})
    data = {"format": fmt, "reads_up_to": FORMAT, "needs_migration": stale, "pending": pending}
    if fmt is None:
        return Check("store_format", "ok", f"new store: it will be written in format {FORMAT}", data=data)
    if not stale:
        return Check("store_format", "ok", f"store format {fmt} (this version's)", data=data)
    what = (f"store format {fmt}, older than this version's {FORMAT}" if fmt < FORMAT
            else f"store format {fmt}, with {len(pending)} app cell(s) waiting for their app's sweep")
    return Check("store_format", "warn", f"{what}: the next sweep migrates it (backups under {root}/migrations/)",
                 f"nothing to do, or now: `safedreamer-sweep migrate {root}`", data)


def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def checkpoint_bytes(store: Store) -> tuple[int, str]:
    """Size of one checkpoint: the largest already in the store, else DEFAULT_CKPT_BYTES."""
    # iter_runs: seeded cells and those of an app without a seed
    sizes = [p.stat().st_size for rd in store.iter_runs() for p in rd.checkpoints_dir.glob("ckpt_*.pkl")]
    if sizes:
        return max(sizes), f"largest of {len(sizes)} checkpoint(s) in the store"
    return DEFAULT_CKPT_BYTES, "no checkpoint in the store yet: assumed"


def check_disk(root: Path, n_cells: int, keep_checkpoints: int, readable: bool = True) -> Check:
    """Free space where the store lives against what the sweep's checkpoints will take (`readable`:
    the store may be read for its checkpoints' size)."""
    ckpt, how = checkpoint_bytes(Store(root)) if readable else (DEFAULT_CKPT_BYTES, "store not readable: assumed")
    # keep + 1: while a new checkpoint is written, the oldest kept one still exists.
    need = n_cells * ((keep_checkpoints + 1) * ckpt + PER_CELL_OVERHEAD_BYTES)
    free = shutil.disk_usage(_existing_ancestor(root)).free
    gib = 1024 ** 3
    detail = (f"{free / gib:.1f} GiB free at {root}; expected {need / gib:.3f} GiB = {n_cells} cells x "
              f"({keep_checkpoints}+1) checkpoints x {ckpt / 1024 ** 2:.2f} MiB ({how}) + logs")
    data = {"free_bytes": free, "expected_bytes": need, "cells": n_cells, "checkpoint_bytes": ckpt,
            "keep_checkpoints": keep_checkpoints}
    if free < need:
        return Check("disk", "fail", detail, "free space on that filesystem, lower trainer.keep_checkpoints, "
                     "or put the store elsewhere (store.root=...)", data)
    if free < 2 * need:
        return Check("disk", "warn", detail, "less than twice the expected volume is free: a retry or a "
                     "second sweep would fill the disk", data)
    return Check("disk", "ok", detail, data=data)


def check_slurm() -> list[Check]:
    """sinfo answers (controller reachable), sbatch exists (submitit submits with it), sacct works
    (the supervisor reads OUT_OF_MEMORY / TIMEOUT / NODE_FAIL from it)."""
    out = []
    r = _run(["sinfo", "-h", "-o", "%P|%a|%D|%t|%G"])
    if r is None:
        out.append(Check("slurm_sinfo", "fail", "`sinfo` is not on PATH",
                         "install the Slurm client tools or load them (`module load slurm`), or use "
                         "hydra/launcher=sds_local"))
    elif r.returncode != 0:
        out.append(Check("slurm_sinfo", "fail", f"`sinfo` failed: {(r.stderr or r.stdout).strip()[:300]}",
                         "the Slurm controller is unreachable: check slurmctld (here: scripts/start-slurm.sh) "
                         "and SLURM_CONF"))
    else:
        rows = [ln.split("|") for ln in r.stdout.strip().splitlines() if ln.strip()]
        parts = [{"partition": x[0], "avail": x[1], "nodes": x[2], "state": x[3], "gres": x[4]}
                 for x in rows if len(x) >= 5]
        bad = [p for p in parts if p["avail"] != "up" or p["state"].rstrip("*") in ("down", "drain", "drained")]
        text = "; ".join(f"{p['partition']} {p['avail']} {p['nodes']} node(s) {p['state']} gres={p['gres']}"
                         for p in parts)
        out.append(Check("slurm_sinfo", "warn" if bad or not parts else "ok", text or "no partitions",
                         ("some partitions/nodes are down or drained: `scontrol update nodename=... state=resume` "
                          "or pick another partition") if bad or not parts else None, {"partitions": parts}))
    sb = shutil.which("sbatch")
    out.append(Check("slurm_sbatch", "ok" if sb else "fail", f"sbatch at {sb}" if sb else "`sbatch` is not on PATH",
                     None if sb else "install/load the Slurm client tools: submitit submits with sbatch"))
    r = _run(["sacct", "-n", "-X", "-P", "-S", "now-1days", "--format=JobID,State"])
    if r is None:
        out.append(Check("slurm_sacct", "fail", "`sacct` is not on PATH",
                         "install/load the Slurm client tools; without sacct the supervisor cannot tell an "
                         "OOM or a TIMEOUT from a crash"))
    elif r.returncode != 0 or "accounting storage is disabled" in (r.stderr + r.stdout).lower():
        out.append(Check("slurm_sacct", "fail", f"`sacct` does not work: {(r.stderr or r.stdout).strip()[:300]}",
                         "enable job accounting in slurm.conf (AccountingStorageType=accounting_storage/slurmdbd "
                         "with slurmdbd running, and JobAcctGatherType) and restart slurmctld"))
    else:
        n = len([ln for ln in r.stdout.splitlines() if ln.strip()])
        out.append(Check("slurm_sacct", "ok", f"sacct answers ({n} job(s) in the last day)", data={"jobs_last_day": n}))
    return out


# ----------------------------------------------------------------------------- the sweep's config


def sweep_settings(overrides: Sequence[str] = (), conf_dir: str | None = None) -> dict[str, Any]:
    """store.root, the launcher choice, keep_checkpoints and the number of cells of the default
    matrix, from the app config composed with `overrides` (no launch). Raises on a broken config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # Sweep overrides (seed=0,1,2) are matrix axes: count them, compose with the rest.
    axes: dict[str, int] = {}
    fixed = []
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        if ov.is_sweep_override():
            axes[ov.get_key_element()] = len(list(ov.sweep_string_iterator()))
        else:
            fixed.append(str(ov.input_line))
    conf_dir = conf_dir or str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=fixed, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    for k, v in params.items():
        axes.setdefault(str(k), len([x for x in str(v).split(",") if x.strip()]))
    n = 1
    for count in axes.values():
        n *= count
    return {"store_root": str(cfg.store.root), "launcher": cfg.hydra.runtime.choices.get("hydra/launcher"),
            "keep_checkpoints": int(cfg.trainer.keep_checkpoints), "matrix_cells": n}


# ----------------------------------------------------------------------------- run + save


def run_doctor(store_root: str | Path | None = None, launcher: str | None = None,
               overrides: Sequence[str] = (), conf_dir: str | None = None) -> dict[str, Any]:
    """Every check, as the manifest document (`ok` is False when any check failed)."""
    checks: list[Check] = []
    settings: dict[str, Any] = {}
    try:
        over = list(overrides) + ([f"hydra/launcher={launcher}"] if launcher else [])
        settings = sweep_settings(over, conf_dir)
        checks.append(Check("config", "ok", f"conf/sweep.yaml composes (launcher {settings['launcher']}, "
                                            f"{settings['matrix_cells']} cells in the default matrix)", data=settings))
    except Exception as e:  # noqa: BLE001  (any composition error: bad override, missing plugin, YAML)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        checks.append(Check("config", "fail", f"the sweep config does not compose: {first}",
                            "install the project (`pip install -e .`, which makes hydra_plugins/sds_launcher "
                            "importable) and check the overrides"))
    launcher = launcher or settings.get("launcher") or "sds_local"
    root = Path(store_root or settings.get("store_root") or os.environ.get("SDS_STORE", "experiments")).expanduser().resolve()
    checks += [_check_python(), _check_packages(), _check_jax_devices(), check_mujoco_gl(), check_cuda_visible_devices(),
               check_gpus()]
    writable = check_store_writable(root)
    checks.append(writable)
    readable = writable.status == "ok"
    if readable:  # a store that cannot be written to is not read for its format either
        fmt = check_store_format(root)
        checks.append(fmt)
        readable = fmt.status != "fail"
    n_cells = max(len(Store(root).expected_cells()) if readable else 0, settings.get("matrix_cells", 1))
    checks.append(check_disk(root, n_cells, settings.get("keep_checkpoints", 3), readable))
    if launcher == "sds_slurm":
        checks += check_slurm()
    return {
        "schema": SCHEMA,
        "created_at": time.time(),
        "host": host(),
        "store": str(root),
        "launcher": launcher,
        "ok": all(c.status != "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
        "env": {k: os.environ.get(k) for k in ("MUJOCO_GL", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS", "SLURM_CONF")},
    }


def save_manifest(doc: dict[str, Any]) -> list[Path]:
    """Write the manifest to <store>/manifests/doctor_<timestamp>.json and doctor_latest.json.
    Raises OSError when the store is not writable (the caller says so; the check already failed)."""
    d = Store(doc["store"]).manifests_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(doc["created_at"]))
    paths = [d / f"doctor_{stamp}.json", d / "doctor_latest.json"]
    for p in paths:
        atomic_write_json(p, doc)
    return paths


def doctor_view(doc: dict[str, Any]):
    """A rich table: one row per check, fixes under failures."""
    from rich.table import Table
    from rich.text import Text

    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    t = Table(title=f"doctor: {'OK' if doc['ok'] else 'FAILED'} ({doc['launcher']}, store {doc['store']})",
              title_justify="left", show_lines=True)
    t.add_column("check", style="bold", no_wrap=True)
    t.add_column("status")
    t.add_column("detail / fix", overflow="fold")
    for c in doc["checks"]:
        body = Text(c["detail"])
        if c.get("fix") and c["status"] != "ok":
            body.append(f"\nfix: {c['fix']}", style=style[c["status"]])
        t.add_row(c["name"], Text(c["status"].upper(), style=style[c["status"]]), body)
    return t
