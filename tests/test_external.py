"""Any training script as a cell, proven on tests/fake_safedreamer.py (SafeDreamer's on-disk layout:
metrics on a wall-clock timer, replay chunks, one checkpoint.ckpt, timestamped log dirs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.tasks import external
from safedreamer_sweep.tasks.run import cell_run_dir, run_cell

ROOT = Path(__file__).resolve().parent.parent

RUN_ONE_CELL = """
import sys
from omegaconf import OmegaConf
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.tasks.run import run_cell
cfg = OmegaConf.load(sys.argv[1])
run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
"""


def make_cfg(root: Path, total: int = 1200, **vars_):
    """The shipped `task=external` config (it runs the fake script), composed without Hydra."""
    cfg = OmegaConf.create({
        "seed": 0,
        "store": {"root": str(root)},
        "trainer": {"total_steps": total},
        "agent": {"u": {"enabled": False}, "cert": {"enabled": False}},  # the knobs the task maps
        "eval": OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml"),
        "task": OmegaConf.load(ROOT / "conf" / "task" / "external.yaml"),
    })
    cfg.task.cwd = str(ROOT)  # the command names tests/fake_safedreamer.py relative to the repo
    cfg.task.probe_every_s = 0.25
    cfg.task.stop_grace_s = 2.0
    for k, v in vars_.items():
        cfg.task.vars[k] = v
    return cfg


def run_dir(cfg) -> RunDir:
    spec = RunSpec.from_cfg(cfg, config_name="fake")
    rd = cell_run_dir(cfg, spec)[1]
    rd.ensure_spec(spec.spec_document())
    return rd


def spawn_cell(cfg, tmp_path: Path) -> subprocess.Popen:
    """Run one cell in its own process (so it can be SIGKILLed like a lost node)."""
    path = tmp_path / "cell.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    # As a terminal's foreground process: SIGINT at its default even when pytest runs as a
    # background job (which ignores SIGINT, and exec keeps SIG_IGN).
    return subprocess.Popen([sys.executable, "-c", RUN_ONE_CELL, str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 (pytest starts no threads here)


def wait_for(cond, timeout: float = 30.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def progress(rd: RunDir) -> dict:
    try:
        return rd.read_progress() or {}
    except Exception:
        return {}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ----------------------------------------------------------------------------- templates


def test_a_command_template_fills_cell_values_config_keys_and_resume_args(tmp_path):
    cfg = OmegaConf.create({"seed": 3, "agent": {"lr": 0.0003, "name": "my agent"}})
    values = {"seed": 3, "run_dir": "/runs/a b", "checkpoint": "/runs/a b/ck.pt", "resume_flag": ""}
    argv = external.fill_command("python train.py --lr {agent.lr} --name {agent.name} --out {run_dir}/x "
                                   "--seed={seed:02d} {resume_flag} --json '{{\"k\": 1}}'",
                                   values, cfg, "task.command", resume=["--resume", "/runs/a b/ck.pt"])
    # Values with spaces stay one argument; {resume_flag} expands in place; {{ }} are literal braces.
    assert argv == ["python", "train.py", "--lr", "0.0003", "--name", "my agent", "--out", "/runs/a b/x",
                    "--seed=03", "--resume", "/runs/a b/ck.pt", "--json", '{"k": 1}']
    argv = external.fill_command(["train", "--seed", "{seed}"], values, cfg, "c", resume=["--resume"])
    assert argv == ["train", "--seed", "3", "--resume"]  # no {resume_flag}: appended
    assert external.fill_command("train {resume_flag}", values, cfg, "c", resume=None) == ["train"]
    with pytest.raises(external.ExternalTaskError, match="whole argument"):
        external.fill_command("train --x={resume_flag}", values, cfg, "c")
    with pytest.raises(external.ExternalTaskError, match="config group"):
        external.fill_command("train {agent}", values, cfg, "c")


def test_an_unknown_template_key_fails_before_anything_runs(tmp_path):
    cfg = make_cfg(tmp_path / "store")
    cfg.task.command = "{python} tests/fake_safedreamer.py --seed {seed} --lr {agent.lr_typo} --logdir {run_dir}/sd/"
    with pytest.raises(external.ExternalTaskError) as e:
        external.validate_task(cfg)
    msg = str(e.value)
    assert "{agent.lr_typo}" in msg and "task.command" in msg and "seed" in msg  # names it and what exists
    with pytest.raises(external.ExternalTaskError, match=r"agent\.lr_typo"):
        run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
    rd = run_dir(cfg)
    assert not (rd.path / "sd").exists() and not rd.logs_dir.exists()  # the script never started
    state = rd.read_state()
    assert state["phase"] == "failed" and state["attempts"][-1]["cause"] == "error"
    assert "agent.lr_typo" in state["attempts"][-1]["evidence"]

    cfg = make_cfg(tmp_path / "store")
    cfg.task.probes = [{"name": "x", "type": "jsonl", "glob": "{run_dir}/m.jsonl"}]
    with pytest.raises(Exception, match="missing required field 'key'"):
        external.validate_task(cfg)


def test_safedreamers_two_budgets_must_agree_or_the_plan_is_refused(monkeypatch):
    # task.vars.agent_steps (SafeDreamer's --run.steps) x 5 must be task.total_steps (env frames).
    monkeypatch.setenv("SDS_SAFEDREAMER_SRC", "/opt/sd/src")
    monkeypatch.setenv("SDS_SAFEDREAMER_PYTHON", "/opt/sd/venv/bin/python")

    def cfg(**vars_):
        c = OmegaConf.create({"seed": 1, "store": {"root": "/tmp/none"}, "agent": {"u": {"enabled": True}},
                              "task": OmegaConf.load(ROOT / "conf" / "task" / "safedreamer.yaml")})
        for k, v in vars_.items():
            OmegaConf.update(c, k, v)
        return c

    external.validate_task(cfg())  # the shipped defaults agree: 24,000 x 5 = 120,000
    external.validate_task(cfg(**{"task.vars.agent_steps": 300, "task.total_steps": 1500}))
    with pytest.raises(external.ExternalTaskError) as e:
        external.validate_task(cfg(**{"task.vars.agent_steps": 300}))  # total_steps left at 120,000
    msg = str(e.value)
    assert "task.total_steps=120000" in msg and "task.vars.agent_steps=300 x 5 = 1500" in msg
    assert "Fix: task.total_steps=1500, or task.vars.agent_steps=24000" in msg
    # The check is not part of a cell's identity: declaring it does not change existing cells' hashes.
    a, b = cfg(), cfg()
    b.task.total_steps_of = None
    assert RunSpec.from_cfg(a, config_name="x").hash == RunSpec.from_cfg(b, config_name="x").hash


def test_the_safedreamer_task_renders_its_cpu_and_gpu_profiles(monkeypatch):
    monkeypatch.setenv("SDS_SAFEDREAMER_SRC", "/opt/sd/src")
    monkeypatch.setenv("SDS_SAFEDREAMER_PYTHON", "/opt/sd/venv/bin/python")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    cfg = OmegaConf.create({"seed": 1, "store": {"root": "/tmp/none"}, "agent": {"u": {"enabled": True}},
                            "task": OmegaConf.load(ROOT / "conf" / "task" / "safedreamer.yaml")})
    task = external.validate_task(cfg)
    assert cfg.task.cwd == "/opt/sd/src"
    cmd = external.config_axis_commands(cfg)
    argv = cmd["train"]
    assert argv[:3] == ["/opt/sd/venv/bin/python", "<jit_launcher>", "SafeDreamer/train.py"]
    assert argv[argv.index("--configs") + 1: argv.index("--configs") + 3] == ["osrp_vector", "debug"]
    assert argv[argv.index("--jax.platform") + 1] == "cpu" and argv[argv.index("--expl_behavior") + 1] == "None"
    assert "safetygymcoor_SafetyPointGoal1-v0" in argv and argv[argv.index("--logdir") + 1] == "<run_dir>/sd/"
    assert argv[argv.index("--run.steps") + 1] == str(task.total_steps // 5)
    assert argv[argv.index("--pessimistic") + 1] == "True"  # the u knob
    assert "safetygymcoor_SafetyCarGoal1-v0" in cmd["eval_ood"] and "eval_only" in cmd["eval_ood"]
    # eval videos off by default: the last --env.safetygymcoor.render of the eval command (the one that wins)
    def last_render_flag(argv: list[str]) -> str:
        return argv[max(i for i, a in enumerate(argv) if a == "--env.safetygymcoor.render") + 1]

    assert last_render_flag(cmd["eval_id"]) == "False"
    cfg.task.vars.eval_video = True
    assert last_render_flag(external.config_axis_commands(cfg)["eval_id"]) == "True"
    cfg.task.vars.eval_video = False
    cfg.task.vars.profile = "gpu"
    gpu = external.config_axis_commands(cfg)
    assert gpu["train"][gpu["train"].index("--jax.logical_gpus") + 1] == "3"  # the cell's GPU
    assert "safetygym_SafetyPointGoal1-v0" in gpu["train"] and "safetygym_SafetyPointGoal2-v0" in gpu["eval_ood"]
    assert gpu["train"][gpu["train"].index("--configs") + 1] == "bsrp_lag"


# ----------------------------------------------------------------------------- progress truth


def test_progress_comes_from_replay_chunks_while_metrics_file_is_stale(tmp_path):
    """SafeDreamer writes metrics every `log_every` SECONDS: with a long period metrics.jsonl holds
    only its first row for the whole run. progress.json must still move, from the replay chunks."""
    cfg = make_cfg(tmp_path / "store", total=1500, log_every=1000, chunk=16)
    rd = run_dir(cfg)
    seen: list[tuple[int, str, float]] = []
    result: dict = {}

    def cell():
        try:
            result["out"] = run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=cell)
    t.start()
    metrics_rows_during = set()
    while t.is_alive():
        rows = [len(f.read_text().splitlines()) for f in (rd.path / "sd").glob("*/metrics.jsonl")]
        p = progress(rd)  # read after the metrics file: it lags the script by at most a probe period
        if p.get("phase") == "train" and p.get("env_step"):
            seen.append((p["env_step"], p.get("probe"), p["updated_at"]))
            if p["env_step"] <= 1000:  # well before the final row the script writes when it finishes
                metrics_rows_during.update(rows)
        time.sleep(0.1)
    t.join()
    assert "error" not in result, result.get("error")
    steps = sorted({s for s, _, _ in seen if s < 1500})
    assert len(steps) >= 3, f"progress.json should have moved several times during the run, saw {seen}"
    assert all(probe == "replay" for s, probe, _ in seen if 16 < s < 1500)  # past the first chunk
    assert metrics_rows_during == {1}  # metrics.jsonl was stale (one row) the whole time
    metrics = next((rd.path / "sd").glob("*/metrics.jsonl"))
    first = json.loads(metrics.read_text().splitlines()[0])
    assert first["step"] <= 1  # the only row written during the run: "stuck at step 1"
    state = rd.read_state()
    assert state["trained"] is True and state["trained_steps"] == 1500 and state["phase"] == "done"
    # The script's checkpoint is recorded in the store (a pointer), so planning would see it.
    assert rd.checkpoints()[-1][0] == 1500
    assert RunDir.read_checkpoint(rd.checkpoints()[-1][1])["path"].endswith("checkpoint.ckpt")

    # Its evaluations reached the store in the eval schema.
    ev_id, ev_ood = rd.read_eval("id"), rd.read_eval("ood")
    assert ev_id["env_id"] == "SafetyPointGoal1-v0" and ev_ood["env_id"] == "SafetyPointGoal2-v0"
    assert ev_id["checkpoint_step"] == 1500 and ev_ood["ood_proxy"]
    assert ev_id["summary"]["episodes"] == len(ev_id["episodes"]) == 10
    assert set(ev_id["episodes"][0]) == {"return", "cost", "length"}
    assert ev_ood["summary"]["cost_mean"] > ev_id["summary"]["cost_mean"]  # the harder layout costs more
    logs = (rd.logs_dir / "attempt_01.out").read_text()
    assert "Finished at step 1500" in logs and "eval id attempt 1" in logs


def test_sigstop_of_the_script_is_stalled_and_sigcont_runs_again(tmp_path):
    from safedreamer_sweep.sweep.observe import observe_run

    cfg = make_cfg(tmp_path / "store", total=100000, chunk=16, log_every=1000)
    rd = run_dir(cfg)
    cell = spawn_cell(cfg, tmp_path)
    try:
        wait_for(lambda: progress(rd).get("env_step", 0) > 100 and progress(rd).get("child_pid"), 30,
                 "the script to make progress")
        # Running although metrics.jsonl (on a 1000 s wall-clock timer) still holds its first row only.
        assert observe_run(rd, stall_after=2.0).phase == "running"
        assert [len(f.read_text().splitlines()) for f in (rd.path / "sd").glob("*/metrics.jsonl")] == [1]
        child = progress(rd)["child_pid"]
        os.kill(child, signal.SIGSTOP)
        time.sleep(0.5)
        frozen = progress(rd)["env_step"]
        time.sleep(2.5)
        p = progress(rd)
        # The heartbeat is fresh (the cell process is alive) but the probes did not move.
        assert p["env_step"] == frozen and time.time() - p["updated_at"] < 2.0
        view = observe_run(rd, stall_after=2.0)
        assert view.phase == "stalled" and view.progress_age_s > 2.0 and view.pid_alive
        os.kill(child, signal.SIGCONT)
        wait_for(lambda: progress(rd).get("env_step", 0) > frozen, 10, "progress after SIGCONT")
        assert observe_run(rd, stall_after=2.0).phase == "running"
    finally:
        cell.kill()
        cell.wait()


def test_a_script_silent_within_its_startup_allowance_is_running_and_stalled_after_it(tmp_path):
    """task.startup_s: a script that writes nothing while it starts (SafeDreamer's JIT compile) is not
    killed as stalled within the allowance; the same silence after it is a stall."""
    from safedreamer_sweep.sweep.observe import observe_run

    cfg = make_cfg(tmp_path / "store", total=100000, chunk=16, log_every=1000)
    cfg.task.startup_s = 30.0
    rd = run_dir(cfg)
    cell = spawn_cell(cfg, tmp_path)
    try:
        child = wait_for(lambda: progress(rd).get("child_pid"), 30, "the script to start")
        os.kill(child, signal.SIGSTOP)  # silent, as while compiling
        time.sleep(0.5)
        frozen = progress(rd)["env_step"]
        time.sleep(2.0)
        assert progress(rd)["env_step"] == frozen
        view = observe_run(rd, stall_after=1.0)
        assert view.phase == "running" and "startup_s" in (view.detail or ""), view
        started = rd.read_state()["attempts"][-1]["started_at"]
        view = observe_run(rd, stall_after=1.0, now=started + 32.0)
        assert view.phase == "stalled" and view.pid_alive, view
        os.kill(child, signal.SIGCONT)
    finally:
        cell.kill()
        cell.wait()


def test_every_scalar_setting_of_an_external_task_is_checked_by_type_and_range(tmp_path):
    from safedreamer_sweep.core.schema import ExternalSettings, _bad

    schema = ExternalSettings.model_json_schema()
    for key, sch in schema["properties"].items():
        cfg = make_cfg(tmp_path / "store")
        bad = _bad(sch)
        cfg.task[key] = bad
        with pytest.raises(external.ExternalTaskError) as refused:
            external.validate_task(cfg)
        text = str(refused.value)
        assert f"task.{key}={bad!r}" in text and "Fix:" in text, text
    assert not (tmp_path / "store").exists()


def test_a_killed_cell_resumes_from_the_scripts_checkpoint(tmp_path):
    from safedreamer_sweep.sweep.observe import observe_run

    total = 2400
    cfg = make_cfg(tmp_path / "store", total=total, save_every=0.3, chunk=32, log_every=0.2)
    rd = run_dir(cfg)
    cell = spawn_cell(cfg, tmp_path)
    try:
        wait_for(lambda: rd.checkpoints() and rd.checkpoints()[-1][0] >= 300, 30, "a checkpoint past step 300")
        child = progress(rd)["child_pid"]
        cell.send_signal(signal.SIGKILL)  # the cell process dies with no end marker (node lost, OOM kill)
        cell.wait()
    finally:
        if cell.poll() is None:
            cell.kill()
    # The script does not train on alone: it got SIGTERM when its parent died.
    wait_for(lambda: gone(child), 10, f"script pid {child} to exit after its cell was killed")
    assert observe_run(rd, stall_after=60).phase == "lost"
    ckpt_step = rd.checkpoints()[-1][0]
    assert 0 < ckpt_step < total

    run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))  # re-invoke: attempt 2
    log = (rd.logs_dir / "attempt_02.out").read_text()
    cmd_line = next(line for line in log.splitlines() if "train attempt 2" in line)
    assert "--run.from_checkpoint" in cmd_line
    resumed = int(re.search(r"Resumed from checkpoint \S+ at step (\d+)", log).group(1))
    assert resumed >= ckpt_step > 0
    # The second attempt's metrics (in the log dir it printed) continue from the checkpoint, not from 0.
    logdir = Path(re.search(r"^Logdir (.+)$", log, re.MULTILINE).group(1))
    second_rows = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    after = [r["step"] for r in second_rows if r["step"] > resumed - 1]
    assert after and resumed <= after[0] <= resumed + 5 and max(r["step"] for r in second_rows) == total
    state = rd.read_state()
    assert state["trained"] and state["trained_steps"] == total and len(state["attempts"]) == 2
    # The learning curve mirrored into the run dir has no gap and no step twice across the kill:
    # rows attempt 1 logged past its checkpoint were dropped and logged again by attempt 2.
    curve = [r["env_step"] for r in rd.read_metrics()]
    assert curve == sorted(set(curve)) and curve[-1] == total
    assert any(s < resumed for s in curve) and any(s > resumed for s in curve)
    # The resume is recorded in the cell (what it restarted from, the frames trained twice, what the
    # script does not restore) and the report says it.
    resume, = state["resumes"]
    assert (resume["attempt"] == 2 and resume["from_step"] == ckpt_step) or resume["from_step"] >= ckpt_step
    assert resume["reached"] >= resume["from_step"] and resume["lost_frames"] == resume["reached"] - resume["from_step"]
    import pandas as pd

    from safedreamer_sweep.report.caveats import resume_caveats

    text, = resume_caveats(pd.DataFrame([{"config": "fake", "seed": 0, "run_dir": str(rd.path)}]))
    assert text.startswith(f"fake seed 0: attempt 2 resumed from env step {resume['from_step']}")
    assert "the resume did not restore: nothing declared" in text


def test_ctrl_c_of_the_cell_stops_the_scripts_process_group_and_records_interrupted(tmp_path):
    cfg = make_cfg(tmp_path / "store", total=100000, chunk=16)
    rd = run_dir(cfg)
    cell = spawn_cell(cfg, tmp_path)
    try:
        wait_for(lambda: progress(rd).get("env_step", 0) > 50 and progress(rd).get("child_pid"), 30, "progress")
        child = progress(rd)["child_pid"]
        cell.send_signal(signal.SIGINT)  # the script has its own session: only the cell gets Ctrl-C
        cell.wait(timeout=20)
    finally:
        if cell.poll() is None:
            cell.kill()
    assert gone(child)
    last = rd.read_state()["attempts"][-1]
    assert last["outcome"] == "interrupted" and rd.read_state()["phase"] == "interrupted"


def test_a_planted_error_fails_the_cell_with_the_traceback_tail(tmp_path):
    cfg = make_cfg(tmp_path / "store", total=1200, fail_at_step=300)
    with pytest.raises(external.ExternalCommandFailed, match="exited with code 1"):
        run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
    rd = run_dir(cfg)
    state = rd.read_state()
    last = state["attempts"][-1]
    assert state["phase"] == "failed" and not state.get("trained")
    assert last["outcome"] == "failed" and last["cause"] == "error"
    assert "RuntimeError: planted failure at env step 300" in last["traceback_tail"]
    assert "planted failure" in (rd.logs_dir / "attempt_01.err").read_text()


def test_exit_zero_short_of_total_steps_is_not_trained(tmp_path):
    cfg = make_cfg(tmp_path / "store", total=1200)
    cfg.task.command = str(cfg.task.command).replace("--run.steps {total_steps}", "--run.steps 100")
    with pytest.raises(external.ExternalTaskError, match=r"exited 0 but its probes show env step 100 < "):
        run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
    assert not run_dir(cfg).read_state().get("trained")


def test_exit_zero_vouches_when_the_task_says_its_files_lag_at_the_end(tmp_path):
    # SafeDreamer writes nothing at the end: exit 0 of its loop is the evidence (task.exit_0_is_done).
    cfg = make_cfg(tmp_path / "store", total=1200)
    cfg.task.command = str(cfg.task.command).replace("--run.steps {total_steps}", "--run.steps 1000")
    cfg.task.exit_0_is_done = True
    run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
    rd = run_dir(cfg)
    assert rd.read_state()["trained"] and rd.read_state()["trained_steps"] == 1200
    assert rd.read_state()["trained_by"] == "exit 0" and rd.read_state()["probed_step"] == 1000
    ev = rd.read_eval("id")
    assert ev["trained_steps"] == 1200 and ev["checkpoint_behind"] == 1200 - ev["checkpoint_step"] == 200


def test_through_the_launcher_a_finished_run_is_skipped_and_its_results_reach_the_report(tmp_path):
    from conftest import sds

    from safedreamer_sweep.report import build_report

    store = tmp_path / "store"
    args = ["-m", "task=external", "config=v2_baseline", "seed=0,1", "trainer.total_steps=400",
            "task.probe_every_s=0.5", f"store.root={store}"]
    first = sds(*args, check=True, timeout=300)
    assert "2 to submit" in first.stdout + first.stderr
    second = sds(*args, check=True, timeout=300)
    out = second.stdout + second.stderr
    assert "0 to submit" in out and "done 2" in out, out
    runs = sorted(store.glob("runs/v2_baseline/seed_*/*"))
    assert len(runs) == 2
    for rd in map(RunDir, runs):
        assert len(rd.read_state()["attempts"]) == 1  # never run twice
        log = (rd.logs_dir / "attempt_01.out").read_text()
        assert log.count("Finished at step 400") == 1  # the script's output, teed once into the attempt log

    import pandas as pd

    report = build_report(store)
    evals = pd.read_parquet(report / "evals.parquet")
    for rd in map(RunDir, runs):
        seed = rd.read_spec()["seed"]
        for kind in ("id", "ood"):
            mine = rd.read_eval(kind)
            theirs = evals[(evals.seed == seed) & (evals.kind == kind)].sort_values("episode")
            assert list(theirs["return"]) == pytest.approx([e["return"] for e in mine["episodes"]])
            assert list(theirs["cost"]) == pytest.approx([e["cost"] for e in mine["episodes"]])
    cells = pd.read_parquet(report / "cells.parquet")
    assert set(cells.trained_steps) == {400}
    assert "2 of 2" in (report / "decision.md").read_text() or "6 of 6" in (report / "decision.md").read_text()


def test_environment_variables_in_templates(monkeypatch):
    cfg = OmegaConf.create({"seed": 0})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert external.fill_template("--gpu {environ[CUDA_VISIBLE_DEVICES|0]}", {}, cfg, "c") == "--gpu 3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert external.fill_template("--gpu {environ[CUDA_VISIBLE_DEVICES|0]}", {}, cfg, "c") == "--gpu 0"
    with pytest.raises(external.ExternalTaskError, match="CUDA_VISIBLE_DEVICES is not set"):
        external.fill_template("--gpu {environ[CUDA_VISIBLE_DEVICES]}", {}, cfg, "c")


# A different script: prints its step, writes no checkpoint, evaluates into one JSON document.
OTHER_TRAIN = """
import sys, time
total = int(sys.argv[1])
for step in range(0, total + 1, 50):
    print("epoch 0 global_step=%d loss=0.1" % step, flush=True)
    time.sleep(0.05)
"""
OTHER_EVAL = """
import json, sys
hard = sys.argv[2].endswith("2-v0")
eps = [dict(R=10.0 - i - 5 * hard, C=float(i + 30 * hard), L=1000) for i in range(4)]
json.dump(dict(results=dict(episodes=eps)), open(sys.argv[1], "w"))
"""


def test_another_script_with_a_stdout_probe_and_json_results(tmp_path):
    cfg = make_cfg(tmp_path / "store", total=300)
    task = cfg.task
    task.command = ["{python}", "-c", OTHER_TRAIN, "{total_steps}"]
    task.probes = [{"name": "log", "type": "stdout", "pattern": r"global_step=(\d+)"}]
    task.checkpoint = None
    task.resume_args = []
    task.curves = None
    task.eval.command = ["{python}", "-c", OTHER_EVAL, "{eval_dir}/result.json", "{env_id}"]
    task.eval.results = {"glob": "result.json", "format": "json", "records": "results.episodes",
                         "keys": {"return": "R", "cost": "C", "length": "L"}}
    run_cell(cfg, RunSpec.from_cfg(cfg, config_name="other"))
    rd = cell_run_dir(cfg, RunSpec.from_cfg(cfg, config_name="other"))[1]
    assert rd.read_state()["trained_steps"] == 300 and rd.read_progress()["probe"] == "log"
    ev = rd.read_eval("ood")
    assert ev["summary"]["return_mean"] == pytest.approx(3.5) and ev["summary"]["cost_mean"] == pytest.approx(31.5)
    assert ev["summary"]["violation_rate"] == 1.0 and rd.read_eval("id")["summary"]["violation_rate"] == 0.0


def test_a_done_marker_vouches_for_a_script_whose_probes_stop_short(tmp_path):
    cfg = make_cfg(tmp_path / "store", total=1200)
    cfg.task.command = str(cfg.task.command).replace("--run.steps {total_steps}", "--run.steps 100")
    cfg.task.done_marker = "sd/*/checkpoint.ckpt"
    run_cell(cfg, RunSpec.from_cfg(cfg, config_name="fake"))
    state = run_dir(cfg).read_state()
    assert state["trained"] and state["trained_steps"] == 100  # the probed truth, not total_steps


# ----------------------------------------------------------------------------- ablation knobs reach the task


def test_knobs_render_per_cell_as_arguments_and_environment_variables(tmp_path):
    cfg = make_cfg(tmp_path / "store")
    cfg.agent = {"u": {"enabled": True}, "cert": {"enabled": False}}
    cfg.task.knobs = {"agent.u.enabled": {"args": ["--pessimistic", "{value}"], "env": {"SD_U": "u={value}"}},
                      "agent.cert.enabled": {"args": {True: ["--cert"], False: []}}}
    cmd = external.config_axis_commands(cfg)
    assert cmd["train"][-2:] == ["--pessimistic", "True"] and "--cert" not in cmd["train"]
    assert cmd["env"]["SD_U"] == "u=True"
    assert "--pessimistic" not in cmd["eval_id"]  # eval gets knob args only at its own {knob_args}
    cfg.agent.cert.enabled = True
    assert external.config_axis_commands(cfg)["train"][-3:] == ["--pessimistic", "True", "--cert"]
    cfg.task.knobs["agent.cert.enabled"] = {"args": {True: ["--cert"]}}
    cfg.agent.cert.enabled = False
    with pytest.raises(external.ExternalTaskError, match=r"no entry for the value False.*Fix: add `false: \[\.\.\.\]`"):
        external.config_axis_commands(cfg)


def test_configs_rendering_the_same_commands_are_refused_naming_the_knob_and_the_fix():
    def cfg_of(u: bool, cert: bool):
        return OmegaConf.create({"seed": 0, "store": {"root": "/tmp/none"}, "trainer": {"total_steps": 400},
                                 "agent": {"u": {"enabled": u}, "cert": {"enabled": cert}},
                                 "eval": OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml"),
                                 "task": OmegaConf.load(ROOT / "conf" / "task" / "safedreamer.yaml")})

    knobs = ["agent.u.enabled", "agent.cert.enabled"]
    # u reaches SafeDreamer as --pessimistic: baseline and u_only run different trainings.
    external.check_config_axis({"v2_baseline": cfg_of(False, False), "v2_u_only": cfg_of(True, False)}, knobs)
    # cert has no SafeDreamer flag: baseline and cert_only would be the same run under two labels.
    with pytest.raises(external.ExternalTaskError) as e:
        external.check_config_axis({"v2_baseline": cfg_of(False, False), "v2_cert_only": cfg_of(False, True),
                                    "v2_u_only": cfg_of(True, False)}, knobs)
    msg = str(e.value)
    assert "configs v2_baseline, v2_cert_only render the same train and eval commands" in msg
    assert "they differ in agent.cert.enabled" in msg and "v2_u_only" not in msg.split("Fix:")[0]
    assert "Fix: declare how the knob reaches the script" in msg and "knobs:" in msg


def test_a_task_external_sweep_whose_configs_render_the_same_command_is_refused_before_anything_is_written(tmp_path):
    from conftest import sds

    store = tmp_path / "store"
    args = ["-m", "task=external", "config=v2_baseline,v2_u_only", "seed=0", "trainer.total_steps=400",
            f"store.root={store}"]
    p = sds(*args, "~task.knobs", timeout=120)  # the fake script's knob mapping removed
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "task=external" in out and "configs v2_baseline, v2_u_only render the same train and eval commands" in out
    assert "they differ in agent.u.enabled" in out and "Fix:" in out
    assert not store.exists() or not any(store.rglob("*")), sorted(store.rglob("*"))  # nothing was written
    # With the shipped mapping (--pessimistic {value}) the same sweep plans both cells.
    p = sds(*args, "hydra.launcher.dry_run=true", timeout=120)
    assert p.returncode == 0 and "2 to submit" in p.stdout + p.stderr, p.stdout + p.stderr


def test_a_long_external_evaluation_moves_its_heartbeat_per_episode_and_is_not_called_stalled(tmp_path):
    from safedreamer_sweep.sweep.observe import observe_run

    cfg = make_cfg(tmp_path / "store", total=300)
    # 500 eval steps at 20 ms: about 10 s per kind, one 50-step episode a second; stall_after 4 s
    cfg.task.eval.command = str(cfg.task.eval.command).replace("--fake.step_sleep 0", "--fake.step_sleep 0.02")
    rd = run_dir(cfg)
    cell = spawn_cell(cfg, tmp_path)
    try:
        wait_for(lambda: progress(rd).get("phase") == "eval-id" and progress(rd).get("eval_episodes_done", 0) >= 1,
                 60, "the ID evaluation's first episode")
        time.sleep(5)  # longer than stall_after below, shorter than the evaluation
        p = progress(rd)
        assert p["phase"] == "eval-id" and p["eval_episodes_done"] >= 3 and p["eval_kind"] == "id", p
        view = observe_run(rd, stall_after=4)
        assert view.phase == "running", (view.phase, view.progress_age_s, p)
    finally:
        cell.wait(timeout=120)
    assert cell.returncode == 0 and len(rd.read_eval("id")["episodes"]) == 10


def test_a_niced_cell_keeps_its_niceness_in_the_scripts_new_session(tmp_path):
    """The script runs in its own session (so that a stop reaches its whole process group). Under
    autogroup scheduling a new session is a new group at nice 0: `nice -n 19 python -m
    safedreamer_sweep ...` must not hand the script a full share of the machine. Where autogroup does
    not apply (a process in a cpu cgroup, as in most containers, reads an empty /proc/self/autogroup)
    the process's own niceness is what counts, and it must hold too."""
    probe = "import os; print(os.nice(0)); print(open('/proc/self/autogroup').read().strip() or '-')"
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from safedreamer_sweep.tasks.external import run_command
        os.nice(7)
        rc, _ = run_command([sys.executable, "-c", {probe!r}], cwd=None, env={{}},
                            out_path=Path({str(tmp_path / "out.log")!r}), err_path=Path({str(tmp_path / "err.log")!r}))
        sys.exit(rc)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr + (tmp_path / "err.log").read_text()
    out = (tmp_path / "out.log").read_text().splitlines()[-2:]  # after run_command's header line
    assert out[0] == "7", out  # the process itself
    # Whether autogroup applies is the kernel's call per session, not this process's: on the CI
    # machine the test process reads an empty line (a cpu cgroup) while the script's new session
    # gets an autogroup of its own. Wherever the script has a group, that group must be niced too.
    own = Path("/proc/self/autogroup").read_text().strip() if Path("/proc/self/autogroup").exists() else ""
    if out[1] != "-":
        group, _, nice = out[1].split()
        assert nice == "7", out
        if own:  # a new session is a new group, not this one
            assert group != own.split()[0], out
