"""The `safedreamer-sweep` console script: exit codes, errors that name the fix, subcommands wired to
the real status, report and supervisor."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safedreamer_sweep.commands.cli import main
from safedreamer_sweep.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("safedreamer-sweep")


def test_console_script_status_and_exit_codes(finished_store, tmp_path):
    assert SCRIPT.exists(), "the console script is installed with `pip install -e .`"
    out = subprocess.run([str(SCRIPT), "status", str(finished_store)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "DONE 1/1"
    missing = subprocess.run([str(SCRIPT), "status", str(tmp_path / "nope")], capture_output=True, text=True,
                             timeout=120, check=False)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope'}: no such store directory") and "Fix:" in missing.stderr


def test_status_exits_1_while_cells_are_missing(store_copy, capsys):
    Store(store_copy).write_sweep_manifest("s1", {"created_at": time.time(), "cells": [
        {"config": "v2_full", "seed": 0, "hash": None, "overrides": []}], "launcher": {}})
    assert main(["status", str(store_copy)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "INCOMPLETE: 1 cell never run: v2_full seed 0"
    assert main(["status", str(store_copy), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["counts"] == {
        "cells": 2, "pending": 1, "running": 0, "stalled": 0, "done": 1, "failed": 0, "lost": 0, "pruned": 0}


def test_status_prices_gpu_hours_only(store_copy, capsys):
    main(["status", str(store_copy), "--json", "--per-gpu-hour", "2.5", "--currency", "RMB"])
    money = json.loads(capsys.readouterr().out)["cost"]["money"]
    assert money["currency"] == "RMB" and money["total"] == 0.0  # the real cell held a CPU, not a GPU


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["statuz", str(tmp_path)])
    assert e.value.code == 2
    assert main(["confounds", "wandb.notes=K=4, H=16 (strong)"]) == 2
    assert "Fix: quote the value" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_report_subcommand_builds_the_report(store_copy, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(store_copy), "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "decision.md").exists()
    page = (out / "report.html").read_text()
    assert "Decision: " in page and 'id="coverage-matrix"' in page and "data:image/png;base64," in page


def test_watch_on_a_finished_store_returns_0(store_copy, capsys):
    """No detached sweep to supervise and nothing running: watch draws the status once and exits."""
    assert main(["watch", str(store_copy), "--poll", "0.2"]) == 0
    assert "DONE 1/1" in capsys.readouterr().out


def test_doctor_rejects_bad_override(capsys):
    assert main(["doctor", "store.root=x (y)"]) == 2
    assert "store.root='x (y)'" in capsys.readouterr().err


@pytest.mark.slow
def test_watch_reattaches_to_a_detached_sweep_and_supervises_it_to_done(tmp_path, capsys):
    store = tmp_path / "store"
    launch = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0",
                             f"store.root={store}", "hydra.launcher.wait=false", "trainer.total_steps=1024",
                             "trainer.num_envs=1", "trainer.rollout_steps=512", "eval.episodes=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert launch.returncode == 0, launch.stderr[-2000:]
    assert "detached" in launch.stdout + launch.stderr
    assert main(["watch", str(store), "--poll", "1"]) == 0
    assert "DONE 1/1" in capsys.readouterr().out
    assert main(["status", str(store)]) == 0
