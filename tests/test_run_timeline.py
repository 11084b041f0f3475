"""A cell of the built-in trainer records where its time went (tasks/run.py's timeline) and keeps its
compiled JAX programs in the store: read from the session's real finished cell (conftest)."""

from __future__ import annotations

from pathlib import Path

from safedreamer_sweep.core.store import Store


def test_a_finished_cell_records_its_timeline(finished_store: Path) -> None:
    (rd,) = list(Store(finished_store).iter_runs())
    attempt = rd.read_state()["attempts"][-1]
    tl = attempt["timeline"]
    assert {"imports", "train", "eval_id", "eval_ood"} <= set(tl)
    # Order of events: process created <= run_cell entered <= training started <= first env step <= ended.
    assert tl["process_created"] <= tl["task_entered"] <= tl["train"]["started"] <= tl["first_env_step"]
    assert tl["first_env_step"] <= tl["train"]["ended"] <= tl["eval_id"]["started"] <= attempt["ended_at"]
    train = tl["train"]
    # 1,024 training steps, one periodic evaluation episode at the end, one episode per final kind.
    assert train["eval_env_steps"] == 1000
    assert tl["eval_id"]["eval_env_steps"] == 1000 and tl["eval_ood"]["eval_env_steps"] == 1000
    assert train["compiles"] >= 1 and train["compile_s"] > 0 and train["checkpoints"] >= 1
    parts = train["compile_s"] + train["env_construct_s"] + train["eval_env_s"] + train["checkpoint_s"]
    assert 0 < parts < train["wall_s"]  # the parts are inside the training call, and training proper is left
    assert 0 < tl["process_start_cpu_s"] <= tl["process_cpu_s"]


def test_compiled_programs_are_kept_in_the_store(finished_store: Path) -> None:
    cache = finished_store / "cache" / "jax"
    assert any(p.name.startswith("jit_ppo_update") for p in cache.iterdir()), sorted(cache.iterdir())
