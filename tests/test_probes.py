"""Probes turn a script's own files into env steps, checkpoints and eval episodes."""

from __future__ import annotations

import json
import os
import pickle
import time

import pytest

from safedreamer_sweep.tasks import probes


def _write_jsonl(path, rows, torn_tail: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn_tail)


def test_jsonl_probe_reads_the_newest_file_and_skips_a_torn_line(tmp_path):
    old = tmp_path / "sd" / "20260101-000000_a" / "metrics.jsonl"
    new = tmp_path / "sd" / "20260102-000000_a" / "metrics.jsonl"
    _write_jsonl(old, [{"step": 9000}])
    _write_jsonl(new, [{"step": 100}, {"step": 250, "x": 1}, {"other": 3}], torn_tail='{"step": 99')
    os.utime(old, (time.time() - 100, time.time() - 100))
    probe = probes.JsonlProbe("m", glob="sd/*/metrics.jsonl", key="step", base_dir=tmp_path)
    # The newest file wins even though an older attempt's file holds a bigger step (a resume from an
    # older checkpoint), and a half-written last line is no evidence.
    assert probe.read() == 250
    assert probes.JsonlProbe("m", glob="sd/*/metrics.jsonl", key="step", scale=2, base_dir=tmp_path).read() == 500
    assert probes.JsonlProbe("m", glob="nothing/*.jsonl", key="step", base_dir=tmp_path).read() is None


def test_jsonl_probe_key_paths_flat_first_then_dotted(tmp_path):
    f = tmp_path / "m.jsonl"
    _write_jsonl(f, [{"episode/score": 1.5, "stats": {"env_step": 42}}])
    assert probes.JsonlProbe("a", glob=str(f), key="stats.env_step").read() == 42
    assert probes.JsonlProbe("b", glob=str(f), key="episode/score").read() == 1
    assert probes.JsonlProbe("c", glob=str(f), key="missing").read() is None


def test_jsonl_probe_reads_only_the_tail_of_a_long_file(tmp_path):
    f = tmp_path / "m.jsonl"
    _write_jsonl(f, [{"step": i, "pad": "x" * 100} for i in range(20000)])  # ~2.4 MB
    rows = probes.tail_jsonl(f, max_bytes=4096)
    assert rows and len(rows) < 50 and rows[-1]["step"] == 19999
    assert probes.JsonlProbe("m", glob=str(f), key="step").read() == 19999


def _chunk(d, length, name=None):
    d.mkdir(parents=True, exist_ok=True)
    p = d / (name or f"20260101T000000F{time.monotonic_ns() % 10**6:06d}-{os.urandom(4).hex()}-0000-{length}.npz")
    p.write_bytes(b"x")
    return p


def test_files_probe_sums_sizes_from_names_times_scale(tmp_path):
    replay = tmp_path / "sd" / "run1" / "replay"
    probe = probes.FilesProbe("r", glob="sd/*/replay/*.npz", size_regex=r"-(\d+)\.npz$", scale=5, base_dir=tmp_path)
    probe.start(0)
    assert probe.read() is None
    _chunk(replay, 1024)
    _chunk(replay, 1024)
    _chunk(replay, 17)
    assert probe.read() == (1024 + 1024 + 17) * 5


def test_files_probe_counts_only_this_attempts_files_on_top_of_the_resume_step(tmp_path):
    old = tmp_path / "sd" / "attempt1" / "replay"
    for _ in range(3):
        _chunk(old, 100)
    probe = probes.FilesProbe("r", glob="sd/*/replay/*.npz", size_regex=r"-(\d+)\.npz$", base_dir=tmp_path)
    probe.start(base=250)  # resumed from a checkpoint at env step 250
    assert probe.read() == 250
    _chunk(tmp_path / "sd" / "attempt2" / "replay", 100)
    assert probe.read() == 350
    everything = probes.FilesProbe("r", glob="sd/*/replay/*.npz", per_file=10, since_start=False, base_dir=tmp_path)
    everything.start(base=250)
    assert everything.read() == 40


def test_files_probe_counts_a_chunk_rewritten_with_a_growing_length_once(tmp_path):
    # SafeDreamer saves its current partial chunk at every checkpoint: the same uuid reappears
    # under a new name with a longer length, and the shorter file stays.
    replay = tmp_path / "sd" / "run1" / "replay"
    replay.mkdir(parents=True)
    decl = {"name": "replay", "type": "files", "glob": "sd/*/replay/*.npz", "size_regex": r"-(\d+)\.npz$",
            "scale": 5}
    naive, = probes.build_probes([decl], base_dir=tmp_path)
    keyed, = probes.build_probes([{**decl, "key_regex": r"^[^-]+-([^-]+)-"}], base_dir=tmp_path)
    naive.start(0)
    keyed.start(0)
    succ = "0" * 22
    for name in (f"20261130T071050F407373-57BWVDhdbjBsnNtmWjDBpE-{succ}-200.npz",
                 "20261130T071120F000001-Aaaaaaaaaaaaaaaaaaaaaa-57BWVDhdbjBsnNtmWjDBpE-40.npz",
                 "20261130T071150F000002-Aaaaaaaaaaaaaaaaaaaaaa-57BWVDhdbjBsnNtmWjDBpE-90.npz"):
        (replay / name).write_bytes(b"")
    assert naive.read() == (200 + 40 + 90) * 5  # what a plain sum would claim
    assert keyed.read() == (200 + 90) * 5


def test_files_probe_rebases_on_a_checkpoint_so_a_prefill_before_the_restore_is_not_counted(tmp_path):
    # A resumed SafeDreamer prefills its fresh replay (200 agent steps) BEFORE it loads the checkpoint
    # and restores its step counter (agent step 400); the first save writes that prefill chunk.
    replay = tmp_path / "sd" / "attempt2" / "replay"
    replay.mkdir(parents=True)
    probe, = probes.build_probes([{"name": "replay", "type": "files", "glob": "sd/*/replay/*.npz",
                              "size_regex": r"-(\d+)\.npz$", "key_regex": r"^[^-]+-([^-]+)-", "scale": 5}],
                            base_dir=tmp_path)
    probe.start(base=2000)
    (replay / f"20261130T071050F000001-Uuuuuuuuuuuuuuuuuuuuuu-{'0' * 22}-200.npz").write_bytes(b"")
    assert probe.read() == 2000 + 1000  # before the checkpoint is seen: the prefill looks like progress
    probe.rebase(2000)  # the attempt's first checkpoint: step 400 x 5, saved with the prefill chunk
    assert probe.read() == 2000
    (replay / f"20261130T071050F000001-Uuuuuuuuuuuuuuuuuuuuuu-{'0' * 22}-260.npz").write_bytes(b"")
    assert probe.read() == 2000 + 60 * 5


def test_files_probe_does_not_count_twice_the_steps_a_checkpoint_covers_before_their_file_lands(tmp_path):
    # A checkpoint at agent step 359 is seen while only full 32-step chunks up to 352 are on disk; the
    # chunk holding steps 353-384 lands later (SafeDreamer: the partial chunk flushed just after the
    # checkpoint). Counting that whole chunk on top of 359 would claim 391 (seen in CI: 2404 of 2400).
    replay = tmp_path / "replay"
    replay.mkdir()
    probe, = probes.build_probes([{"name": "replay", "type": "files", "glob": "replay/*.npz",
                              "size_regex": r"-(\d+)\.npz$", "key_regex": r"^c(\d+)-"}], base_dir=tmp_path)
    probe.start(0)
    for i in range(11):  # 11 x 32 = 352 steps
        (replay / f"c{i}-32.npz").write_bytes(b"")
    probe.rebase(359)
    assert probe.read() == 359
    (replay / "c11-32.npz").write_bytes(b"")  # steps 353-384
    assert probe.read() == 384
    probe.rebase(384)  # the next checkpoint, its chunk already on disk: nothing pending
    (replay / "c12-32.npz").write_bytes(b"")
    assert probe.read() == 416


def test_files_probe_needs_exactly_one_size_rule():
    with pytest.raises(probes.ProbeConfigError, match="exactly one"):
        probes.FilesProbe("r", glob="*.npz")
    with pytest.raises(probes.ProbeConfigError, match="exactly one"):
        probes.FilesProbe("r", glob="*.npz", per_file=1, size_regex=r"(\d+)")
    with pytest.raises(probes.ProbeConfigError, match="no capture group"):
        probes.FilesProbe("r", glob="*.npz", size_regex=r"\d+")


def test_stdout_probe_keeps_the_newest_match():
    p = probes.StdoutProbe("s", pattern=r"\[(\d+)\]", scale=2)
    assert p.read() is None
    for line in ["starting", "[100] loss 1.0", "noise", "[300] loss 0.5"]:
        p.feed(line)
    assert p.read() == 600


def test_build_probes_rejects_bad_declarations(tmp_path):
    with pytest.raises(probes.ProbeConfigError, match="type 'csv'"):
        probes.build_probes([{"name": "x", "type": "csv"}])
    with pytest.raises(probes.ProbeConfigError, match="missing required field 'key'"):
        probes.build_probes([{"name": "x", "type": "jsonl", "glob": "*.jsonl"}])
    with pytest.raises(probes.ProbeConfigError, match="unknown field"):
        probes.build_probes([{"name": "x", "type": "stdout", "pattern": r"(\d+)", "glob": "a"}])
    built = probes.build_probes([{"name": "a", "type": "jsonl", "glob": "*.jsonl", "key": "step"},
                            {"name": "b", "type": "files", "glob": "*.npz", "per_file": 64},
                            {"name": "c", "type": "stdout", "pattern": r"step (\d+)"}], base_dir=tmp_path)
    assert [type(p).__name__ for p in built] == ["JsonlProbe", "FilesProbe", "StdoutProbe"]


def test_checkpoint_step_by_pickle_json_and_name(tmp_path):
    pk = tmp_path / "a" / "checkpoint.ckpt"
    pk.parent.mkdir()
    pk.write_bytes(pickle.dumps({"step": 1200, "agent": {"w": [1, 2]}}))
    js = tmp_path / "state.json"
    js.write_text(json.dumps({"trainer": {"global_step": 77}}))
    named = tmp_path / "ckpt_000300.pt"
    named.write_bytes(b"")
    assert probes.checkpoint_step(pk, pickle_key="step") == 1200
    assert probes.checkpoint_step(js, json_key="trainer.global_step") == 77
    assert probes.checkpoint_step(named, name_regex=r"ckpt_(\d+)\.pt") == 300
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(pickle.dumps({"step": 5})[:-3])
    assert probes.checkpoint_step(torn, pickle_key="step") is None  # being rewritten: no step, no crash
    assert probes.checkpoint_step(pk) is None  # no way declared


def test_find_checkpoint_takes_the_newest_and_scales_its_step(tmp_path):
    for i, name in enumerate(["run1", "run2"]):
        f = tmp_path / "sd" / name / "checkpoint.ckpt"
        f.parent.mkdir(parents=True)
        f.write_bytes(pickle.dumps({"step": 100 * (i + 1)}))
        os.utime(f, (time.time() - 10 + i, time.time() - 10 + i))
    found = probes.find_checkpoint("sd/*/checkpoint.ckpt", base_dir=tmp_path, scale=5, pickle_key="step")
    assert found is not None and found.path.parent.name == "run2" and found.step == 1000
    assert probes.find_checkpoint("sd/*/none.ckpt", base_dir=tmp_path) is None


def test_read_episodes_maps_the_scripts_keys(tmp_path):
    f = tmp_path / "metrics.jsonl"
    _write_jsonl(f, [{"step": 5, "fps": 3.0},
                     {"step": 10, "episode/score": 12.5, "episode/cost": 3.0, "episode/length": 1000},
                     {"step": 20, "episode/score": 8.0, "episode/length": 1000}])
    eps = probes.read_episodes([f], "jsonl", {"return": "episode/score", "cost": "episode/cost",
                                         "length": "episode/length"})
    # The row without a score is not an episode; a missing cost stays unknown, never 0.
    assert eps == [{"return": 12.5, "cost": 3.0, "length": 1000}, {"return": 8.0, "cost": None, "length": 1000}]
    j = tmp_path / "eval.json"
    j.write_text(json.dumps({"results": {"episodes": [{"R": 1.0, "C": 0.0}, {"R": 2.0, "C": 1.0}]}}))
    eps = probes.read_episodes([j], "json", {"return": "R", "cost": "C"}, records="results.episodes")
    assert [e["return"] for e in eps] == [1.0, 2.0] and eps[1]["cost"] == 1.0 and eps[0]["length"] is None
    with pytest.raises(probes.ProbeConfigError, match="return"):
        probes.read_episodes([f], "jsonl", {"cost": "episode/cost"})


def test_curve_mirror_copies_new_complete_rows_in_step_order(tmp_path):
    a = tmp_path / "sd" / "run1" / "metrics.jsonl"
    _write_jsonl(a, [{"step": 10, "episode/score": 1.0}])
    m = probes.CurveMirror("sd/*/metrics.jsonl", step_key="step", scale=2,
                      keys={"episode_return": "episode/score", "episode_cost": "episode/cost"}, base_dir=tmp_path)
    m.skip_existing()  # an earlier attempt's rows are not this attempt's
    assert m.new_rows() == []
    with open(a, "a") as f:
        f.write(json.dumps({"step": 20, "fps": 3}) + "\n")  # no curve key: not a curve row
        f.write(json.dumps({"step": 30, "episode/score": 2.0, "episode/cost": 1.0}) + "\n")
        f.write('{"step": 40, "episode/sc')  # torn: waits for the rest
    assert m.new_rows() == [{"env_step": 60, "episode_return": 2.0, "episode_cost": 1.0}]
    with open(a, "a") as f:
        f.write('ore": 3.0}\n')
    assert m.new_rows() == [{"env_step": 80, "episode_return": 3.0}]
    b = tmp_path / "sd" / "run2" / "metrics.jsonl"  # a resumed attempt's new log dir
    _write_jsonl(b, [{"step": 35, "episode/score": 9.0}, {"step": 50, "episode/score": 4.0}])
    os.utime(b, (time.time() + 5, time.time() + 5))
    assert m.new_rows() == [{"env_step": 100, "episode_return": 4.0}]  # never back in steps
