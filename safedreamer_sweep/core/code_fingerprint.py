"""Which code computed a cell: its code fingerprint, and the versions recorded beside it in spec.json.

The fingerprint is a content hash of the files that train and evaluate a cell, not the git commit: it
stays the same across commits that touch only tests, docs, the launcher or the report, and is the same
in a git checkout and in an installed (non-git) copy of the same code. The git commit, and whether
those files differ from it, are recorded beside it for people, with the package's own commit and the
versions of the packages that compute (code_version, package_versions). Cells done under another
fingerprint are a verdict of their own at plan time (sweep.code_change: refuse, rerun or accept;
safedreamer_sweep/sweep/verdicts.py); a run directory holding work by other code settles it when its
spec.json is written (RunDir.ensure_spec, core/run_dir.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig

from safedreamer_sweep.core.app_identity import main_script

_PACKAGES = ("safedreamer-sweep", "jax", "jaxlib", "numpy", "safety-gymnasium", "gymnasium", "mujoco",
             "hydra-core", "omegaconf", "submitit", "pandas")

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # safedreamer_sweep/
# The built-in task's training code: the trainer and its evaluation (policy, envs, budget included).
_BUILTIN_CODE = ("trainer/*.py",)
# What a run directory holding work by other code does (sweep.code_change; RunDir.ensure_spec applies it).
CODE_CHANGE = ("refuse", "rerun", "accept")


class CodeFilesError(ValueError):
    """A task's declared code (task.code / sds.code) cannot be read. Names the glob and the fix."""


_MAIN_SCRIPT = "main script"  # what an app's code is when it declares none (sds.code)


def _declared_code(cfg: DictConfig | dict) -> tuple[str, list[str]] | None:
    """(what, globs) of the code a cell runs: the package's trainer for the built-in task, the
    task's `task.code` for an external one, `sds.code` for any other app, and for an app that
    declares none, its main script (_MAIN_SCRIPT: an edited script reruns its cells by default,
    sweep/verdicts.py). None when an external task declares none (its cells are then not compared)."""
    task = cfg.get("task") or {}
    kind = task.get("kind") if isinstance(task, (dict, DictConfig)) else None
    if kind == "builtin":
        return "built-in trainer", [f"{_PACKAGE_ROOT.name}/{g}" for g in _BUILTIN_CODE]
    declared = task.get("code") if kind == "external" else (cfg.get("sds") or {}).get("code")
    key = "task.code" if kind == "external" else "sds.code"
    if not declared and kind is None and (script := main_script()) and Path(script).is_file():
        return _MAIN_SCRIPT, [script]
    if not declared:
        return None
    if isinstance(declared, str):
        declared = [declared]
    return key, [str(g) for g in declared]


def _code_base_dir(cfg: DictConfig | dict) -> Path:
    """Where relative task.code globs start: task.cwd when it is a plain path, else the directory
    the sweep was launched from (where a relative command runs)."""
    cwd = (cfg.get("task") or {}).get("cwd") if isinstance(cfg.get("task"), (dict, DictConfig)) else None
    base = Path(str(cwd)).expanduser() if cwd and "{" not in str(cwd) else Path.cwd()
    return base if base.is_absolute() else Path.cwd() / base


def absolute_code_globs(cfg: DictConfig | dict) -> list[str] | None:
    """The declared code globs made absolute (the planner writes them back into the job's config, so a
    cell process started in another directory hashes the same files). None when none are declared."""
    found = _declared_code(cfg)
    if found is None:
        return None
    if found[0] == "built-in trainer":
        return [str(_PACKAGE_ROOT / g) for g in _BUILTIN_CODE]
    base = _code_base_dir(cfg)
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
    found = _declared_code(cfg)
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
    return str((code or {}).get("of") or "").startswith(_MAIN_SCRIPT + ":")


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
    root = _PACKAGE_ROOT.parent
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
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
