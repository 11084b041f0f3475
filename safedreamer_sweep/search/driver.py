"""The study's ask/tell loop (hydra/sweeper=sds_optuna): a trial's cells run through the sweep's own
supervisor, with no barrier between trials.

    open the study (its journal in the store)  ->  adopt the trials left RUNNING by an earlier invocation
    loop:  ask under the study's lock while trials are missing and no cell waits for a slot
           poll the supervisor once (cells start, end, retry by cause)
           report each running trial's seeds' curve at aligned env-step rungs; prune: stop its cells
           tell each trial whose cells are all terminal: its seeds' aggregate, spread, cost - limit
    then:  the best points re-run on test seeds (optional), optimization_results.yaml, the report

`n_trials` is the study's total: trials already in the journal (complete, pruned, failed, or in flight
elsewhere) count, so a re-invocation asks only the remainder, and two invocations of one study end
with exactly n_trials (count-then-ask runs under `<store>/studies/<name>/ask.lock`). A trial's cells
are ordinary cells: a done one is read from the store, a partial one resumes from its checkpoint, one
another live sweep holds is watched (its claim decides, as for any sweep: never run twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from safedreamer_sweep.search.settings import SearchError
from safedreamer_sweep.search.trials import TrialCell, TrialRun
from safedreamer_sweep.search.values import aggregate, aligned, spread
from safedreamer_sweep.sweep.launch import Sweep
from safedreamer_sweep.sweep.supervise import Supervisor

_Say = Callable[[str], None]


@dataclass
class Objective:
    """What a trial is judged by: metric paths (None: the task's return value), directions, the
    constraint (metric and limit), and the curve metric the pruner reads."""

    paths: list[str | None]
    directions: list[str]
    how: str = "mean"                       # mean | iqm over the seeds
    cost_path: str | None = None
    cost_limit: float | None = None
    prune_metric: str | None = None
    warmup_steps: int = 0
    cost_warmup_steps: int | None = None    # after this env step (None: half the budget) a cost far above the limit prunes
    cost_slack: float = 1.0                 # "far above": cost > limit x (1 + cost_slack)
    cost_curve: str | None = None           # the curve key of the cost (the built-in's episode_cost)


@dataclass
class StudyDriver:
    sweep: Sweep
    sup: Supervisor
    study: optuna.Study
    lock: Any                                # the study's ask lock (filelock)
    n_trials: int
    seeds: list[int | None]
    objective: Objective
    distributions: dict[str, Any]            # the search space (Optuna distributions by override key)
    overrides_of: Callable[[dict[str, Any]], list[str]]   # a trial's params -> its job overrides (without seed)
    say: _Say = print
    max_running: int | None = None           # hydra.sweeper.n_jobs: trials in flight at once
    reseed: Callable[[int], None] = lambda n: None  # before each ask: the sampler's seed moved on by n trials
    test_seeds: list[int] = field(default_factory=list)  # the best points re-run on these (apart from tuning)
    test_top_k: int = 0
    runs: dict[int, TrialRun] = field(default_factory=dict)
    _cells: dict[str, Any] = field(default_factory=dict)  # cell key -> Tracked, shared by trials that repeat a point

    # --- the loop
    def run(self) -> dict[int, TrialRun]:
        self._adopt()
        self._loop()
        if self.test_seeds and self.test_top_k:
            self._test_best()
        return self.runs

    def _loop(self) -> None:
        while True:
            self._top_up()
            if not (self.sup.queue or self.sup.active) and not self._open():
                return
            if self.sup.queue or self.sup.active:
                self.sup.poll()
            self._judge_running()
            self._tell_finished()

    # --- the best points on fresh test seeds
    def _test_best(self) -> None:
        """Re-run the best `test_top_k` feasible points on the test seeds (ordinary cells again: done
        ones are read, so a re-invocation re-runs nothing), reported apart from the tuning seeds in the
        study's user attribute `sds_test` (a finished trial's own attributes are frozen)."""
        best = _ranked_feasible(self.study)[: self.test_top_k]
        k, base = len(self.test_seeds), self.n_trials * len(self.seeds)
        runs = []
        for rank, t in enumerate(best):
            base_ov = [o for o in self.overrides_of(t.params) if not o.lstrip("+~").startswith("seed=")]
            jobs = [[*base_ov, f"seed={s}"] for s in self.test_seeds]
            planned = self.sweep.plan_more(jobs, [base + rank * k + j for j in range(k)])
            run = TrialRun(number=t.number, trial_id=t._trial_id, params=dict(t.params), test=True,
                           cells=[TrialCell(seed=s, cell=c) for s, c in zip(self.test_seeds, planned)])
            self._track(run)
            runs.append(run)
        self.say(f"[sds] re-running the best {len(runs)} point(s) on test seeds {self.test_seeds}: trials "
                 + ", ".join(str(r.number) for r in runs))
        while not all(r.terminal for r in runs):
            self.sup.poll()
        record = dict(self.study.user_attrs.get("sds_test") or {})
        for r in runs:
            per_seed = r.seed_values(self.objective.paths)
            record[str(r.number)] = {"seeds": list(self.test_seeds), "values": per_seed,
                                     "spread": [spread(v) for v in per_seed],
                                     "cells": [_cell_doc(tc, self.sweep) for tc in r.cells]}
        self.study.set_user_attr("sds_test", record)

    def _open(self) -> list[TrialRun]:
        return [r for r in self.runs.values() if r.told is None]

    def _top_up(self) -> None:
        """Ask while the total is not reached, no cell waits for a slot (a freed slot is refilled
        from the queue at once) and fewer than n_jobs trials are in flight."""
        while not self.sup.queue and (self.max_running is None or len(self._open()) < self.max_running):
            with self.lock:
                trials = self.study.get_trials(deepcopy=False)
                if len(trials) >= self.n_trials:
                    return
                self.reseed(len(trials))
                trial = self.study.ask(self.distributions)
            self.runs[trial.number] = self._start(trial.number, trial._trial_id, trial.params, new=True)
            self._tell_finished()  # every cell of it may be done already (the store had them)

    def _adopt(self) -> None:
        """Trials an earlier invocation left RUNNING (Ctrl-C, a SIGKILL, a lost node): their cells are
        planned again, so done ones are read, partial ones resume, live ones are watched."""
        waiting = list(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))
        for t in waiting:
            self.runs[t.number] = self._start(t.number, t._trial_id, t.params, new=False)
        if waiting:
            self.say(f"[sds] study {self.study.study_name}: adopted {len(waiting)} trial(s) in flight "
                     f"({', '.join(str(t.number) for t in waiting)})")
        self._tell_finished()

    def _start(self, number: int, trial_id: int, params: dict[str, Any], *, new: bool) -> TrialRun:
        """Plan a trial's cells (job numbers continue from the trial number), claim and track them."""
        k = len(self.seeds)
        jobs = [self.overrides_of(params) + ([f"seed={s}"] if s is not None else []) for s in self.seeds]
        planned = self.sweep.plan_more(jobs, [number * k + j for j in range(k)])
        run = TrialRun(number=number, trial_id=trial_id, params=dict(params),
                       cells=[TrialCell(seed=s, cell=c) for s, c in zip(self.seeds, planned)])
        for tc in run.cells:  # stopped by this study's pruner before an earlier invocation could tell it
            tc.pruned = _pruned_by(tc, self.study.study_name, number)
        self._track(run)
        if new:
            self.study._storage.set_trial_user_attr(trial_id, "sds_cells", [_cell_doc(tc, self.sweep) for tc in run.cells])
        verdicts = ", ".join(f"seed {tc.seed}: {tc.cell.verdict}" if tc.seed is not None else tc.cell.verdict
                             for tc in run.cells)
        self.say(f"[sds] trial {number} {_fmt_params(params)} ({verdicts})")
        return run

    def _track(self, run: TrialRun) -> None:
        """Claim and track the run's cells; a cell another trial of this invocation tracks is shared."""
        fresh = [tc.cell for tc in run.cells if tc.cell.spec.key not in self._cells and not tc.pruned]
        for t in self.sweep.claim(fresh):
            self._cells[t.key] = t
            self.sup.add(t)
        for tc in run.cells:
            tc.tracked = self._cells.get(tc.cell.spec.key)

    # --- pruning
    def _judge_running(self) -> None:
        if len(self.objective.directions) > 1 or not self.objective.prune_metric:
            return  # Optuna prunes single-objective studies only
        for run in self._open():
            if run.test or any(c.outcome == "pruned" for c in run.cells):
                continue
            if any(c.tracked is None or c.tracked.watch_only for c in run.cells):
                continue  # another invocation runs it: it judges it
            self._report(run)

    def _report(self, run: TrialRun) -> None:
        """Report each new rung and ask the pruner after each one, as a training loop would: a poll may
        bring several rungs, and ASHA's rungs must be judged at their own steps, not at the newest."""
        o = self.objective
        trial = optuna.trial.Trial(self.study, run.trial_id)
        cost: tuple[int | None, bool] | None = None  # (cost warm-up, newest cost far above): read once a call
        for step, value in aligned(run.curves(o.prune_metric or ""), o.how):
            if step <= run.reported_step:
                continue
            trial.report(value, step)
            run.reported_step = step
            if step < o.warmup_steps:
                continue
            if trial.should_prune():
                self._prune(run, f"{o.prune_metric} {value:.4g} at env step {step}: the pruner stopped it")
                return
            cost = cost if cost is not None else self._cost_far_above(run)
            warmup, far_above = cost
            if far_above and warmup is not None and step >= warmup:
                self._prune(run, f"cost above {o.cost_limit} x (1 + {o.cost_slack}) after the cost warm-up")
                return

    def _cost_far_above(self, run: TrialRun) -> tuple[int | None, bool]:
        """(the env step cost pruning waits for, whether the seeds' newest training cost is above
        limit x (1 + cost_slack)); (None, False) without a limit or a known warm-up."""
        o = self.objective
        warmup = o.cost_warmup_steps if o.cost_warmup_steps is not None else run.half_budget()
        if o.cost_limit is None or warmup is None or not o.cost_curve:
            return None, False
        curve = aligned(run.curves(o.cost_curve), o.how)
        return warmup, bool(curve) and curve[-1][1] > o.cost_limit * (1 + o.cost_slack)

    def _prune(self, run: TrialRun, why: str) -> None:
        note = {"pruned_at": run.reported_step, "why": why,
                "pruned_by": {"study": self.study.study_name, "trial": run.number}}
        for c in run.cells:
            if c.tracked is not None and c.tracked.result is None:
                self.sup.prune(c.tracked, note)
        run.extra["pruned_at"] = run.reported_step
        self.say(f"[sds] trial {run.number} pruned at env step {run.reported_step}: {why}")

    # --- telling
    def _tell_finished(self) -> None:
        for run in self._open():
            if run.terminal:
                self._tell(run)

    def _tell(self, run: TrialRun) -> None:
        """Tell a trial once, under the study's lock: another invocation watching the same cells may
        have told it first (then its record stands)."""
        with self.lock:
            frozen = self.study._storage.get_trial(run.trial_id)
            if frozen.state.is_finished():
                run.told = frozen.state.name
                return
            self._tell_unlocked(run)

    def _tell_unlocked(self, run: TrialRun) -> None:
        o = self.objective
        storage, tid = self.study._storage, run.trial_id
        per_seed = run.seed_values(o.paths)
        spreads = [spread(vs) for vs in per_seed]
        storage.set_trial_user_attr(tid, "sds_seed_values", per_seed)
        storage.set_trial_user_attr(tid, "sds_spread", spreads)
        storage.set_trial_user_attr(tid, "sds_device_hours", run.device_hours())
        state, values = self._state_and_values(run, per_seed)
        if o.cost_path is not None and o.cost_limit is not None:
            cost = list(run.seed_values([o.cost_path])[0])
            mean_cost = aggregate(cost, "mean")
            storage.set_trial_user_attr(tid, "sds_cost", {"mean": mean_cost, "values": cost, "limit": o.cost_limit,
                                                          "metric": o.cost_path})
            if mean_cost is not None:
                optuna.trial.Trial(self.study, tid).set_constraint("cost", mean_cost - o.cost_limit)
        if state == TrialState.PRUNED:
            storage.set_trial_user_attr(tid, "sds_pruned_at", run.extra.get("pruned_at", run.reported_step))
        self.study.tell(tid, values, state=state, skip_if_finished=True)
        run.told = state.name
        self.say(f"[sds] trial {run.number}: {state.name.lower()}"
                 + (f", value {_fmt_values(values)} over {spreads[0]['n']} seed(s)" if values is not None else ""))

    def _missing_objective(self, run: TrialRun) -> None:
        """A done cell whose result lacks the objective: an app's return value is known only once it
        ran, so this is where a misnamed objective is caught. The study stops here, loudly (its cells
        in flight run on; the same command, with the objective fixed, continues the study)."""
        res = next((c.result() for c in run.cells if c.outcome == "done"), None)
        wanted = [p for p in self.objective.paths if p is not None] or ["<the return value, as a number>"]
        raise SearchError(f"hydra.sweeper.objective={wanted}: the task never produces it: trial {run.number}'s cell "
                          f"{run.cells[0].cell.label} returned {str(res)[:200]} (values: {_result_keys(res)[:20]}). "
                          f"Fix: hydra.sweeper.objective=<one of those> with hydra.sweeper.new_study=true (the objective is part "
                          f"of the study), or return it from the task function")

    def _state_and_values(self, run: TrialRun, per_seed: list[list[float | None]]) -> tuple[TrialState, Any]:
        outcomes = [c.outcome for c in run.cells]
        if "pruned" in outcomes:
            return TrialState.PRUNED, None
        values = [aggregate(vs, self.objective.how) for vs in per_seed]
        if "failed" in outcomes:
            return TrialState.FAIL, None
        if any(v is None for v in values):
            self._missing_objective(run)
            return TrialState.FAIL, None
        return TrialState.COMPLETE, values if len(values) > 1 else values[0]


def _result_keys(result: Any, prefix: str = "") -> list[str]:
    if not isinstance(result, dict):
        return [prefix or "<the value itself>"] if isinstance(result, (int, float)) else []
    return [k for key, v in result.items() for k in _result_keys(v, f"{prefix}{key}.")] or [prefix.rstrip(".")]


def _cell_doc(tc: TrialCell, sweep: Sweep) -> dict[str, Any]:
    rd = tc.cell.run_dir.path
    try:
        rel = str(rd.relative_to(sweep.store.root))
    except ValueError:
        rel = str(rd)
    return {"seed": tc.seed, "label": tc.cell.spec.label, "hash": tc.cell.spec.hash, "run_dir": rel,
            "overrides": list(tc.cell.overrides)}


def _ranked_feasible(study: optuna.Study) -> list[Any]:
    """Complete feasible trials, best first (the first direction; a multi-objective study's Pareto
    front first)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(v <= 0 for v in (t.constraints or {}).values())]
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        return sorted(done, key=lambda t: (t.number not in front, t.number))
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    return sorted(done, key=lambda t: sign * float(t.value))


def _pruned_by(tc: TrialCell, study: str, number: int) -> bool:
    if not tc.cell.run_dir.state_path.exists():
        return False
    attempts = tc.cell.run_dir.read_state().get("attempts") or []
    note = (attempts[-1].get("pruned_by") if attempts and attempts[-1].get("outcome") == "pruned" else None) or {}
    return note.get("study") == study and note.get("trial") == number


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fmt_values(values: Any) -> str:
    vs = values if isinstance(values, Sequence) else [values]
    return ", ".join(f"{v:.4g}" for v in vs)

