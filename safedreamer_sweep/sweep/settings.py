"""The settings that steer a sweep, and where its store is.

A sweep setting is the built-in app's `sweep.<key>` or, for any app, `hydra.launcher.<key>` (set
there, it wins; unset, the app's sweep.<key> or the default). The store root is the app's own
`store.root`, else hydra.launcher.store_root, else $SDS_STORE, else ./sds_store, made absolute
against the original working directory and checked to be a writable directory before the plan.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safedreamer_sweep.sweep.errors import PlanError

_SWEEP_SETTINGS: dict[str, Any] = {"new_variant": False, "retry_failed": False, "code_change": "refuse",
                                  "strict_confounds": True}  # with their defaults
_DEFAULT_STORE = "sds_store"
Hint = Callable[[str, Any], str]  # how a message names a sweep setting and its value (flag_hint)


def sweep_setting(settings: DictConfig | None, launcher: dict | None, key: str) -> Any:
    """The value of sweep setting `key` for a job: hydra.launcher.<key> when set, else the app's own
    sweep.<key>, else the default (_SWEEP_SETTINGS)."""
    value = (launcher or {}).get(key)
    if value is not None:
        return value
    return _app_sweep(settings).get(key, _SWEEP_SETTINGS[key])


def sweep_setting_given(settings: DictConfig | None, launcher: dict | None, key: str) -> bool:
    """Whether `key` is set for the job (hydra.launcher.<key> or the app's sweep.<key>), not defaulted."""
    return (launcher or {}).get(key) is not None or key in _app_sweep(settings)


def _app_sweep(settings: DictConfig | None) -> Any:
    return (settings.get("sweep") if settings is not None else None) or {}


def flag_hint(settings: DictConfig | None) -> Hint:
    """How a message names a sweep setting so it works on this app's command line: `sweep.<key>=v`
    for an app whose config has that key (the built-in app), else `hydra.launcher.<key>=v` (any app
    under the sds launchers; `sweep.<key>` would not exist there)."""
    sw = _app_sweep(settings)

    def hint(key: str, value: Any) -> str:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return f"sweep.{key}={text}" if key in sw else f"hydra.launcher.{key}={text}"

    return hint


def default_hint(key: str, value: Any) -> str:
    """How a message names a sweep setting when the app's config is not at hand: `sweep.<key>=v`."""
    return f"sweep.{key}={str(value).lower() if isinstance(value, bool) else value}"


def _store_root_setting(cfg: DictConfig) -> str:
    """Where the store is, as configured: the app's own `store.root` (the built-in app), else
    hydra.launcher.store_root, else $SDS_STORE, else ./sds_store."""
    root = OmegaConf.select(cfg, "store.root", default=None)
    if root is None:
        root = OmegaConf.select(cfg, "hydra.launcher.store_root", default=None)
    return str(root if root is not None else os.environ.get("SDS_STORE") or _DEFAULT_STORE)


def absolute_store_root(cfg: DictConfig, cwd: str | os.PathLike | None = None) -> Path:
    """The configured store root made absolute against the original working directory (jobs may run
    elsewhere)."""
    setting = _store_root_setting(cfg)
    if not setting.strip():  # Path("") would silently be the working directory
        raise PlanError("store.root='' is not allowed: must be a directory path. Fix: e.g. store.root=experiments")
    root = Path(setting).expanduser()
    if not root.is_absolute():
        base = cwd
        if base is None:
            try:
                from hydra.utils import get_original_cwd

                base = get_original_cwd()
            except (ImportError, ValueError):  # not inside a Hydra run
                base = os.getcwd()
        root = Path(base) / root
    return root.resolve()


def check_store_root(root: Path) -> Path:
    """PlanError unless `root` is a directory or can become one (nothing on its path is a file)."""
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        what = "is a file" if p == root else f"sits under {p}, which is a file"
        raise PlanError(f"store.root={root} is not a directory: it {what}. Fix: point store.root at a directory "
                        f"(it is created if missing), e.g. store.root={root.parent if p == root else p.parent}/store")
    try:  # a real probe (root ignores permission bits; a read-only mount refuses everyone)
        os.rmdir(tempfile.mkdtemp(prefix=".sds-writable-", dir=p))
    except OSError as e:
        raise PlanError(f"store.root={root} is not writable: {p} refuses new files ({e.strerror}). Fix: point "
                        f"store.root at a directory you can write (e.g. store.root=$HOME/sds-store), or fix the "
                        f"permissions or the mount of {p}") from None
    return root
