"""Which app a cell belongs to: where its main script is, not what the script holds.

An app's cells are told apart from another app's by where its main script is, not by what the script
holds (that is its code, sds.code's fingerprint in core/code_fingerprint.py: an edited script is the
same app, and the code-change policy decides). Inside a git repository: the repository's first commit
and the script's path in it, the same in every clone on every host; outside git: the script's absolute
path. `sds.app` names the app explicitly instead (e.g. a script that moves between machines outside git).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

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
