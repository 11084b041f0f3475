"""Device-hours, useful vs wasted: known answers on attempt histories the supervisor writes."""

from __future__ import annotations

import pytest

from safedreamer_sweep.core.durations import format_hours
from safedreamer_sweep.core.store import Store
from safedreamer_sweep.report.cost import (
    attempt_hours,
    cell_cost,
    queue_wait,
    store_cost,
    sweep_cost,
)

H = 3600.0
T0 = 1_700_000_000.0


def att(n, start_h, end_h, outcome, gpus=1, cpus=8, **kw):
    a = {"n": n, "started_at": T0 + start_h * H, "outcome": outcome, "resources": {"gpus": gpus, "cpus": cpus}}
    if end_h is not None:
        a["ended_at"] = T0 + end_h * H
    a.update(kw)
    return a


def test_attempt_hours_are_wall_hours_times_devices_held():
    assert attempt_hours(att(1, 0, 1.5, "done", gpus=2)) == pytest.approx(
        {"device": "gpu", "units": 2, "wall_h": 1.5, "hours": 3.0, "open": False})
    cpu = attempt_hours(att(1, 0, 0.5, "done", gpus=0, cpus=4))
    assert (cpu["device"], cpu["hours"]) == ("cpu", pytest.approx(2.0))
    # nothing recorded: one CPU core; a queued attempt never held anything
    assert attempt_hours({"started_at": T0, "ended_at": T0 + H, "outcome": "done"})["hours"] == pytest.approx(1.0)
    assert attempt_hours({"outcome": "submitted", "job_id": "7"})["hours"] == 0.0
    # still open: counted until `now`
    assert attempt_hours(att(1, 0, None, "running"), now=T0 + 2 * H)["hours"] == pytest.approx(2.0)


def test_an_unclosed_attempt_is_billed_until_its_last_heartbeat():
    state = {"phase": "running", "attempts": [att(1, 0, None, "running", pid=42)]}
    beat = {"pid": 42, "updated_at": T0 + 1 * H}
    assert cell_cost(state, now=T0 + 5 * H, progress=beat)["pending_h"] == pytest.approx(1.0)
    # a heartbeat of another pid (an older attempt) is no evidence about this one
    assert cell_cost(state, now=T0 + 5 * H, progress={**beat, "pid": 7})["pending_h"] == pytest.approx(5.0)


def test_resumed_attempts_are_useful():
    state = {"phase": "done", "attempts": [att(1, 0, 1, "failed", cause="timeout"), att(2, 1, 2, "done")]}
    c = cell_cost(state)
    assert (c["device"], c["useful_h"], c["wasted_h"]) == ("gpu", pytest.approx(2.0), 0.0)
    assert [a["class"] for a in c["attempts"]] == ["useful", "useful"]


def test_redone_steps_are_wasted_when_attempts_record_steps():
    # attempt 1 reached step 1000 but the newest checkpoint was 500: half its hours were redone
    state = {"phase": "done", "attempts": [att(1, 0, 1, "failed", cause="lost", start_step=0, end_step=1000),
                                           att(2, 1, 2, "done", start_step=500, end_step=2000)]}
    c = cell_cost(state)
    assert c["useful_h"] == pytest.approx(1.5) and c["wasted_h"] == pytest.approx(0.5)


def test_restart_from_scratch_wastes_everything_before_it():
    state = {"phase": "done", "attempts": [att(1, 0, 1, "failed", cause="error", start_step=0, end_step=800),
                                           att(2, 1, 3, "done", start_step=0, end_step=2000)]}
    c = cell_cost(state)
    assert c["useful_h"] == pytest.approx(2.0) and c["wasted_h"] == pytest.approx(1.0)


def test_duplicate_and_after_done_attempts_are_wasted():
    state = {"phase": "done", "attempts": [
        att(1, 0, 2, "done"),                      # the chain
        att(2, 0.5, 1.5, "failed", cause="lost"),  # ran at the same time (a second sweep)
        att(3, 3, 4, "interrupted"),               # ran after the cell was already done
        att(4, 4, 4.5, "done"),                    # ran again on a done cell: nothing it did was needed
    ]}
    c = cell_cost(state)
    assert c["useful_h"] == pytest.approx(2.0) and c["wasted_h"] == pytest.approx(2.5)
    assert [a["class"] for a in c["attempts"]] == ["useful", "wasted", "wasted", "wasted"]


def test_unfinished_and_failed_cells():
    running = {"phase": "running", "attempts": [att(1, 0, 1, "failed", cause="oom"), att(2, 1, None, "running")]}
    c = cell_cost(running, now=T0 + 3 * H)
    assert (c["useful_h"], c["wasted_h"], c["pending_h"]) == (0.0, 0.0, pytest.approx(3.0))
    failed = {"phase": "failed", "attempts": [att(1, 0, 1, "failed", cause="error", gpus=0, cpus=2)]}
    c = cell_cost(failed)
    assert (c["device"], c["wasted_h"], c["useful_h"]) == ("cpu", pytest.approx(2.0), 0.0)


def test_sweep_cost_per_config_total_and_money():
    states = {
        ("v2_baseline", 0): {"phase": "done", "attempts": [att(1, 0, 1, "done", gpus=1)]},
        ("v2_baseline", 1): {"phase": "done", "attempts": [att(1, 0, 1, "failed", cause="error", start_step=0,
                                                               end_step=10), att(2, 1, 2, "done", start_step=0)]},
        ("v2_full", 0): {"phase": "failed", "attempts": [att(1, 0, 0.5, "failed", cause="error", gpus=2)]},
        ("v2_full", 1): {"phase": "done", "attempts": [att(1, 0, 1, "done", gpus=0, cpus=4)]},
    }
    out = sweep_cost(states, per_gpu_hour=1.6, currency="RMB")
    assert out["configs"]["v2_baseline"]["gpu"]["useful_h"] == pytest.approx(2.0)
    assert out["configs"]["v2_baseline"]["gpu"]["wasted_h"] == pytest.approx(1.0)
    assert out["configs"]["v2_full"]["gpu"]["wasted_h"] == pytest.approx(1.0)
    assert out["configs"]["v2_full"]["cpu"]["useful_h"] == pytest.approx(4.0)
    assert out["total"]["gpu"] == pytest.approx({"useful_h": 2.0, "wasted_h": 2.0, "pending_h": 0.0, "pruned_h": 0.0,
                                                   "total_h": 4.0})
    assert out["total"]["cpu"]["total_h"] == pytest.approx(4.0)  # never added to GPU-hours
    assert out["money"] == pytest.approx({"per_gpu_hour": 1.6, "currency": "RMB", "useful": 3.2, "wasted": 3.2,
                                          "pending": 0.0, "pruned": 0.0, "total": 6.4})
    assert sweep_cost(states)["money"] is None
    # the other two input shapes give the same totals
    as_tuples = [(k[0], k[1], v) for k, v in states.items()]
    as_dicts = [{"config": k[0], "seed": k[1], "state": v} for k, v in states.items()]
    assert sweep_cost(as_tuples)["total"] == sweep_cost(as_dicts)["total"] == sweep_cost(states)["total"]


def test_store_cost_counts_an_abandoned_identity_as_wasted(tmp_path):
    store = Store(tmp_path)
    for hash8, state in (("aaaaaaaa", {"phase": "done", "attempts": [att(1, 0, 1, "done")]}),
                         ("bbbbbbbb", {"phase": "failed", "attempts": [att(1, 2, 3, "failed", cause="error")]})):
        rd = store.run_dir("v2_full", 0, hash8)
        rd.ensure_spec({"config": "v2_full", "seed": 0, "hash": hash8})
        rd.update_state(lambda s, st=state: s.update(st))
    out = store_cost(store)
    assert out["total"]["gpu"]["useful_h"] == pytest.approx(1.0)
    assert out["total"]["gpu"]["wasted_h"] == pytest.approx(1.0)


def test_format_hours():
    assert (format_hours(0), format_hours(0.00001), format_hours(0.0123), format_hours(2.345)) == (
        "0", "<0.0001", "0.0123", "2.35")


def test_queue_wait_is_submission_to_start_and_never_device_hours():
    states = {("a", 0): {"attempts": [att(1, 1.0, 2.0, "failed", submitted_at=T0 + 0.5 * H),
                                      att(2, 3.0, 4.0, "done", submitted_at=T0 + 2.9 * H)]},
              ("a", 1): {"attempts": [att(1, 1.0, 2.0, "done", submitted_at=T0 + 0.9 * H),
                                      {"n": 2, "outcome": "submitted", "submitted_at": T0}]}}  # never started
    q = queue_wait(states)
    assert q["attempts"] == 3 and q["total_h"] == pytest.approx(0.5 + 0.1 + 0.1)
    assert q["median_s"] == pytest.approx(0.1 * H) and q["max_s"] == pytest.approx(0.5 * H)
    assert q["max_cell"] == "a/seed_0 attempt 1"
    # the device-hours do not change with the wait
    assert sweep_cost(states)["total"]["gpu"]["total_h"] == pytest.approx(3.0)
    assert queue_wait({("a", 0): {"attempts": [att(1, 1.0, 2.0, "done")]}})["attempts"] == 0


def test_two_seedless_cells_of_one_config_each_keep_their_cost(tmp_path):
    # An app without a seed has one cell per label and hash (runs/<label>/<hash8>): two such cells of
    # one label are two cells, each with its own cost, not one cell's identities merged.
    store = Store(tmp_path)
    for hash8, gpus in (("aaaaaaaa", 1), ("bbbbbbbb", 2)):
        rd = store.run_dir("train", None, hash8)
        rd.ensure_spec({"config": "train", "seed": None, "hash": hash8})
        rd.update_state(lambda s, g=gpus: s.update({"phase": "done", "attempts": [att(1, 0, 1, "done", gpus=g)]}))
    out = store_cost(store)
    assert out["total"]["gpu"] == pytest.approx({"useful_h": 3.0, "wasted_h": 0.0, "pending_h": 0.0, "pruned_h": 0.0,
                                                   "total_h": 3.0})
    assert {k: c["useful_h"] for k, c in out["cells"].items()} == pytest.approx(
        {"train/aaaaaaaa": 1.0, "train/bbbbbbbb": 2.0})
    # given as plain items, the hash tells the cells apart too
    items = [{"config": "train", "seed": None, "hash": h, "state": {"phase": "done", "attempts": [att(1, 0, 1, "done")]}}
             for h in ("aaaaaaaa", "bbbbbbbb")]
    assert sorted(sweep_cost(items)["cells"]) == ["train/aaaaaaaa", "train/bbbbbbbb"]


def test_a_pruned_cell_is_its_own_bucket_not_wasted_and_a_promoted_one_is_useful():
    """A cell its study's pruner stopped: the chain that led to the pruned attempt is `pruned` (neither
    useful nor wasted); work nobody resumed from is still wasted. Promoted and finished later, its
    pruned attempt was resumed from: useful."""
    pruned = {"phase": "pruned", "attempts": [
        att(1, 0, 1, "failed", cause="error", start_step=0, end_step=10),  # nobody resumed from it (2 restarts)
        att(2, 1, 2, "interrupted", cause="preempted", start_step=0, end_step=20),
        att(3, 2, 3, "pruned", start_step=20, end_step=40, pruned_at=40, pruned_by={"study": "s", "trial": 1})]}
    c = cell_cost(pruned)
    assert (c["pruned_h"], c["wasted_h"], c["useful_h"], c["pending_h"]) == (pytest.approx(2.0), pytest.approx(1.0), 0.0, 0.0)
    assert c["total_h"] == pytest.approx(3.0)
    assert [a["class"] for a in c["attempts"]] == ["wasted", "pruned", "pruned"]
    promoted = {"phase": "done", "attempts": [*pruned["attempts"][1:], att(4, 3, 4, "done", start_step=40)]}
    assert [a["class"] for a in cell_cost(promoted)["attempts"]] == ["useful", "useful", "useful"]
    # the supervisor wrote phase failed over it: the attempt's outcome still says pruned
    assert cell_cost({**pruned, "phase": "failed"})["pruned_h"] == pytest.approx(2.0)
    out = sweep_cost({("a", 0): pruned}, per_gpu_hour=2.0)
    assert out["total"]["gpu"]["pruned_h"] == pytest.approx(2.0) and out["money"]["pruned"] == pytest.approx(4.0)
