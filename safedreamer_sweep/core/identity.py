"""Run identity: which cell a composed Hydra config is, independent of time and job numbers.

A cell's identity is (label, seed, hash8) where hash8 is a short hash of the normalized resolved
*run config*: the composed config minus the keys that do not change what is computed (Hydra itself,
the `sds` settings node, where the store is, sweep and report settings, logging and checkpoint
cadences, and any key the app lists in `sds.identity_exclude`). Any Hydra app has one: the label is
the `config` group choice (the built-in app) or the app's job name, followed by the overrides the
sweep itself varies (`v2_baseline,agent.lr=0.001`); the seed is the top-level `seed` when the app has
one (None otherwise).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
    "task.total_steps_of",  # a consistency check of two budgets (tasks/external.py), not a budget itself
    "task.code",  # which files are the task's code: their content is the code fingerprint, not identity
)

PACKAGES = ("safedreamer-sweep", "jax", "jaxlib", "numpy", "safety-gymnasium", "gymnasium", "mujoco",
            "hydra-core", "omegaconf", "submitit", "pandas")


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


# ----------------------------------------------------------------------------- which app
# An app's cells are told apart from another app's by where its main script is, not by what the script
# holds (that is its code, sds.code's fingerprint: an edited script is the same app, and the code-change
# policy decides). Inside a git repository: the repository's first commit and the script's path in it,
# the same in every clone on every host; outside git: the script's absolute path. `sds.app` names the
# app explicitly instead (e.g. a script that moves between machines outside git).

_APP_CACHE: dict[str, str] = {}


def main_script() -> str | None:
    """The file the running Python was started with (`python train.py`, `python -m pkg.train`): the
    same in the launching process for every launcher, and in an in-process job."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else None)
    return str(Path(path).resolve()) if path else None


def app_identity(script: str | None = None) -> str:
    """`git:<first commit>:<path in the repo>`, else `path:<absolute path>` of the app's main script
    (`main_script()` unless given); cached per script."""
    script = script or main_script() or "<interactive>"
    if script not in _APP_CACHE:
        where = f"path:{script}"
        folder = Path(script).parent
        try:
            top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, timeout=5, check=False)
            roots = subprocess.run(["git", "-C", str(folder), "rev-list", "--max-parents=0", "HEAD"],
                                   capture_output=True, text=True, timeout=5, check=False)
            if top.returncode == 0 and roots.returncode == 0 and roots.stdout.split():
                rel = Path(script).relative_to(Path(top.stdout.strip()).resolve())
                where = f"git:{min(roots.stdout.split())[:12]}:{rel.as_posix()}"
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        _APP_CACHE[script] = where
    return _APP_CACHE[script]


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
DONE_WHEN = ("eval", "return")


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
        seed = check_seed(rc["seed"]) if "seed" in rc else None
        primary = OmegaConf.select(cfg, "hydra.job.config_name", default=None) if "hydra" in cfg else None
        done_when = done_when_of(rc)
        app = None
        if done_when == "return":  # any app: which one is part of its cells' identity
            named = OmegaConf.select(cfg, "sds.app", default=None) if "sds" in cfg else None
            app = f"named:{named}" if named else app_identity()
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


def check_seed(value: Any) -> int:
    """The seed as an int; ValueError naming the value and the fix for anything that is not an
    integer (a float such as 1.5 or 1.0, a bool, a string): int() would silently make a second
    identity for the same seed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"seed={value!r} is not an integer ({type(value).__name__}); seeds are integers, "
                     f"e.g. seed=0,1,2 or seed=range(0,10)")


def done_when_of(run_cfg: dict) -> str:
    """"eval" for the package's own tasks (`task.kind` builtin or external: they write eval/id.json
    and eval/ood.json), "return" for any other app (done = its task function returned)."""
    task = run_cfg.get("task")
    return "eval" if isinstance(task, dict) and task.get("kind", "builtin") in ("builtin", "external") else "return"


def label_value(text: str) -> str:
    """An override value made safe as part of a folder name (`/` would nest folders)."""
    return text.replace("/", "%2F").replace("\\", "%5C")


def cell_label(base: str, swept: list[tuple[str, str]], limit: int = 120) -> str:
    """`base` followed by the swept overrides that are not the seed or the base itself:
    `v2_baseline,agent.lr=0.001`. Long labels keep their start and a hash of the rest."""
    label = ",".join([label_value(base), *(f"{k}={label_value(v)}" for k, v in swept)])
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


# ----------------------------------------------------------------------------- code fingerprint
# Which code computed a cell. The fingerprint is a content hash of the files that train and
# evaluate it, not the git commit: it stays the same across commits that touch only tests, docs, the
# launcher or the report, and is the same in a git checkout and in an installed (non-git) copy of
# the same code. The git commit, and whether those files differ from it, are recorded beside it for
# people. Cells done under another fingerprint are a verdict of their own at plan time
# (sweep.code_change: refuse, rerun or accept; safedreamer_sweep/sweep/plan.py).

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # safedreamer_sweep/
# The built-in task's training code: the trainer and its evaluation (policy, envs, budget included).
BUILTIN_CODE = ("trainer/*.py",)
CODE_CHANGE = ("refuse", "rerun", "accept")


class CodeFilesError(ValueError):
    """A task's declared code (task.code / sds.code) cannot be read. Names the glob and the fix."""


MAIN_SCRIPT = "main script"  # what an app's code is when it declares none (sds.code)


def declared_code(cfg: DictConfig | dict) -> tuple[str, list[str]] | None:
    """(what, globs) of the code a cell runs: the package's trainer for the built-in task, the
    task's `task.code` for an external one, `sds.code` for any other app, and for an app that
    declares none, its main script (MAIN_SCRIPT: an edited script reruns its cells by default,
    sweep/plan.py). None when an external task declares none (its cells are then not compared)."""
    task = cfg.get("task") or {}
    kind = task.get("kind") if isinstance(task, (dict, DictConfig)) else None
    if kind == "builtin":
        return "built-in trainer", [f"{PACKAGE_ROOT.name}/{g}" for g in BUILTIN_CODE]
    declared = task.get("code") if kind == "external" else (cfg.get("sds") or {}).get("code")
    key = "task.code" if kind == "external" else "sds.code"
    if not declared and kind is None and (script := main_script()) and Path(script).is_file():
        return MAIN_SCRIPT, [script]
    if not declared:
        return None
    if isinstance(declared, str):
        declared = [declared]
    return key, [str(g) for g in declared]


def code_base_dir(cfg: DictConfig | dict) -> Path:
    """Where relative task.code globs start: task.cwd when it is a plain path, else the directory
    the sweep was launched from (where a relative command runs)."""
    cwd = (cfg.get("task") or {}).get("cwd") if isinstance(cfg.get("task"), (dict, DictConfig)) else None
    base = Path(str(cwd)).expanduser() if cwd and "{" not in str(cwd) else Path.cwd()
    return base if base.is_absolute() else Path.cwd() / base


def absolute_code_globs(cfg: DictConfig | dict) -> list[str] | None:
    """The declared code globs made absolute (the planner writes them back into the job's config, so a
    cell process started in another directory hashes the same files). None when none are declared."""
    found = declared_code(cfg)
    if found is None:
        return None
    if found[0] == "built-in trainer":
        return [str(PACKAGE_ROOT / g) for g in BUILTIN_CODE]
    base = code_base_dir(cfg)
    return [g if os.path.isabs(os.path.expanduser(g)) else str(base / g) for g in found[1]]


def _code_files(what: str, globs: list[str]) -> dict[str, os.stat_result]:
    """Every regular file the globs match (absolute path -> its stat), one stat call per file."""
    import glob as globlib
    import stat

    files: dict[str, os.stat_result] = {}
    for g in globs:
        hit = False
        for h in globlib.glob(os.path.expanduser(g), recursive=True):
            if "__pycache__" in h:
                continue
            try:
                st = os.stat(h)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files[os.path.abspath(h)] = st
                hit = True
        if not hit:
            raise CodeFilesError(f"{what}: {g!r} matches no file, so the cell's code cannot be fingerprinted. "
                                 f"Fix: point {what} at the files the task runs (globs relative to task.cwd or "
                                 f"to the directory the sweep is launched from, `**` recurses), or set it to []")
    return files


def _common_root(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path("/")


_CODE_CACHE: dict[tuple, dict] = {}


def code_fingerprint(cfg: DictConfig | dict) -> dict:
    """What spec.json records as `code`: {fingerprint, of, files, commit, uncommitted}. `fingerprint`
    (12 hex digits of the sha256 over every file's path relative to the files' common folder and its
    bytes) is what plans compare; None when the task declares no code. Cached per process against
    the files' sizes and modification times, so planning 10k cells hashes them once."""
    found = declared_code(cfg)
    if found is None:
        return {"fingerprint": None, "of": "not declared (task.code / sds.code)", "files": 0, "commit": None,
                "uncommitted": None}
    what, _ = found
    globs = absolute_code_globs(cfg) or []
    found_files = _code_files(what, globs)
    key = (what, tuple(globs), tuple((f, st.st_mtime_ns, st.st_size) for f, st in sorted(found_files.items())))
    if key not in _CODE_CACHE:
        files = [Path(f) for f in sorted(found_files)]
        root = _common_root(files)
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        commit, uncommitted = _git_state(root, files)
        _CODE_CACHE[key] = {"fingerprint": h.hexdigest()[:12], "of": f"{what}: {', '.join(found[1])}",
                            "files": len(files), "commit": commit, "uncommitted": uncommitted}
    return dict(_CODE_CACHE[key])


def _git_state(root: Path, files: list[Path]) -> tuple[str | None, bool | None]:
    """(short commit of the git checkout holding the files, whether any of them differs from it);
    (SDS_CODE_VERSION or None, None) outside git (an installed copy)."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        if rev.returncode == 0:
            diff = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *map(str, files)],
                                  capture_output=True, text=True, timeout=5, check=False)
            return rev.stdout.strip(), bool(diff.stdout.strip()) if diff.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("SDS_CODE_VERSION"), None


def implicit_code(code: dict | None) -> bool:
    """Whether `code` (a spec's) is an app's main script, taken because the app declares no code."""
    return str((code or {}).get("of") or "").startswith(MAIN_SCRIPT + ":")


def recorded_fingerprint(spec: dict) -> str | None:
    """The fingerprint of the code that last worked on a cell, from its spec.json: the newest
    accepted code change, else the code it was first run with (None: recorded before fingerprints)."""
    accepted = spec.get("code_accepted") or []
    if accepted:
        return accepted[-1].get("fingerprint")
    return (spec.get("code") or {}).get("fingerprint")


def describe_code(code: dict | None) -> str:
    """`3f2a9c1b0d4e (commit 97c8f4e + uncommitted changes)` for messages."""
    if not code or not code.get("fingerprint"):
        return "unknown (recorded before code fingerprints)"
    commit = code.get("commit")
    where = f"commit {commit}" if commit else "not a git checkout"
    return f"{code['fingerprint']} ({where}{' + uncommitted changes' if code.get('uncommitted') else ''})"


def code_version() -> str | None:
    """The package's git commit (`-dirty` with uncommitted changes), for people; None outside git."""
    root = PACKAGE_ROOT.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("SDS_CODE_VERSION")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
