"""Preflight checks on this machine: a healthy run saved as a manifest, and real failures (an
unwritable store, Slurm tools missing from PATH, a bad MUJOCO_GL, a disk too small)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from safedreamer_sweep.commands import doctor
from safedreamer_sweep.commands.cli import main as cli_main


def by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def test_healthy_local_preflight_is_saved_into_the_store(tmp_path, capsys):
    store = tmp_path / "store"
    code = cli_main(["doctor", "--store", str(store), "--launcher", "sds_local", "--json"])
    out = capsys.readouterr().out
    latest = store / "manifests" / "doctor_latest.json"
    stamped = list((store / "manifests").glob("doctor_2*.json"))
    assert latest.exists() and len(stamped) == 1
    doc = json.loads(latest.read_text())
    checks = by_name(doc)
    assert doc["schema"] == doctor.SCHEMA and doc["launcher"] == "sds_local"
    assert {"python", "packages", "jax_devices", "mujoco_gl", "cuda_visible_devices", "gpus", "store_writable",
            "disk", "config"} <= set(checks)
    assert not any(n.startswith("slurm") for n in checks)  # only when the Slurm launcher is selected
    assert checks["jax_devices"]["status"] == "ok" and checks["jax_devices"]["data"]["devices"]
    assert checks["packages"]["data"]["versions"]["jax"] == "0.6.2"
    assert checks["disk"]["data"]["free_bytes"] > checks["disk"]["data"]["expected_bytes"] > 0
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert code == (1 if failed else 0) and doc["ok"] is (not failed)
    assert "doctor:" in out


def test_unwritable_store_fails_with_a_fix_and_writes_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    store = blocker / "store"  # cannot be created, even by root
    code = cli_main(["doctor", "--store", str(store), "--launcher", "sds_local", "--json"])
    out = capsys.readouterr().out
    assert code == 1 and "manifest not saved" in out
    doc = json.loads(out[out.index("\n{") + 1:])  # the manifest is still printed
    c = by_name(doc)["store_writable"]
    assert c["status"] == "fail" and "--store DIR" in c["fix"] and doc["ok"] is False
    assert blocker.read_text() == "not a directory"
    c = doctor.check_store_writable(store)
    assert c.status == "fail" and "cannot write" in c.detail and "store.root=DIR" in c.fix


def test_slurm_tools_missing_from_path(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    checks = {c.name: c for c in doctor.check_slurm()}
    assert {n: c.status for n, c in checks.items()} == {"slurm_sinfo": "fail", "slurm_sbatch": "fail",
                                                          "slurm_sacct": "fail"}
    assert "`sacct` is not on PATH" in checks["slurm_sacct"].detail
    assert "OOM" in checks["slurm_sacct"].fix and "sds_local" in checks["slurm_sinfo"].fix


@pytest.mark.slurm
def test_real_slurm_passes_and_missing_sacct_alone_fails(tmp_path, monkeypatch):
    checks = {c.name: c for c in doctor.check_slurm()}
    assert all(c.status in ("ok", "warn") for c in checks.values()), checks
    assert checks["slurm_sinfo"].data["partitions"]
    # the same cluster with sacct missing from PATH: only that check fails, and says why it matters
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sinfo", "sbatch"):
        (bindir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bindir))
    checks = {c.name: c for c in doctor.check_slurm()}
    assert checks["slurm_sinfo"].status == "ok" and checks["slurm_sbatch"].status == "ok"
    assert checks["slurm_sacct"].status == "fail" and "cannot tell an OOM or a TIMEOUT" in checks["slurm_sacct"].fix


def test_environment_checks(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "vulkan")
    c = doctor.check_mujoco_gl()
    assert c.status == "fail" and "egl, osmesa, glfw" in c.fix
    monkeypatch.setenv("MUJOCO_GL", "egl")
    assert doctor.check_mujoco_gl().status == "ok"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    assert doctor.check_cuda_visible_devices().status == "fail"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CPU only" in doctor.check_cuda_visible_devices().detail


def test_disk_check_against_expected_checkpoint_volume(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    ok = doctor.check_disk(tmp_path, n_cells=2, keep_checkpoints=3)
    assert ok.status == "ok" and ok.data["expected_bytes"] == 2 * (4 * doctor.DEFAULT_CKPT_BYTES
                                                                     + doctor.PER_CELL_OVERHEAD_BYTES)
    cells = free // (4 * doctor.DEFAULT_CKPT_BYTES) + 1  # more checkpoints than the disk holds
    bad = doctor.check_disk(tmp_path, n_cells=int(cells), keep_checkpoints=3)
    assert bad.status == "fail" and "keep_checkpoints" in bad.fix


def test_disk_check_measures_real_checkpoints(tmp_path):
    from safedreamer_sweep.core.store import Store

    rd = Store(tmp_path).run_dir("v2_full", 0, "abcd1234")
    rd.ensure_spec({"config": "v2_full", "seed": 0, "hash": "abcd1234", "run_config": {}})
    rd.save_checkpoint(512, {"w": os.urandom(300_000)})
    size, how = doctor.checkpoint_bytes(Store(tmp_path))
    assert size > 300_000 and "1 checkpoint" in how


def test_disk_check_measures_checkpoints_of_an_app_without_a_seed(tmp_path):
    """An app without a seed keeps its cells at runs/<label>/<hash8>/ (no seed_<n> level)."""
    from safedreamer_sweep.core.store import Store

    rd = Store(tmp_path).run_dir("my_app", None, "abcd1234")
    rd.ensure_spec({"config": "my_app", "seed": None, "hash": "abcd1234", "run_config": {}})
    rd.save_checkpoint(512, {"w": os.urandom(300_000)})
    size, how = doctor.checkpoint_bytes(Store(tmp_path))
    assert size > 300_000 and "1 checkpoint" in how


def test_sweep_settings_count_the_matrix_from_sweep_overrides():
    s = doctor.sweep_settings(["config=v2_baseline,v2_full", "seed=0,1,2", "hydra/launcher=basic",
                               "trainer.keep_checkpoints=2"])
    assert s["matrix_cells"] == 6 and s["keep_checkpoints"] == 2
    assert doctor.sweep_settings(["hydra/launcher=basic"])["matrix_cells"] == 8  # the embedded default matrix


FAKE_NVIDIA_SMI = """#!/bin/sh
# a fake nvidia-smi: answers the query doctor makes the way the real one does (csv,noheader,nounits)
case "$*" in
  *--query-gpu=index,name,memory.total,memory.used,utilization.gpu*--format=csv,noheader,nounits*)
    printf '%s\\n' "$FAKE_GPUS" ;;
  *) echo "unexpected arguments: $*" >&2; exit 9 ;;
esac
exit ${FAKE_RC:-0}
"""


def test_gpus_are_read_from_nvidia_smi_and_checked_against_cuda_visible_devices(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPUS", "0, NVIDIA A100-SXM4-40GB, 40960, 1024, 3\n1, NVIDIA A100-SXM4-40GB, 40960, 30000, 97")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    c = doctor.check_gpus()
    assert c.status == "warn" and [g["index"] for g in c.data["gpus"]] == [0, 1], c  # GPU 1 is 73% full
    assert c.data["gpus"][0] == {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_total_mib": 40960.0,
                                 "memory_used_mib": 1024.0, "utilization_pct": 3.0}
    assert "1: NVIDIA A100-SXM4-40GB 30000/40960 MiB, 97% busy" in c.detail
    monkeypatch.setenv("FAKE_GPUS", "0, Tesla T4, 15360, 0, 0")
    assert doctor.check_gpus().status == "ok"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    c = doctor.check_gpus()
    assert c.status == "fail" and "names GPU(s) 3" in c.detail and "[0]" in c.fix
    monkeypatch.setenv("FAKE_RC", "9")
    monkeypatch.setenv("FAKE_GPUS", "Failed to initialize NVML: Driver/library version mismatch")
    c = doctor.check_gpus()
    assert c.status == "fail" and "exited 9" in c.detail and "mismatch" in c.detail


def test_no_nvidia_smi_means_a_cpu_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    c = doctor.check_gpus()
    assert c.status == "ok" and c.data["gpus"] == [] and "CPU" in c.detail
