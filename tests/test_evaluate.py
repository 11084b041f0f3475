"""Evaluation: schema of eval/<kind>.json, determinism, seeds distinct from training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.core.run_dir import RunDir
from safedreamer_sweep.trainer import evaluate as ev
from safedreamer_sweep.trainer import ppo_lag as trainer

ROOT = Path(__file__).resolve().parent.parent


def _cfg():
    """The composed defaults of the groups the evaluator reads (no Hydra needed)."""
    return OmegaConf.create({
        "seed": 0,
        "trainer": OmegaConf.load(ROOT / "conf" / "sweep.yaml").trainer,
        "agent": OmegaConf.load(ROOT / "conf" / "agent" / "ppo_lag.yaml"),
        "env": OmegaConf.load(ROOT / "conf" / "env" / "safety_gym.yaml"),
        "eval": OmegaConf.load(ROOT / "conf" / "eval" / "id_ood.yaml"),
    })


def test_summary_known_answer():
    eps = [{"return": 1.0, "cost": 30.0, "length": 1000}, {"return": 3.0, "cost": 10.0, "length": 500}]
    s = ev.summarize(eps, cost_limit=25.0)
    assert s == {"return_mean": 2.0, "return_std": 1.0, "cost_mean": 20.0, "cost_std": 10.0,
                 "length_mean": 750.0, "violation_rate": 0.5, "episodes": 2}


def test_eval_seeds_are_deterministic_and_distinct_from_training_seeds():
    for seed in range(5):
        assert ev.eval_seed(seed, "id") == ev.eval_seed(seed, "id")
        assert ev.eval_seed(seed, "id") != ev.eval_seed(seed, "ood")
        train_seeds = set(trainer.env_seeds(seed, 0, 8))
        assert ev.eval_seed(seed, "id") not in train_seeds and ev.eval_seed(seed, "ood") not in train_seeds


def _checkpointed_run(tmp_path, obs_dim=60, act_dim=2):
    rd = RunDir(tmp_path / "run")
    params = trainer.init_params(0, obs_dim, act_dim, [64, 64], 1, -0.5)
    norm = trainer.RunningNorm(obs_dim)
    norm.update(np.random.default_rng(0).normal(size=(100, obs_dim)))
    rd.save_checkpoint(2048, {"params": trainer.to_numpy(params), "normalizer": norm.state_dict(),
                              "obs_dim": obs_dim, "act_dim": act_dim})
    return rd


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no readable checkpoint"):
        ev.evaluate(_cfg(), RunDir(tmp_path / "empty"), "id")


@pytest.mark.slow
def test_evaluate_writes_the_contract_schema_deterministically(tmp_path):
    rd = _checkpointed_run(tmp_path)
    cfg = _cfg()
    cfg.eval.episodes = 1
    ood = ev.evaluate(cfg, rd, "ood")
    assert ood["kind"] == "ood" and ood["env_id"] == "SafetyPointGoal2-v0" and ood["checkpoint_step"] == 2048
    assert ood["ood_proxy"] == cfg.eval.ood_proxy and ood["cost_limit"] == 25.0
    assert ood["seed"] == ev.eval_seed(0, "ood")
    assert len(ood["episodes"]) == 1 and set(ood["episodes"][0]) == {"return", "cost", "length"}
    assert ood["summary"]["episodes"] == 1 and ood["episodes"][0]["length"] == 1000
    again = ev.evaluate(cfg, rd, "ood")
    assert again == ood
    ident = ev.evaluate(cfg, rd, "id")
    assert ident["env_id"] == "SafetyPointGoal1-v0" and "ood_proxy" not in ident


def test_eval_env_with_another_observation_space_is_refused(tmp_path):
    rd = _checkpointed_run(tmp_path, obs_dim=12)
    with pytest.raises(ValueError, match="observation shape"):
        ev.evaluate(_cfg(), rd, "id")


@pytest.mark.slow
def test_evaluation_beats_the_heartbeat_per_episode_and_records_its_checkpoint(tmp_path):
    rd = _checkpointed_run(tmp_path)
    rd.update_state(lambda s: s.update(trained=True, trained_steps=4096))  # newer than the checkpoint (2048)
    cfg = _cfg()
    cfg.eval.episodes = 2
    beats: list[dict] = []
    real = rd.heartbeat

    class Spy(RunDir):  # records every progress.json the evaluation writes
        def heartbeat(self, *a, **kw):
            real(*a, **kw)
            beats.append(dict(rd.read_progress() or {}))

    result = ev.evaluate(cfg, Spy(rd.path), "id")
    assert [b["eval_episodes_done"] for b in beats] == [0, 1, 2]
    assert all(b["phase"] == "eval-id" and b["eval_episodes"] == 2 and b["env_step"] == 2048 for b in beats)
    assert beats[0]["eval_moved_at"] <= beats[-1]["eval_moved_at"]
    assert result["checkpoint_step"] == 2048 and result["trained_steps"] == 4096
    assert result["policy"] == "deterministic"


def test_an_evaluation_that_moves_its_episodes_is_not_stalled(tmp_path):
    """The stall check reads episodes during an eval phase: an hour later, env_step has not moved
    (training ended) and the state has not changed, but an episode ended a second ago."""
    import os
    import time

    from safedreamer_sweep.core.files import atomic_write_json
    from safedreamer_sweep.sweep.observe import observe_run

    rd = RunDir(tmp_path / "run")
    rd.begin_attempt()
    rd.set_phase("eval-ood")
    t = time.time()
    later = t + 3600
    progress = {"env_step": 2048, "total_steps": 2048, "updated_at": later - 1, "env_step_moved_at": t,
                "host": rd.read_state()["attempts"][-1]["host"], "pid": os.getpid(), "phase": "eval-ood"}
    atomic_write_json(rd.progress_path, {**progress, "eval_moved_at": later - 1, "eval_episodes_done": 3})
    assert observe_run(rd, stall_after=600, now=later).phase == "running"
    atomic_write_json(rd.progress_path, progress)  # no episode for an hour: stalled
    assert observe_run(rd, stall_after=600, now=later).phase == "stalled"


def test_status_and_report_flag_an_evaluation_of_a_checkpoint_older_than_the_trained_steps(tmp_path):
    from rich.console import Console

    from safedreamer_sweep.commands.status import collect, status_view
    from safedreamer_sweep.core.files import atomic_write_json
    from safedreamer_sweep.report.build import compute_report
    from safedreamer_sweep.report.synthetic import write_store

    cell = {"id_returns": [10.0], "id_costs": [5.0], "ood_returns": [8.0], "ood_costs": [7.0]}
    store = write_store(tmp_path / "store", {"v2_baseline": lambda s: cell}, [0, 1])  # trained 16384 steps
    rd = store.run_dir("v2_baseline", 1, next(r.path.name for r in store.find("v2_baseline", 1)))
    atomic_write_json(rd.eval_path("ood"), {**rd.read_eval("ood"), "checkpoint_step": 12288})
    doc = collect(store.root, sample_cpu=False)
    by_seed = {c["seed"]: c for c in doc["cells"]}
    assert by_seed[0]["stale_eval"] is None
    assert by_seed[1]["stale_eval"] == "OOD eval of checkpoint 12288 < 16384 trained steps"
    console = Console(width=400, record=True)
    console.print(status_view(doc))
    assert "STALE: OOD eval of checkpoint 12288 < 16384 trained steps" in console.export_text()
    stale = [w.text for w in compute_report(store.root).warnings if w.kind == "stale_eval"]
    assert len(stale) == 1 and stale[0].startswith("v2_baseline seed 1: OOD eval of checkpoint 12288 < 16384")


def test_the_evaluation_heartbeat_keeps_the_trainings_evidence(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.heartbeat(4096, 4096, steps_per_s=812.5, peak_rss_mb=300.0)
    ev.EvalHeartbeat(rd, "id", step=2048, total_steps=4096, episodes=3)(1)
    p = rd.read_progress()
    assert (p["env_step"], p["steps_per_s"], p["peak_rss_mb"]) == (4096, 812.5, 300.0)
    assert (p["phase"], p["eval_episodes_done"], p["eval_episodes"]) == ("eval-id", 1, 3)
