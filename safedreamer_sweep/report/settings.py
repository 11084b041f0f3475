"""Report settings: the `report:` block of conf/sweep.yaml (plus `cost:` and `sweep.ablation_knobs`).

The defaults below are the same as conf/sweep.yaml's, so `build_report(store)` without a config
behaves like `safedreamer-sweep report STORE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Where the shipped example template lives (a source checkout); relative template paths are looked
# up in the current directory first, then here.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DecisionRule:
    """The explicit rule a config must pass to be recommended over the baseline."""

    cost_metric: str = "ood_cost"     # the cost that must stay below the cost limit
    cost_bound: str = "ci_high"       # "ci_high" (upper CI bound below the limit) or "mean"
    return_metric: str = "id_return"  # the return compared with the baseline
    min_return_gain: float = 0.0      # the difference's CI lower bound must exceed this


@dataclass(frozen=True)
class ReportSettings:
    out: str | None = None
    min_seeds: int = 5
    baseline: str = "v2_baseline"
    templates: tuple[str, ...] = ("templates/slides.md.j2",)
    confidence: float = 0.95
    bimodal_gap_ratio: float = 2.0
    bimodal_metrics: tuple[str, ...] = ("id_return", "ood_return", "final_train_return")
    power: float = 0.8
    figures: bool = True
    rule: DecisionRule = field(default_factory=DecisionRule)
    # From other blocks of the composed config.
    per_gpu_hour: float | None = None
    currency: str = "RMB"
    ablation_knobs: tuple[str, ...] = ()

    @classmethod
    def from_cfg(cls, cfg: Any = None) -> ReportSettings:
        """Settings from a composed config (DictConfig or dict with `report`, `cost`, `sweep` keys),
        or from a bare `report` block; None gives the defaults. Unknown `report` keys are an error
        naming the key, so a typo never silently falls back to a default."""
        if cfg is None:
            cfg = _project_defaults()
            if cfg is None:
                return cls()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                # Only our blocks: resolving the whole composed config would touch `hydra.*`
                # interpolations that exist only inside a running Hydra app.
                blocks = [k for k in ("report", "cost", "sweep", "store") if k in cfg]
                cfg = ({k: OmegaConf.to_container(cfg[k], resolve=True) for k in blocks} if blocks
                       else OmegaConf.to_container(cfg, resolve=True))
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        cfg = dict(cfg)
        composed = any(k in cfg for k in ("report", "cost", "sweep", "store"))
        report = dict((cfg.get("report") if composed else cfg) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(report) - known)
        if unknown:
            raise ValueError(f"report: unknown key(s) {unknown}; known keys: {sorted(known)}. "
                             f"Fix the `report:` block of conf/sweep.yaml.")
        kw: dict[str, Any] = {k: v for k, v in report.items() if v is not None or k == "out"}
        if "rule" in kw:
            rule = dict(kw["rule"])
            rknown = {f.name for f in fields(DecisionRule)}
            bad = sorted(set(rule) - rknown)
            if bad:
                raise ValueError(f"report.rule: unknown key(s) {bad}; known keys: {sorted(rknown)}.")
            if rule.get("cost_bound", "ci_high") not in ("ci_high", "mean"):
                raise ValueError(f"report.rule.cost_bound must be 'ci_high' or 'mean', got {rule['cost_bound']!r}")
            kw["rule"] = DecisionRule(**rule)
        for k in ("templates", "bimodal_metrics", "ablation_knobs"):
            if k in kw:
                kw[k] = tuple(kw[k] or ())
        cost = cfg.get("cost") or {}
        if cost.get("per_gpu_hour") is not None:
            kw["per_gpu_hour"] = float(cost["per_gpu_hour"])
        if cost.get("currency"):
            kw["currency"] = str(cost["currency"])
        sweep = cfg.get("sweep") or {}
        if sweep.get("ablation_knobs"):
            kw["ablation_knobs"] = tuple(sweep["ablation_knobs"])
        return cls(**kw)


def _project_defaults() -> dict | None:
    """The `report`, `cost` and `sweep` blocks of the project's conf/sweep.yaml, when this is a source
    checkout (so `safedreamer-sweep report STORE` uses the same ablation knobs and rule as the sweep)."""
    path = PROJECT_ROOT / "conf" / "sweep.yaml"
    if not path.is_file():
        return None
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        return None
    # resolve=False: the other blocks of sweep.yaml interpolate Hydra/env state that does not exist here.
    return {k: OmegaConf.to_container(raw[k], resolve=False) for k in ("report", "cost", "sweep") if k in raw}
