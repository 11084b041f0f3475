"""Run identity: which cell a composed Hydra config is, independent of time and job numbers.

A cell's identity is (label, seed, hash8) where hash8 is a short hash of the normalized resolved
*run config*: the composed config minus the keys that do not change what is computed (Hydra itself,
the `sds` settings node, where the store is, sweep and report settings, logging and checkpoint
cadences, and any key the app lists in `sds.identity_exclude`). Any Hydra app has one: the label is
the `config` group choice (the built-in app) or the app's job name, followed by the overrides the
sweep itself varies (`v2_baseline,agent.lr=0.001`); the seed is the top-level `seed` when the app has
one (None otherwise). For any app but this package's own tasks the hash covers which app it is too
(core/app_identity.py). Which code computes a cell is recorded beside its identity, never in it
(core/code_fingerprint.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from safedreamer_sweep.core.app_identity import app_identity
from safedreamer_sweep.core.code_fingerprint import code_fingerprint, code_version, package_versions

# Top-level keys and dotted keys that never enter the identity hash.
IDENTITY_EXCLUDE: tuple[str, ...] = (
    "hydra",
    "sds",  # the app's settings for this package (identity_exclude, ...), never what it computes
    "store",
    "sweep",
    "report",
    "cost",
    "trainer.log_every_steps",
    "trainer.checkpoint_every_steps",
    "trainer.keep_checkpoints",
    "trainer.heartbeat_every_s",
    # external tasks: how the adapter watches a script, not what the script trains
    "task.probe_every_s",
    "task.stop_grace_s",
    "task.stderr_tail_lines",
    "task.startup_s",
    "task.description",
    "task.total_steps_of",  # a consistency check of two budgets (tasks/external/validate.py), not a budget itself
    "task.code",  # which files are the task's code: their content is the code fingerprint, not identity
)

def _normalize(x: Any) -> Any:
    """Make equal configs hash equal: integral floats become ints, mappings are sorted on dump."""
    if isinstance(x, dict):
        return {str(k): _normalize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_normalize(v) for v in x]
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    return x


def _drop(d: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = d
    for p in parents:
        node = node.get(p)
        if not isinstance(node, dict):
            return
    node.pop(last, None)


def resolved_without_hydra(cfg: DictConfig) -> dict:
    """The composed config resolved into plain containers, minus Hydra's own `hydra` node."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def declared_exclusions(container: dict) -> tuple[str, ...]:
    """The dotted keys an app declares as not part of a cell's identity: `sds.identity_exclude`."""
    declared = (container.get("sds") or {}).get("identity_exclude") or []
    if isinstance(declared, str) or not all(isinstance(k, str) for k in declared):
        raise ValueError(f"sds.identity_exclude={declared!r} must be a list of dotted keys, "
                         f"e.g. sds.identity_exclude=[log_every,data.num_workers]")
    return tuple(declared)


def identity_excluded(key: str, excluded: tuple[str, ...]) -> bool:
    """`key` (dotted) is one of `excluded` or below one of them."""
    return any(key == e or key.startswith(e + ".") for e in excluded)


def run_config(cfg: DictConfig | dict) -> dict:
    """The resolved config that defines what a cell computes (identity-relevant keys only)."""
    if isinstance(cfg, DictConfig):
        container = resolved_without_hydra(cfg)
    else:
        container = json.loads(json.dumps(cfg))
    assert isinstance(container, dict)
    for key in (*declared_exclusions(container), *IDENTITY_EXCLUDE):
        _drop(container, key)
    return _normalize(container)


def config_hash(run_cfg: dict) -> str:
    blob = json.dumps(run_cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def identity_hash(run_cfg: dict, app: str | None = None) -> str:
    """The cell's hash8: of its run config, and for any app other than this package's own tasks, of
    which app it is too (`app_identity`), so two scripts with equal job names and configs sharing
    a store are two cells."""
    return config_hash(run_cfg) if app is None else config_hash({"app": app, "run_config": run_cfg})


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_keys(a: dict, b: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two (nested) configs, with both values."""
    fa, fb = flatten(a), flatten(b)
    missing = object()
    out = {}
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, missing), fb.get(k, missing)
        if va != vb:
            out[k] = (None if va is missing else va, None if vb is missing else vb)
    return out


# What marks a cell finished besides state phase `done`: "eval" (the package's own tasks write
# eval/id.json and eval/ood.json) or "return" (any other task function: its return value is stored).
_DONE_WHEN = ("eval", "return")


@dataclass(frozen=True)
class RunSpec:
    """One cell of the matrix: its identity and the resolved config it computes. `config` is the
    cell's label (a folder name in the store), `seed` None for an app without a top-level seed."""

    config: str
    seed: int | None
    hash: str
    run_config: dict = field(repr=False, compare=False)
    overrides: tuple[str, ...] = field(default=(), compare=False)
    done_when: str = field(default="eval", compare=False)
    # The code that computes the cell (code_fingerprint), and what a run dir holding work by other
    # code does when this spec is written: refuse (a cell process never reruns or mixes on its own),
    # or the sweep's sweep.code_change, which the planner sets on the cells it plans.
    code: dict | None = field(default=None, repr=False, compare=False)
    code_change: str = field(default="refuse", compare=False)
    # the app's primary config (hydra.job.config_name): two primary configs under one label are two
    # experiments, not a conflict (recorded in spec.json; not part of the identity)
    primary: str | None = field(default=None, compare=False)
    # which app (app_identity) for any app but this package's own tasks: part of the hash, in spec.json
    app: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return self.config if self.seed is None else f"{self.config} seed {self.seed}"

    @property
    def key(self) -> str:
        return f"{self.config}/{self.hash}" if self.seed is None else f"{self.config}/seed_{self.seed}/{self.hash}"

    @classmethod
    def from_cfg(cls, cfg: DictConfig, config_name: str | None = None, overrides: tuple[str, ...] = ()) -> RunSpec:
        """Build the spec of a composed config. The config name is the exact option chosen in the
        `config` group (never a substring match on a path or a label) unless given (any other app:
        its label, see cell_label). A top-level `seed` must be an integer; an app without one has
        seed None."""
        if config_name is None:
            config_name = config_choice(cfg)
        rc = run_config(cfg)
        seed = _check_seed(rc["seed"]) if "seed" in rc else None
        primary = OmegaConf.select(cfg, "hydra.job.config_name", default=None) if "hydra" in cfg else None
        done_when = _done_when_of(rc)
        app = app_of(cfg) if done_when == "return" else None  # any app: which one is part of its identity
        return cls(config=config_name, seed=seed, hash=identity_hash(rc, app), run_config=rc,
                   overrides=tuple(overrides), done_when=done_when, code=code_fingerprint(cfg),
                   primary=None if primary is None else str(primary), app=app)

    def spec_document(self) -> dict:
        """What spec.json holds (`code_change` is not written: RunDir.ensure_spec applies it)."""
        return {
            "config": self.config,
            "seed": self.seed,
            "hash": self.hash,
            "done_when": self.done_when,
            "run_config": self.run_config,
            "overrides": list(self.overrides),
            "code_version": code_version(),
            "code": self.code,
            "code_change": self.code_change,
            **({"primary_config": self.primary} if self.primary else {}),
            **({"app": self.app} if self.app else {}),
            "packages": package_versions(),
            "python": platform.python_version(),
        }


def _check_seed(value: Any) -> int:
    """The seed as an int; ValueError naming the value and the fix for anything that is not an
    integer (a float such as 1.5 or 1.0, a bool, a string): int() would silently make a second
    identity for the same seed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"seed={value!r} is not an integer ({type(value).__name__}); seeds are integers, "
                     f"e.g. seed=0,1,2 or seed=range(0,10)")


def app_of(cfg: DictConfig) -> str | None:
    """Which app the cells of a composed config belong to (part of their hash): `named:<sds.app>`, else
    where its main script is (core/app_identity.py); None for this package's own tasks."""
    task = OmegaConf.select(cfg, "task", default=None)
    if isinstance(task, DictConfig) and task.get("kind", "builtin") in ("builtin", "external"):
        return None
    named = OmegaConf.select(cfg, "sds.app", default=None) if "sds" in cfg else None
    return f"named:{named}" if named else app_identity()


def _done_when_of(run_cfg: dict) -> str:
    """"eval" for the package's own tasks (`task.kind` builtin or external: they write eval/id.json
    and eval/ood.json), "return" for any other app (done = its task function returned)."""
    task = run_cfg.get("task")
    return "eval" if isinstance(task, dict) and task.get("kind", "builtin") in ("builtin", "external") else "return"


def _label_value(text: str) -> str:
    """An override value made safe as part of a folder name (`/` would nest folders)."""
    return text.replace("/", "%2F").replace("\\", "%5C")


def cell_label(base: str, swept: list[tuple[str, str]], limit: int = 120) -> str:
    """`base` followed by the swept overrides that are not the seed or the base itself:
    `v2_baseline,agent.lr=0.001`. Long labels keep their start and a hash of the rest."""
    label = ",".join([_label_value(base), *(f"{k}={_label_value(v)}" for k, v in swept)])
    if len(label) > limit:
        label = label[: limit - 9] + "~" + hashlib.sha256(label.encode()).hexdigest()[:8]
    return label


def config_choice(cfg: DictConfig) -> str:
    """The option selected in the `config` group, from Hydra's runtime choices."""
    try:
        choice = cfg.hydra.runtime.choices.get("config")  # type: ignore[union-attr]
    except (AttributeError, KeyError, OmegaConfBaseException):  # composed without hydra keys
        choice = None
    if choice is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            choice = HydraConfig.get().runtime.choices.get("config")
        except ValueError:  # HydraConfig was not set: not running under Hydra
            choice = None
    if not choice:
        raise ValueError("cannot tell which `config` was chosen: compose through Hydra with a `config` group")
    return str(choice)
