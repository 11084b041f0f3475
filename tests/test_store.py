"""The store's crash-safety promises: atomic replacement under kill -9 and failed renames,
checkpoints that round-trip and fall back past a truncated newest file, curves without gaps."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from safedreamer_sweep.core import files
from safedreamer_sweep.core.files import StoreError, atomic_write_bytes, atomic_write_json
from safedreamer_sweep.core.run_dir import RunDir

# A writer that replaces one file forever with self-verifying 2 MB payloads (digest + body).
WRITER = """
import hashlib, os, sys
from safedreamer_sweep.core.files import atomic_write_bytes
path, i = sys.argv[1], 0
while True:
    body = (b"%09d" % i) * (2_000_000 // 9)
    atomic_write_bytes(path, hashlib.sha256(body).digest() + body)
    i += 1
"""


def _valid(blob: bytes) -> bool:
    return len(blob) > 32 and hashlib.sha256(blob[32:]).digest() == blob[:32]


def test_atomic_write_survives_kill_9_at_random_instants(tmp_path):
    target = tmp_path / "doc.bin"
    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=Path(__file__).parent.parent)
        try:
            deadline = time.time() + 60
            while not target.exists() and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 0.3)))  # somewhere inside a write, a fsync or a rename
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert _valid(target.read_bytes()), "a kill -9 left a half-written file behind"


def test_failed_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"phase": "running", "n": 1})

    def crash(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"phase": "done", "n": 2})
    assert json.loads(target.read_text()) == {"phase": "running", "n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_write_midway_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "blob"
    atomic_write_bytes(target, b"old")

    def crash(fd):
        raise OSError("disk gone during fsync")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"


def _payload(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"env_step": step, "params": {"w": rng.normal(size=(60, 64)).astype(np.float32)},
            "rng": {"numpy": np.random.default_rng(step).bit_generator.state}, "lagrange": {"multiplier": 0.5}}


def test_checkpoint_round_trip(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.save_checkpoint(2048, _payload(2048))
    step, loaded = rd.latest_checkpoint()
    assert step == 2048
    np.testing.assert_array_equal(loaded["params"]["w"], _payload(2048)["params"]["w"])
    assert loaded["rng"] == _payload(2048)["rng"] and loaded["lagrange"] == {"multiplier": 0.5}


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    rd = RunDir(tmp_path / "run")
    for step in (1024, 2048, 3072):
        rd.save_checkpoint(step, _payload(step), keep=3)
    newest = rd.checkpoints()[-1][1]
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated (e.g. copied by a tool that died)
    messages: list[str] = []
    step, loaded = rd.latest_checkpoint(log=messages.append)
    assert step == 2048 and loaded["env_step"] == 2048
    assert "ckpt_000000003072.pkl" in messages[0] and "resuming from step 2048 instead" in messages[0]
    with pytest.raises(StoreError, match="truncated or corrupt"):
        RunDir.read_checkpoint(newest)


def test_no_readable_checkpoint_means_start_from_scratch(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.save_checkpoint(1024, _payload(1024))
    path = rd.checkpoints()[0][1]
    path.write_bytes(b"\0" * 10)
    assert rd.latest_checkpoint() is None


def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    rd = RunDir(tmp_path / "run")
    for step in range(1, 6):
        rd.save_checkpoint(step * 1000, {"s": step}, keep=2)
    assert [s for s, _ in rd.checkpoints()] == [4000, 5000]


def test_truncate_curves_after_a_resume_point_and_torn_lines(tmp_path):
    rd = RunDir(tmp_path / "run")
    for step in (1024, 2048, 3072):
        rd.append_metrics({"env_step": step, "x": step})
    with open(rd.metrics_path, "a") as f:
        f.write('{"env_step": 4096, "x"')  # killed mid-append
    assert [r["env_step"] for r in rd.read_metrics()] == [1024, 2048, 3072]
    rd.truncate_curves_after(2048)
    rd.append_metrics({"env_step": 3072, "x": 0})
    assert [r["env_step"] for r in rd.read_metrics()] == [1024, 2048, 3072]
