"""The caveats: what the report says before any number (holes, too few seeds, confounds, bimodal
seeds, OOD proxies, resumed cells, stale evaluations, mixed code), as pure functions over the
frames and plain data (report/caveats.py reads from the store what the frames do not hold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from safedreamer_sweep.core.confounds import find_confounds, format_confounds
from safedreamer_sweep.core.identity import RunSpec
from safedreamer_sweep.report.analysis import stats
from safedreamer_sweep.report.analysis.aggregate import Frames
from safedreamer_sweep.report.analysis.tables import complete_seeds
from safedreamer_sweep.report.settings import ReportSettings


@dataclass
class Caveat:
    kind: str   # holes | pruned | seeds | baseline | confound | bimodal | ood_proxy | identity | cost_limit |
                # resume | code | stale_eval | policy
    text: str


@dataclass
class Resumed:
    """What state.json records of one cell's resumes (`resumes`, written by the external task adapter)."""

    config: str
    seed: Any
    resumes: list[dict]


def collect_caveats(frames: Frames, cov: pd.DataFrame, settings: ReportSettings,
                    resumed: list[Resumed]) -> list[Caveat]:
    """Every caveat, in the order the report shows them (before any result). `resumed`: the
    resumed cells' records (report/caveats.py reads them from their run directories)."""
    out = _coverage_caveats(frames, cov, settings)
    out.extend(Caveat("confound", text) for text in _find_config_confounds(frames, settings))
    out.extend(_bimodal_caveats(frames, settings))
    out.extend(_ood_proxy_caveats(frames))
    out.extend(_identity_caveats(frames))
    out.extend(Caveat("resume", text) for text in resume_texts(resumed))
    if len(frames.cost_limits) > 1:
        out.append(Caveat("cost_limit", f"evaluations used different cost limits {frames.cost_limits}; "
                                        f"violation rates are not comparable across them."))
    out.extend(_stale_eval_caveats(frames))
    out.extend(_policy_caveats(frames))
    code = _code_origin_caveat(frames)  # first: numbers from different code are not one experiment
    return ([code] if code else []) + out


def _coverage_caveats(frames: Frames, cov: pd.DataFrame, settings: ReportSettings) -> list[Caveat]:
    """Holes, corrupt files, configs with too few complete seeds, and a baseline not in the matrix."""
    out: list[Caveat] = []
    bad = cov[~cov["status"].isin(("done", "pruned"))]
    if not len(frames.cells):
        out.append(Caveat("holes", "the store has no expected cells and no run directories: nothing to report."))
    pruned = _pruned_caveat(frames)
    if pruned:
        out.append(pruned)
    if len(bad):
        by_status = bad.groupby("status").size().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        cells = sorted({f"{r.config} seed {r.seed}" for r in bad.itertuples()})
        out.append(Caveat("holes", f"{len(bad)} of {len(cov)} expected parts (train / ID eval / OOD eval) are "
                                   f"not done ({summary}): {', '.join(cells)}."))
    for problem in frames.corrupt:
        out.append(Caveat("corrupt", problem))
    n_ok = complete_seeds(cov)
    for config in sorted(frames.cells["config"].unique()):
        n = int(n_ok.get(config, 0))
        if n < settings.min_seeds:
            out.append(Caveat("seeds", f"{config}: {n} complete seed(s), fewer than report.min_seeds="
                                       f"{settings.min_seeds}; its numbers cannot support a decision."))
    if len(frames.cells) and settings.baseline not in set(frames.cells["config"]):
        out.append(Caveat("baseline", f"the baseline {settings.baseline!r} (report.baseline) is not in the "
                                      f"matrix; no ablation comparison is possible. Fix: set report.baseline "
                                      f"to one of {sorted(frames.cells['config'].unique())}."))
    return out


def _pruned_caveat(frames: Frames) -> Caveat | None:
    """The cells a study's pruner stopped: holes in the matrix, not failures (stopped early on purpose)."""
    cells = frames.cells
    pruned = cells[cells["train_status"] == "pruned"] if len(cells) else cells
    if not len(pruned):
        return None
    shown = [f"{r.config} seed {r.seed} ({r.last_evidence.split(';')[0] if isinstance(r.last_evidence, str) else 'pruned'})"
             for r in pruned.itertuples()]
    return Caveat("pruned", f"{len(pruned)} cell(s) were pruned by a study (stopped early on purpose, checkpoint "
                            f"kept; not failed): {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}. They are holes "
                            f"here: their numbers are missing, not bad; a plan that asks for them again resumes them.")


def _bimodal_caveats(frames: Frames, settings: ReportSettings) -> list[Caveat]:
    """Configs whose seeds split into two groups on a metric of report.bimodal_metrics."""
    out = []
    for metric in settings.bimodal_metrics:
        if metric not in frames.seeds:
            continue
        for config, g in frames.seeds.groupby("config", sort=True):
            split = stats.bimodal_split(g[metric].to_numpy(dtype=float), settings.bimodal_gap_ratio)
            if split:
                lo_seeds = sorted(int(s) for s, v in zip(g["seed"], g[metric]) if v <= split[0])
                hi_seeds = sorted(int(s) for s, v in zip(g["seed"], g[metric]) if v >= split[1])
                out.append(Caveat("bimodal", f"{config}: {metric} splits into two groups of seeds, "
                                             f"{lo_seeds} (<= {split[0]:.2f}) and {hi_seeds} (>= {split[1]:.2f}); "
                                             f"a mean over bifurcating seeds describes neither group "
                                             f"(see per_seed.png)."))
    return out


def _ood_proxy_caveats(frames: Frames) -> list[Caveat]:
    """What the OOD evaluations declared OOD to be, or that none declared it."""
    out = [Caveat("ood_proxy", f"OOD is a proxy: {proxy}") for proxy in frames.ood_proxy]
    if len(frames.cells) and not frames.ood_proxy:
        out.append(Caveat("ood_proxy", "no OOD evaluation declared what its OOD proxy is (eval/ood.json has no "
                                       "ood_proxy); read OOD numbers as 'a different environment', no more."))
    return out


def _identity_caveats(frames: Frames) -> list[Caveat]:
    """Run directories of other identities of matrix cells, left out of the tables."""
    if not frames.extra_run_dirs:
        return []
    return [Caveat("identity", f"{len(frames.extra_run_dirs)} run dir(s) hold other identities of matrix "
                               f"cells (an older resolved config) and are not in the tables: "
                               f"{', '.join(frames.extra_run_dirs[:5])}"
                               f"{' ...' if len(frames.extra_run_dirs) > 5 else ''}")]


def _code_label(spec: dict) -> str:
    """`3f2a9c1b0d4e (commit 97c8f4e)`, or `A (...) then B (...)` for a cell continued under accepted code."""
    from safedreamer_sweep.core.code_fingerprint import describe_code

    chain = [spec.get("code"), *(spec.get("code_accepted") or [])]
    return " then ".join(describe_code(c) for c in chain)


def _code_origin_caveat(frames: Frames) -> Caveat | None:
    """Which cells came from which code, when the cells in the tables were not all computed by the
    same code (fingerprints in spec.json; sweep.code_change=accept keeps such cells)."""
    groups: dict[str, list[str]] = {}
    for (config, seed), spec in sorted(frames.specs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if spec and "run_config" in spec:
            groups.setdefault(_code_label(spec), []).append(f"{config} seed {seed}")
    if len(groups) < 2:
        return None
    parts = [f"code {label}: {', '.join(cells)}" for label, cells in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return Caveat("code", f"the cells came from {len(groups)} different versions of the code that trains them "
                          f"(accepted with sweep.code_change=accept, or recorded before code fingerprints), so "
                          f"differences between them may be the code's, not the configs': " + "; ".join(parts) + ".")


def _stale_eval_caveats(frames: Frames) -> list[Caveat]:
    """Cells whose evaluation ran on a checkpoint older than their trained steps."""
    from safedreamer_sweep.sweep.observe import stale_evaluations

    es, cells = frames.eval_status, frames.cells
    if not len(es) or "trained_steps" not in cells:
        return []
    trained = {(r.config, r.seed): r.trained_steps for r in cells.itertuples()}
    out: list[Caveat] = []
    for (config, seed), g in es.groupby(["config", "seed"], sort=True):
        steps = {str(r.kind): (None if pd.isna(r.checkpoint_step) else int(r.checkpoint_step)) for r in g.itertuples()}
        t = trained.get((config, seed))
        text = stale_evaluations(steps, None if t is None or pd.isna(t) else int(t))
        if text:
            out.append(Caveat("stale_eval", f"{config} seed {seed}: {text}; its numbers are those of an older "
                                            f"policy (the newest checkpoint was unreadable, or the script saves on "
                                            f"a timer). Fix: evaluate it again from its newest checkpoint."))
    return out


def _policy_caveats(frames: Frames) -> list[Caveat]:
    """The built-in trainer enforces the cost limit on the policy it trains, evaluation runs another."""
    kinds = {((spec.get("run_config") or {}).get("task") or {}).get("kind") for spec in frames.specs.values() if spec}
    if "builtin" not in kinds:
        return []
    return [Caveat("policy", "the cost limit was enforced during training on the stochastic policy (sampled "
                             "actions: the Lagrange multiplier and the certified step see those episodes' costs), "
                             "while every evaluation here runs the deterministic policy (the mean action), whose "
                             "cost can be lower or higher: read the cost numbers as the deterministic policy's.")]


def resume_texts(resumed: list[Resumed]) -> list[str]:
    """What each resumed cell's resume did not restore (e.g. SafeDreamer's replay buffer and
    PID-Lagrangian state), and the frames it trained twice. A resumed run is not the same
    experiment as an uninterrupted one."""
    out = []
    for cell in resumed:
        for e in cell.resumes:
            missing = ", ".join(e.get("not_restored") or []) or "nothing declared"
            out.append(f"{cell.config} seed {cell.seed}: attempt {e.get('attempt')} resumed from env step "
                       f"{e.get('from_step')} (the previous attempt had reached {e.get('reached')}: "
                       f"{e.get('lost_frames')} frames trained again); the resume did not restore: {missing}.")
    return out


def _find_config_confounds(frames: Frames, settings: ReportSettings) -> list[str]:
    """Keys of the resolved run configs (spec.json) that differ between configs beyond the
    declared ablation knobs (sweep.ablation_knobs), by safedreamer_sweep.core.confounds.find_confounds
    (the same check the launcher runs before a sweep; here it covers what was actually run)."""
    specs = [RunSpec(config=c, seed=s, hash=str(sp.get("hash")), run_config=sp["run_config"])
             for (c, s), sp in sorted(frames.specs.items()) if sp.get("run_config")]
    knobs = list(settings.ablation_knobs)
    knob_text = ("declared ablation knobs: " + ", ".join(knobs)) if knobs else "no ablation knobs declared"
    return [f"{f.key} differs between configs beyond the ablation knobs ({knob_text}):"
            f"{format_confounds([f]).split(':', 1)[1]}" for f in find_confounds(specs, knobs)]
